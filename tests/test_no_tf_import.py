"""Fresh interpreters: the TensorFlow-free commands stay TensorFlow-free, and every module imports.

A warm `sys.modules` hides import bugs, so each check runs in its own subprocess.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
HEAVY = ("tensorflow", "keras")

PROBE = """
import json, sys
args = json.loads(sys.argv[1])
import wtool.cli
code = None
if args is not None:
    try:
        code = wtool.cli.cli.main(args, prog_name="wtool", standalone_mode=False) or 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a click Exit carries the code
        code = getattr(exc, "exit_code", repr(exc))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
rich = any(m.split(".")[0] == "rich" for m in sys.modules)
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "loaded": loaded, "rich": rich}) + "\\n")
"""


def _probe(args: list[str] | None, tmp_path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    line = [x for x in proc.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, proc.stderr[-2000:]
    return json.loads(line[-1][len("PROBE "):])


@pytest.mark.parametrize("args", [
    None,
    ["--help"],
    ["--version"],
    ["inspect", "--help"],
    ["inspect", str(SAMPLES / "nested.keras")],
    ["inspect", str(SAMPLES / "cnn.h5"), "--weights", "--stats", "--histogram", "--sample", "2", "--json"],
    ["inspect", str(SAMPLES / "lstm.weights.h5"), "--export", "out.npz"],
    ["diff", str(SAMPLES / "mlp.keras"), str(SAMPLES / "mlp.h5")],
    ["diff", str(SAMPLES / "mlp.keras"), str(SAMPLES / "cnn.keras"), "--json"],
    ["inspect", str(SAMPLES / "tf_keras2"), "--weights", "--stats", "--export", "out.npz"],  # a TF checkpoint
    ["diff", str(SAMPLES / "tf_keras2" / "nested"), str(SAMPLES / "tf_keras2" / "nested.index")],
], ids=lambda a: "import" if a is None else " ".join(Path(x).name for x in a))
def test_stays_tensorflow_free(args, tmp_path):
    """...and free of rich too: inspect and diff print plain text, and importing rich is a tenth of their time."""
    result = _probe(args, tmp_path)
    assert result["loaded"] == [], f"imported {result['loaded'][:5]}"
    assert not result["rich"]
    if args and args[0] == "diff" and "cnn.keras" in args[2]:
        assert result["code"] == 1
    elif args is not None:
        assert result["code"] == 0, result


def _modules() -> list[str]:
    import wtool

    names = ["wtool"]
    for info in pkgutil.walk_packages(wtool.__path__, "wtool."):
        if info.name != "wtool.__main__":  # runs the CLI when imported, by design
            names.append(info.name)
    return sorted(names)


def test_every_module_imports_in_a_fresh_interpreter():
    modules = _modules()
    assert "wtool.store.model_file" in modules and "wtool.cli.commands.inspect" in modules

    def run(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
        return name, proc.returncode, proc.stderr[-800:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [(n, err) for n, code, err in pool.map(run, modules) if code != 0]
    assert failures == []
