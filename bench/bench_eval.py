"""wtool eval against `model.evaluate`, side by side in one run.

The MLP of bench_train (784-256-128-10, softmax, sparse categorical crossentropy + accuracy)
over 60,000 rows held in .npy files. Both run in this process after a warm-up of each (TensorFlow
imported, first traces done), in RUNS rounds of back-to-back runs; the ratio is the median of
the rounds' ratios.

1. Steady rows/s at the same batch size (256, wtool's default): wtool's whole
   `evaluate(EvalOptions(...))` call (load the model, memory-map the .npy files, trace, stream,
   confusion matrix) against `model.evaluate(x, y, batch_size=256)` on a loaded model and arrays
   already in memory: the model loading and tracing are counted on wtool's side only.
2. The same at each tool's default batch size (`model.evaluate` uses 32).

Both give the same loss and accuracy (checked).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import make_model  # noqa: E402 - the same MLP, compiled here

ROWS = 60_000
RUNS = int(os.environ.get("BENCH_EVAL_RUNS", "5"))


def run() -> list[dict]:
    from wtool.graph.model import load_model
    from wtool.train.evaluate import DEFAULT_BATCH_SIZE, EvalOptions, evaluate

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model_path = tmp / "mlp.keras"
        make_model(model_path, compile=True)
        rng = np.random.default_rng(0)
        np.save(tmp / "x.npy", rng.random((ROWS, 784), dtype=np.float32))
        np.save(tmp / "y.npy", rng.integers(0, 10, ROWS))
        x, y = np.load(tmp / "x.npy"), np.load(tmp / "y.npy")
        with warnings.catch_warnings():  # the optimizer's saved slots are not needed to evaluate
            warnings.simplefilter("ignore")
            model = load_model(model_path, compile=True)

        def wtool_job(batch: int) -> dict:
            opts = EvalOptions(model=str(model_path), x_files=(str(tmp / "x.npy"),), y_files=(str(tmp / "y.npy"),), batch_size=batch)
            return evaluate(opts).metrics

        rows = []
        for label, wtool_batch, keras_batch in (("same batch 256", DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE),
                                                ("defaults: 256 vs 32", DEFAULT_BATCH_SIZE, 32)):
            jobs = {"wtool": lambda b=wtool_batch: wtool_job(b),
                    "evaluate": lambda b=keras_batch: model.evaluate(x, y, batch_size=b, verbose=0,
                                                                      return_dict=True)}
            results = {name: job() for name, job in jobs.items()}  # warm-up, and the numbers to compare
            assert abs(results["wtool"]["loss"] - results["evaluate"]["loss"]) < 1e-4, results
            assert abs(results["wtool"]["accuracy"] - results["evaluate"]["accuracy"]) < 1e-6, results
            times: dict[str, list[float]] = {name: [] for name in jobs}
            ratios = []
            for _ in range(RUNS):
                for name, job in jobs.items():
                    t0 = time.perf_counter()
                    job()
                    times[name].append(time.perf_counter() - t0)
                ratios.append(times["evaluate"][-1] / times["wtool"][-1])
            rate = {name: ROWS / statistics.median(ts) for name, ts in times.items()}
            print(f"eval rows/s ({label}): wtool {rate['wtool']:,.0f}, model.evaluate {rate['evaluate']:,.0f}; "
                  f"per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}", file=sys.stderr)
            rows.append({"name": f"eval rows/s, MLP 784-256-128-10, 60k rows, {label}", "wtool": rate["wtool"],
                         "baseline": rate["evaluate"], "unit": "r/s", "ratio": statistics.median(ratios),
                         "target": 1.0})
        return rows


if __name__ == "__main__":
    for row in run():
        print(row)
