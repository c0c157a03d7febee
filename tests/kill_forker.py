"""A fork server for tests/test_kill.py: import wtool (and TensorFlow) once, then fork one child per run.

Why: each killed run used to be a fresh `python -m wtool`, and most of its life (4-5 s of CPU for
`train`) was spent importing TensorFlow, before it ever touches the target file, so a kill landing
there proves nothing about the file. Forked from a process that has done the imports, every child
goes straight to the command's own code (read the target, compute, write beside it, rename) and a
seeded kill lands in it. TensorFlow's runtime (its thread pools, the eager context) starts only at the
first operation, so it is never running here when we fork; each child starts its own.

Protocol (one line each way, for one run): the test writes a JSON list `[cwd, arg1, arg2, ...]` (the
arguments after `wtool`); the server forks, the child runs `wtool ARGS` with cwd set, stdout and
stderr on /dev/null, and ends with the command's exit code; the server answers the child's pid. The
server never reaps its children, so a child that has ended stays a zombie
(state Z in /proc/PID/stat) and its pid cannot be reused while the test looks at it.
"""

from __future__ import annotations

import json
import os
import sys


def _child(cwd: str, args: list[str]) -> None:
    code = 70
    try:
        os.chdir(cwd)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        sys.argv = ["wtool", *args]
        from wtool.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def serve() -> None:
    import wtool.cli  # noqa: F401
    import wtool.cli.commands.set_weights  # noqa: F401
    import wtool.cli.commands.train  # noqa: F401
    from wtool.graph.model import import_keras

    import_keras()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        cwd, *args = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(cwd, args)
        out.write(f"{pid}\n")
        out.flush()
    # stdin closed: the test has waited for every child. End without Python's and TensorFlow's slow
    # shutdown (~3 s); the children left as zombies are reaped by whoever inherits them.
    os._exit(0)


if __name__ == "__main__":
    serve()
