"""`wtool inspect MODEL` against `python -c "import keras; keras.models.load_model(MODEL).summary()"`.

Both run as fresh subprocesses (start-up included, as a user at a shell sees it); the
numbers are medians of several runs, after one untimed run of each that warms the file
cache for both sides alike. The runs are interleaved (a few of wtool, one of Keras, in
rounds), so a slow spell of a shared machine falls on both sides rather than on one.
Targets (issue 2): inspect at least 15x faster than the plain-Keras way; `wtool --help`
under 0.3 s (reported as budget / time, target 1x).
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
ROUNDS = 4  # each round: WTOOL_RUNS_PER_ROUND of wtool, then one of Keras
WTOOL_RUNS_PER_ROUND = 3
INSPECT_TARGET = 15.0
HELP_BUDGET_S = 0.3


def _wtool() -> list[str]:
    exe = Path(sys.executable).parent / "wtool"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("wtool")
    return [found] if found else [sys.executable, "-m", "wtool"]


ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-1000:]}")
    return elapsed


def _interleaved(ours: list[str], theirs: list[str]) -> tuple[float, float]:
    """Median seconds of each command, timed in alternating rounds after one warm-up run of each."""
    _time(ours)
    _time(theirs)
    ours_times, theirs_times = [], []
    for _ in range(ROUNDS):
        ours_times += [_time(ours) for _ in range(WTOOL_RUNS_PER_ROUND)]
        theirs_times.append(_time(theirs))
    return statistics.median(ours_times), statistics.median(theirs_times)


def run() -> list[dict]:
    rows = []
    wtool = _wtool()
    for model in MODELS:
        code = f"import keras; keras.models.load_model({str(model)!r}).summary()"
        ours, theirs = _interleaved([*wtool, "inspect", str(model)], [sys.executable, "-c", code])
        rows.append({"name": f"inspect {model.name} vs load_model().summary()", "wtool": ours,
                     "baseline": theirs, "unit": "s", "ratio": theirs / ours, "target": INSPECT_TARGET})
    _time([*wtool, "--help"])
    help_time = statistics.median(_time([*wtool, "--help"]) for _ in range(ROUNDS * WTOOL_RUNS_PER_ROUND))
    rows.append({"name": f"wtool --help (budget {HELP_BUDGET_S} s)", "wtool": help_time, "baseline": HELP_BUDGET_S,
                 "unit": "s", "ratio": HELP_BUDGET_S / help_time, "target": 1.0})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
