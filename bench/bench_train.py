"""wtool train against model.fit: steady-state samples/s and peak memory, side by side in one run.

Same model (same initial weights), data, batch size and optimizer for both. Each run is its
own subprocess, so peak RSS is the run's own. Steady state is the median epoch after the first
(which holds tracing). `python bench/bench_train.py` prints the rows; bench/run.py collects them.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

JOBS = {
    # name: (layers spec, input shape, rows, batch, epochs, target ratio)
    "mlp": ("dense:256:relu,dense:128:relu,dense:10:softmax", (784,), 60000, 128, 4, 1.3),
    "cnn": ("conv2d:16:3:relu,maxpool,conv2d:32:3:relu,maxpool,flatten,dense:10:softmax", (28, 28, 1), 12000, 128, 4,
            1.0),
}
ROUNDS = int(os.environ.get("WTOOL_BENCH_ROUNDS", "2"))
TINY_EPOCHS = 10_000  # wtool runs them all; fit runs FIT_TINY_EPOCHS and is scaled up (it needs ~35 ms an epoch)
FIT_TINY_EPOCHS = 200


def _prepare(job: str, workdir: Path) -> tuple[Path, Path]:
    """A fresh compiled model file and a synthetic labelled data set (learnable: class picks a bright block)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from wtool.graph.model import import_keras
    from wtool.graph.spec import build_model, parse_layers

    keras = import_keras()
    spec, shape, rows, _batch, _epochs, _target = JOBS[job]
    keras.utils.set_random_seed(0)
    model = build_model(parse_layers(spec), shape, name=job)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model_path = workdir / f"{job}.keras"
    model.save(model_path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=rows)
    x = rng.random((rows, *shape), dtype=np.float32) * 0.3
    flat = x.reshape(rows, -1)
    block = flat.shape[1] // 10
    for label in range(10):
        flat[y == label, label * block:(label + 1) * block] += 0.7
    data_path = workdir / f"{job}.npz"
    np.savez(data_path, x=x, y=y.astype("int64"))
    return model_path, data_path


def _worker(tool: str, job: str, model_path: str, data_path: str) -> dict[str, float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _spec, _shape, _rows, batch, epochs, _target = JOBS[job]
    cpu: list[float] = []
    if tool == "fit":
        import numpy as np

        from wtool.graph.model import import_keras

        keras = import_keras()
        keras.utils.set_random_seed(0)
        model = keras.saving.load_model(model_path)
        with np.load(data_path) as d:
            x, y = d["x"], d["y"]
        times: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()
                self.c0 = time.process_time()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t0)
                cpu.append(time.process_time() - self.c0)

        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[Timer()])
        rows = len(x)
        loss = float(model.evaluate(x, y, batch_size=1024, verbose=0)[0])
    else:
        from wtool.train.loop import train
        from wtool.train.options import Reporter, TrainOptions

        class CpuClock(Reporter):
            def epoch_begin(self, epoch):
                self.c0 = time.process_time()

            def epoch_end(self, record):
                cpu.append(time.process_time() - self.c0)

        out = str(Path(model_path).with_name(f"{job}-wtool.keras"))
        result = train(TrainOptions(model=model_path, data=data_path, out=out, epochs=epochs, batch_size=batch,
                                    seed=0, jit=os.environ.get("WTOOL_BENCH_JIT", "auto")), CpuClock())
        times = [r["seconds"] for r in result.history]
        rows = result.summary["samples"]
        loss = float(result.history[-1]["loss"])
    steady = statistics.median(times[1:])
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"samples_per_s": rows / steady, "samples_per_cpu_s": rows / statistics.median(cpu[1:]),
            "peak_mb": peak_kb / 1024, "loss": loss}


def _tiny_worker(tool: str) -> dict[str, float]:
    """Per-epoch overhead: epochs of the 4-row XOR set, wall time per epoch (TF start-up excluded)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    samples = HERE.parent / "sample_models"
    if tool == "fit":
        import numpy as np

        from wtool.graph.model import import_keras

        keras = import_keras()
        model = keras.saving.load_model(samples / "xor.keras")
        with np.load(samples / "xor.npz") as d:
            x, y = d["x"], d["y"]
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=4, epochs=FIT_TINY_EPOCHS, verbose=0)
        return {"seconds_per_epoch": (time.perf_counter() - t0) / FIT_TINY_EPOCHS}
    from wtool.train.loop import train
    from wtool.train.options import TrainOptions

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(TrainOptions(model=str(samples / "xor.keras"), data=str(samples / "xor.npz"),
                           out=f"{tmp}/xor.keras", epochs=TINY_EPOCHS, batch_size=4, seed=0))
        return {"seconds_per_epoch": (time.perf_counter() - t0) / TINY_EPOCHS}


def _spawn(tool: str, job: str, model_path: Path, data_path: Path) -> dict[str, float]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, __file__, "--worker", tool, job, str(model_path), str(data_path)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job, (_spec, shape, n, batch, _epochs, target) in JOBS.items():
            model_path, data_path = _prepare(job, Path(tmp))
            fits, ours = [], []
            for _ in range(ROUNDS):  # alternate, so drift in machine load hits both
                fits.append(_spawn("fit", job, model_path, data_path))
                ours.append(_spawn("wtool", job, model_path, data_path))
            fit_rate = statistics.median(r["samples_per_s"] for r in fits)
            our_rate = statistics.median(r["samples_per_s"] for r in ours)
            fit_mem = statistics.median(r["peak_mb"] for r in fits)
            our_mem = statistics.median(r["peak_mb"] for r in ours)
            label = f"train {job} {'x'.join(map(str, shape))} n={n} b={batch}"
            rows.append({"name": f"{label} samples/s", "wtool": our_rate, "baseline": fit_rate, "unit": "/s",
                         "ratio": our_rate / fit_rate, "target": target})
            rows.append({"name": f"{label} peak RSS (fit/wtool)", "wtool": our_mem, "baseline": fit_mem,
                         "unit": "MB", "ratio": fit_mem / our_mem, "target": 1.0})
            fit_cpu = statistics.median(r["samples_per_cpu_s"] for r in fits)
            our_cpu = statistics.median(r["samples_per_cpu_s"] for r in ours)
            print(f"{job}: per CPU-second fit {fit_cpu:.0f} wtool {our_cpu:.0f} samples ({our_cpu / fit_cpu:.2f}x); "
                  f"loss after training fit {fits[0]['loss']:.4f} wtool {ours[0]['loss']:.4f}", file=sys.stderr)
    fit_tiny = _spawn("fit", "tiny", Path("-"), Path("-"))["seconds_per_epoch"] * TINY_EPOCHS
    our_tiny = _spawn("wtool", "tiny", Path("-"), Path("-"))["seconds_per_epoch"] * TINY_EPOCHS
    rows.append({"name": f"train xor: {TINY_EPOCHS:,} epochs of 4 rows (s)", "wtool": our_tiny, "baseline": fit_tiny,
                 "unit": "s", "ratio": fit_tiny / our_tiny, "target": 1.0})
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        if sys.argv[3] == "tiny":
            print(json.dumps(_tiny_worker(sys.argv[2])))
        else:
            print(json.dumps(_worker(*sys.argv[2:6])))
    else:
        for row in run():
            print(f"{row['name']:<60} wtool {row['wtool']:>10.1f}  fit {row['baseline']:>10.1f} {row['unit']:<3} "
                  f"{row['ratio']:.2f}x (target {row['target']:.2f}x)")
