"""wtool infer against `model.predict`, side by side in one run.

1. Throughput: a 784-256-128-10 MLP over 100,000 rows. Both run in this process, in their
   steady state (one warm-up run each first, so tracing and model loading are not counted), in
   RUNS rounds of back-to-back runs; the ratio is the median of the rounds' ratios (robust to a
   machine whose load drifts). wtool does the whole job of `wtool infer MODEL x.npy -o y.npy`
   minus the command-line parsing (read the .npy file batch by batch, predict, write the .npy
   output, atomically) at its default batch size (1024 here); the baseline is
   `model.predict(x, batch_size=1024)` on an array already in memory, with no file reading or
   writing counted.

2. Peak memory on a large .npy input (BENCH_INFER_NPY_MB, default 500 MB; the issue's 2 GB is
   `BENCH_INFER_NPY_MB=2048 make bench`): peak RSS (ru_maxrss of a child process) of
   `wtool infer MODEL big.npy -o out.npy` against the loaded model (a process that imports
   TensorFlow, loads the model and predicts one batch) plus 200 MB; and the memory each way needs
   over that loaded model, against the plain-Keras way (`x = np.load(big.npy);
   model.predict(x, batch_size=1024); np.save(...)`, about three times the input).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROWS = 100_000
RUNS = int(os.environ.get("BENCH_INFER_RUNS", "7"))
NPY_MB = int(os.environ.get("BENCH_INFER_NPY_MB", "500"))
BUDGET_MB = 200
REPO = Path(__file__).resolve().parent.parent


def make_model(path: Path, compile: bool = False) -> None:
    """The benchmarks' MLP (784-256-128-10); compiled (adam, sparse CE, accuracy) for eval."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,), name="pixels"),
        keras.layers.Dense(256, activation="relu", name="h1"),
        keras.layers.Dense(128, activation="relu", name="h2"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ], name="mlp_784_256_128_10")
    if compile:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(path)


def throughput(tmp: Path, model_path: Path) -> list[dict]:
    from wtool.data import rows as data
    from wtool.fileio import atomic_output
    from wtool.graph.model import load_model
    from wtool.infer import predict as infer

    rng = np.random.default_rng(0)
    x_path = tmp / "x100k.npy"
    np.save(x_path, rng.random((ROWS, 784), dtype=np.float32))
    frozen = infer.load_frozen(str(model_path))
    model = load_model(model_path)
    x = np.load(x_path)

    def wtool_job(batch_size: int | None) -> None:
        with data.open_rows(x_path) as rows:
            plan = infer.InferPlan(frozen, [rows], batch_size=batch_size)
            with atomic_output(tmp / "y.npy") as out:
                plan.run(lambda cols, n: data.open_writer(out, cols, n))

    jobs = {
        "wtool": lambda: wtool_job(None),
        "predict": lambda: model.predict(x, batch_size=1024, verbose=0),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():  # warm-up: traces, first allocations
        job()
    ratios = []
    for _ in range(RUNS):  # rounds of back-to-back runs: the ratio of each round, then the median
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t0)
        ratios.append(times["predict"][-1] / times["wtool"][-1])
    # sanity: both ways give the same predictions
    y = np.load(tmp / "y.npy")
    assert np.abs(y[:2048] - model.predict(x[:2048], batch_size=1024, verbose=0)).max() < 1e-5
    rate = {name: ROWS / statistics.median(ts) for name, ts in times.items()}
    print(f"infer rows/s: wtool {rate['wtool']:,.0f} (batch {infer.auto_batch_size(784 * 4)}), model.predict "
          f"{rate['predict']:,.0f} (batch 1024); per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}",
          file=sys.stderr)
    return [
        {"name": "infer rows/s, MLP 784-256-128-10, 100k rows", "wtool": rate["wtool"],
         "baseline": rate["predict"], "unit": "r/s", "ratio": statistics.median(ratios), "target": 2.0},
    ]


PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

MODEL_ONLY = """
import sys, numpy as np
from wtool.infer import predict as infer
frozen = infer.load_frozen(sys.argv[1])
frozen.compile(1024, [(784,)])
frozen.predict_batch([np.zeros((1024, 784), np.float32)])
"""

PREDICT = """
import sys, numpy as np
from wtool.graph.model import load_model
model = load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x, batch_size=1024, verbose=0))
"""


def peak_mb(cmd: list[str]) -> float:
    res = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return int(res.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB


def memory(tmp: Path, model_path: Path) -> list[dict]:
    rows = NPY_MB * (1 << 20) // (784 * 4)
    big = tmp / "big.npy"
    arr = np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(rows, 784))
    rng = np.random.default_rng(1)
    for s in range(0, rows, 50_000):
        arr[s:s + 50_000] = rng.random((min(50_000, rows - s), 784), dtype=np.float32)
    arr.flush()
    del arr
    wtool = [sys.executable, "-m", "wtool", "infer", str(model_path), str(big), "-o", str(tmp / "out.npy"), "-q"]
    model_only = peak_mb([sys.executable, "-c", MODEL_ONLY, str(model_path)])
    streamed = peak_mb(wtool)
    predict = peak_mb([sys.executable, "-c", PREDICT, str(model_path), str(big), str(tmp / "out2.npy")])
    out = np.load(tmp / "out.npy", mmap_mode="r")
    assert out.shape == (rows, 10)
    budget = model_only + BUDGET_MB
    print(f"infer memory: input {NPY_MB} MB ({rows} rows); loaded model {model_only:.0f} MB, "
          f"wtool infer {streamed:.0f} MB (+{streamed - model_only:.0f}), "
          f"model.predict {predict:.0f} MB (+{predict - model_only:.0f})", file=sys.stderr)
    return [
        {"name": f"infer peak MB, {NPY_MB} MB .npy (budget: model+{BUDGET_MB})", "wtool": streamed,
         "baseline": budget, "unit": "MB", "ratio": budget / streamed, "target": 1.0},
        {"name": f"infer MB over the model, {NPY_MB} MB .npy, vs predict", "wtool": streamed - model_only,
         "baseline": predict - model_only, "unit": "MB",
         "ratio": max(predict - model_only, 1.0) / max(streamed - model_only, 1.0), "target": 2.0},
    ]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="wtool-bench-infer-") as d:
        tmp = Path(d)
        model_path = tmp / "mlp.keras"
        make_model(model_path)
        rows = throughput(tmp, model_path)
        rows += memory(tmp, model_path)
        return rows


if __name__ == "__main__":
    for row in run():
        print(row)
