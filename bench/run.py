"""Run every bench/bench_*.py and print wtool against the plain-Keras way, side by side.

Each module exposes `run() -> list[dict]`; a row has `name`, `wtool`, `baseline`,
`unit`, `ratio` (how many times better wtool is) and `target` (the ratio to meet).
Each module runs in a fresh interpreter: peak-memory figures read from child processes
(`RUSAGE_CHILDREN`) would otherwise carry the largest child of an earlier benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(name: str) -> list[dict]:
    path = HERE / f"bench_{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows: list[dict] = module.run()
    return rows


def main(selected: list[str]) -> int:
    if selected[:1] == ["--one"]:
        print("\n@@rows@@" + json.dumps(run_one(selected[1])))
        return 0
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if selected and name not in selected:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--one", name], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0 or "@@rows@@" not in proc.stdout:
            print(f"benchmark {name} failed (exit {proc.returncode})", file=sys.stderr)
            rows.append({"name": f"{name}: FAILED", "wtool": 0.0, "baseline": 0.0, "ratio": 0.0, "target": 1.0})
            continue
        before, _, payload = proc.stdout.rpartition("@@rows@@")
        sys.stderr.write(before)
        rows.extend(json.loads(payload))
    print(f"{'benchmark':<60} {'wtool':>14} {'baseline':>14} {'ratio':>8} {'target':>8}  ok")
    failed = 0
    for row in rows:
        ok = row["ratio"] >= row["target"]
        failed += not ok
        unit = row.get("unit", "")
        print(f"{row['name']:<60} {row['wtool']:>10.4g} {unit:<3} {row['baseline']:>10.4g} {unit:<3} "
              f"{row['ratio']:>7.2f}x {row['target']:>7.2f}x  {'yes' if ok else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
