"""Weight surgery on a ~400 MB model: `set-weights` of one layer and `transfer` between two models.

Target (issue 5): each at most 2x the time of `cp` of the file, peak memory under 300 MB.
The models are made at bench time in a temporary directory (Keras, 6 Dense layers of
4096x4096: 403 MB of float32), in .keras and .h5. Times are the best of a few runs of
the real CLI in a subprocess, taking turns with `cp` (and `sync` before each run) so that
machine load hits both alike; memory is the subprocess's max RSS.

Two time rows per case: end to end (Python start-up and imports included), and the time
after start-up (end to end minus a run that only imports what the command imports). With
a warm page cache `cp` of 400 MB takes ~0.2 s, about what the interpreter and numpy/h5py
take to start, so the first row measures start-up as much as surgery; the second is the
cost of the surgery itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 3
WIDTH = 4096
LAYERS = 6
MEMORY_BUDGET_MB = 300.0
TIME_FACTOR = 2.0  # at most 2x cp


def _run(cmd: list[str]) -> tuple[float, float]:
    """Wall time (s) and max RSS (MB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    rss_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return elapsed, rss_mb


def _best_interleaved(commands: dict[str, list[str]], outputs: list[Path]) -> dict[str, tuple[float, float]]:
    """Best time and max RSS per command, the commands taking turns so machine load hits them alike."""
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


def _make_models(directory: Path) -> dict[str, Path]:
    """Two same-architecture models (different values) in .keras and .h5, made in a child process."""
    script = f"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
d = sys.argv[1]
for seed, stem in ((1, "a"), (2, "b")):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(({WIDTH},), name="x")]
    layers += [keras.layers.Dense({WIDTH}, name=f"d{{i}}") for i in range({LAYERS})]
    model = keras.Sequential(layers, name="big")
    model.compile(optimizer="sgd", loss="mse")
    model.save(os.path.join(d, stem + ".keras"))
    model.save(os.path.join(d, stem + ".h5"))
np.save(os.path.join(d, "kernel.npy"), np.full(({WIDTH}, {WIDTH}), 0.01, dtype="float32"))
"""
    subprocess.run([sys.executable, "-c", script, str(directory)], check=True, stderr=subprocess.DEVNULL)
    return {p.name: p for p in directory.iterdir()}


def run() -> list[dict]:
    wtool = [sys.executable, "-m", "wtool"]
    # What every wtool run pays before touching a file: the interpreter and the imports.
    imports = "wtool.cli, wtool.ops.surgery, wtool.store.arrays, wtool.cli.commands.set_weights, wtool.cli.commands.transfer, rich.table"
    startup = [sys.executable, "-c", f"import {imports}"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="wtool-bench-surgery-", dir=os.environ.get("WTOOL_BENCH_DIR")) as tmp:
        d = Path(tmp)
        files = _make_models(d)
        for fmt in ("keras", "h5"):
            a, b = files[f"a.{fmt}"], files[f"b.{fmt}"]
            size_mb = a.stat().st_size / 2**20
            out, copy = d / f"out.{fmt}", d / f"copy.{fmt}"
            cases = {
                f"set-weights one layer (.{fmt}, {size_mb:.0f} MB)":
                    [*wtool, "set-weights", str(a), "--weight", f"d3/kernel={files['kernel.npy']}", "-o", str(out),
                     "-q"],
                f"transfer same architecture (.{fmt}, {size_mb:.0f} MB)":
                    [*wtool, "transfer", str(b), str(a), "-o", str(out), "-q"],
            }
            measured = _best_interleaved({"cp": ["cp", str(a), str(copy)], "startup": startup, **cases},
                                         [out, copy])
            cp_time = measured["cp"][0]
            start_time = measured["startup"][0]
            for name in cases:
                seconds, peak = measured[name]
                work = max(seconds - start_time, 1e-3)
                rows.append({"name": f"{name} time vs cp", "wtool": seconds, "baseline": cp_time, "unit": "s",
                             "ratio": cp_time / seconds, "target": 1 / TIME_FACTOR})
                rows.append({"name": f"{name} time after start-up ({start_time:.2f} s) vs cp", "wtool": work,
                             "baseline": cp_time, "unit": "s", "ratio": cp_time / work, "target": 1 / TIME_FACTOR})
                rows.append({"name": f"{name} peak memory", "wtool": peak, "baseline": MEMORY_BUDGET_MB,
                             "unit": "MB", "ratio": MEMORY_BUDGET_MB / peak, "target": 1.0})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
