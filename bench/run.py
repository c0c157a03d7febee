"""Run every bench/bench_*.py and print wtool against the plain-Keras way, side by side.

Each module exposes `run() -> list[dict]`; a row has `name`, `wtool`, `baseline`,
`unit`, `ratio` (how many times better wtool is) and `target` (the ratio to meet).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(selected: list[str]) -> int:
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_"):]
        if selected and name not in selected:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(module.run())
    print(f"{'benchmark':<48} {'wtool':>14} {'baseline':>14} {'ratio':>8} {'target':>8}  ok")
    failed = 0
    for row in rows:
        ok = row["ratio"] >= row["target"]
        failed += not ok
        unit = row.get("unit", "")
        print(f"{row['name']:<48} {row['wtool']:>10.4g} {unit:<3} {row['baseline']:>10.4g} {unit:<3} "
              f"{row['ratio']:>7.2f}x {row['target']:>7.2f}x  {'yes' if ok else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
