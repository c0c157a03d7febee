"""`wtool inspect MODEL` against `python -c "import keras; keras.models.load_model(MODEL).summary()"`.

Both run as fresh subprocesses (start-up included, as a user at a shell sees it); the
numbers are medians of several runs, after one untimed run of each that warms the file
cache for both sides alike. Targets (issue 2): inspect at least 15x faster than
the plain-Keras way; `wtool --help` under 0.3 s (reported as budget / time, target 1x).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = [REPO / "sample_models" / "cnn.keras", REPO / "sample_models" / "nested.h5"]
WTOOL_RUNS = 7
KERAS_RUNS = 3
INSPECT_TARGET = 15.0
HELP_BUDGET_S = 0.3


def _wtool() -> list[str]:
    exe = Path(sys.executable).parent / "wtool"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wtool")
    return [found] if found else [sys.executable, "-m", "wtool"]


def _median_time(cmd: list[str], runs: int) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    times = []
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # warm-up
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-1000:]}")
    return statistics.median(times)


def run() -> list[dict]:
    rows = []
    wtool = _wtool()
    for model in MODELS:
        ours = _median_time([*wtool, "inspect", str(model)], WTOOL_RUNS)
        code = f"import keras; keras.models.load_model({str(model)!r}).summary()"
        theirs = _median_time([sys.executable, "-c", code], KERAS_RUNS)
        rows.append({"name": f"inspect {model.name} vs load_model().summary()", "wtool": ours,
                     "baseline": theirs, "unit": "s", "ratio": theirs / ours, "target": INSPECT_TARGET})
    help_time = _median_time([*wtool, "--help"], WTOOL_RUNS)
    rows.append({"name": f"wtool --help (budget {HELP_BUDGET_S} s)", "wtool": help_time, "baseline": HELP_BUDGET_S,
                 "unit": "s", "ratio": HELP_BUDGET_S / help_time, "target": 1.0})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
