"""Weights in and out on a ~2 GB model (issue 16): `convert`, `set-weights`, `merge --mean`, side by side.

Targets:
- `convert` .keras -> .h5 and `set-weights` of one layer: at most 2x the time of `cp` + `sync`
  of the same file, peak memory under 300 MB;
- `merge --mean` of three such models: at most 2x the time of reading them once (`cat > /dev/null`);
- against the Keras way (`load_model` + `set_weights` / averaging in numpy + `save`): at least 10x.

The models (Dense layers of 4096x4096 float32, 64 MB each) are about WTOOL_BENCH_IO_MB
megabytes (default 400, so that `make bench` stays short on CI machines; the targets are set
for `WTOOL_BENCH_IO_MB=2048 make bench`, where Python's start-up no longer dominates;
WTOOL_BENCH_IO_LAYERS sets the layer count directly). They are made at bench time in a
temporary directory (WTOOL_BENCH_DIR), one at a time in a child process. Times are the best of WTOOL_BENCH_IO_RUNS runs (default 2) of the
real CLI in a subprocess, taking turns with the baselines; memory is the subprocess's max RSS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_surgery import _run  # noqa: E402 - the same timing helper

RUNS = int(os.environ.get("WTOOL_BENCH_IO_RUNS", "2"))
WIDTH = 4096
SIZE_MB = float(os.environ.get("WTOOL_BENCH_IO_MB", "400"))
LAYERS = int(os.environ.get("WTOOL_BENCH_IO_LAYERS", "0")) or max(1, round(SIZE_MB / 64))
MEMORY_BUDGET_MB = 300.0
TIME_FACTOR = 2.0
KERAS_FACTOR = 10.0

MAKE = f"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
path, seed = sys.argv[1], int(sys.argv[2])
keras.utils.set_random_seed(seed)
layers = [keras.Input(({WIDTH},), name="x")]
layers += [keras.layers.Dense({WIDTH}, name=f"d{{i}}") for i in range({LAYERS})]
model = keras.Sequential(layers, name="big")
model.save(path)
if seed == 1:
    np.save(os.path.join(os.path.dirname(path), "kernel.npy"), np.full(({WIDTH}, {WIDTH}), 0.01, dtype="float32"))
"""

KERAS_SET = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
src, npy, out = sys.argv[1:4]
model = keras.saving.load_model(src, compile=False)
model.get_layer(f"d{len(model.layers) // 2}").kernel.assign(np.load(npy))
model.save(out)
"""

KERAS_MEAN = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
*srcs, out = sys.argv[1:]
models = [keras.saving.load_model(p, compile=False) for p in srcs]
averaged = [np.mean(ws, axis=0) for ws in zip(*(m.get_weights() for m in models))]
models[0].set_weights(averaged)
models[0].save(out)
"""

KERAS_CONVERT = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
keras.saving.load_model(sys.argv[1], compile=False).save(sys.argv[2])
"""


def _best(commands: dict[str, list[str]], outputs: list[Path]) -> dict[str, tuple[float, float]]:
    times: dict[str, list[float]] = {k: [] for k in commands}
    peaks: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(RUNS):
        for key, cmd in commands.items():
            for out in outputs:
                if out.exists():
                    out.unlink()
            subprocess.run(["sync"], check=False)
            t, m = _run(cmd)
            times[key].append(t)
            peaks[key].append(m)
    return {k: (min(times[k]), max(peaks[k])) for k in commands}


def run() -> list[dict]:
    wtool = [sys.executable, "-m", "wtool"]
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory(prefix="wtool-bench-io-", dir=os.environ.get("WTOOL_BENCH_DIR")) as tmp:
        d = Path(tmp)
        models = [d / f"m{i}.keras" for i in (1, 2, 3)]
        for i, path in enumerate(models, 1):
            subprocess.run([py, "-c", MAKE, str(path), str(i)], check=True, stderr=subprocess.DEVNULL)
        a = models[0]
        size_mb = a.stat().st_size / 2**20
        out_h5, out_k, copy = d / "out.h5", d / "out.keras", d / "copy.keras"
        cp_sync = ["sh", "-c", f"cp '{a}' '{copy}' && sync"]
        read3 = ["sh", "-c", "cat " + " ".join(f"'{m}'" for m in models) + " > /dev/null"]
        cases = {
            "convert": [*wtool, "convert", str(a), str(out_h5), "-q"],
            "set-weights": [*wtool, "set-weights", str(a), "--weight", f"d{LAYERS // 2}/kernel={d / 'kernel.npy'}",
                            "-o", str(out_k), "-q"],
            "merge": [*wtool, "merge", *map(str, models), "-o", str(out_k), "-q"],
            "keras convert": [py, "-c", KERAS_CONVERT, str(a), str(out_h5)],
            "keras set": [py, "-c", KERAS_SET, str(a), str(d / "kernel.npy"), str(out_k)],
            "keras mean": [py, "-c", KERAS_MEAN, *map(str, models), str(out_k)],
        }
        measured = _best({"cp+sync": cp_sync, "read 3": read3, **cases}, [out_h5, out_k, copy])
        cp_t, read_t = measured["cp+sync"][0], measured["read 3"][0]
        for name, what in (("convert", f"convert .keras -> .h5 ({size_mb:.0f} MB)"),
                           ("set-weights", f"set-weights one layer (.keras, {size_mb:.0f} MB)")):
            seconds, peak = measured[name]
            rows.append({"name": f"{what} vs cp+sync", "wtool": seconds, "baseline": cp_t, "unit": "s",
                         "ratio": cp_t / seconds, "target": 1 / TIME_FACTOR})
            rows.append({"name": f"{what} peak memory", "wtool": peak, "baseline": MEMORY_BUDGET_MB, "unit": "MB",
                         "ratio": MEMORY_BUDGET_MB / peak, "target": 1.0})
        seconds, peak = measured["merge"]
        rows.append({"name": f"merge --mean of 3 x {size_mb:.0f} MB vs reading them once", "wtool": seconds,
                     "baseline": read_t, "unit": "s", "ratio": read_t / seconds, "target": 1 / TIME_FACTOR})
        rows.append({"name": "merge --mean peak memory", "wtool": peak, "baseline": MEMORY_BUDGET_MB, "unit": "MB",
                     "ratio": MEMORY_BUDGET_MB / peak, "target": 1.0})
        for name, keras_name in (("convert", "keras convert"), ("set-weights", "keras set"),
                                 ("merge", "keras mean")):
            rows.append({"name": f"{name} vs the Keras way (load_model ... save)", "wtool": measured[name][0],
                         "baseline": measured[keras_name][0], "unit": "s",
                         "ratio": measured[keras_name][0] / measured[name][0], "target": KERAS_FACTOR})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
