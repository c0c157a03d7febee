"""`wtool train --data -` (issue 15): what an online update costs on a stream against a fresh run per update.

The stream's cost per batch is the difference of two stream runs (2,000 and 20 batches of the
4-row XOR set, JSON lines through a pipe), so start-up cancels out; the baseline is one whole
`wtool train` process for one update (one epoch of the same 4 rows from a .npz), start-up included.
`python bench/bench_stream.py` prints the rows; bench/run.py collects them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "sample_models"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
ROUNDS = int(os.environ.get("WTOOL_BENCH_ROUNDS", "2"))


def _stream_seconds(batches: int, out: Path) -> float:
    rows = (SAMPLES / "xor.jsonl").read_bytes() * batches
    proc = subprocess.run([sys.executable, "-m", "wtool", "train", str(SAMPLES / "xor.keras"), "--data", "-",
                           "-o", str(out), "--batch-size", "4", "--lr", "5", "--seed", "0", "--json", "-q"],
                          input=rows, capture_output=True, env=ENV, check=True)
    return float(json.loads(proc.stdout)["wall_time_s"])


def _fresh_run_seconds(out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wtool", "train", str(SAMPLES / "xor.keras"), "--data",
                    str(SAMPLES / "xor.npz"), "-o", str(out), "--lr", "5", "--seed", "0", "-q"],
                   capture_output=True, env=ENV, check=True)
    return time.perf_counter() - t0


def run() -> list[dict]:
    per_batch, fresh = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o.keras"
        for _ in range(ROUNDS):
            long, short = _stream_seconds(2000, out), _stream_seconds(20, out)
            per_batch.append((long - short) / 1980)
            fresh.append(_fresh_run_seconds(out))
    ours, theirs = statistics.median(per_batch), statistics.median(fresh)
    return [{"name": "train update: a batch on --data - vs a fresh `wtool train` run (ms)", "wtool": ours * 1000,
             "baseline": theirs * 1000, "unit": "ms", "ratio": theirs / ours, "target": 100.0}]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<60} wtool {row['wtool']:>10.2f}  fresh run {row['baseline']:>10.1f} {row['unit']:<3} "
              f"{row['ratio']:.0f}x (target {row['target']:.0f}x)")
