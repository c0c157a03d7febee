"""Per-step time of `wtool train` with one process, mirrored over two logical CPUs, and two workers.

All on this host, same model (MLP 784-256-128-10), data (20,000 rows), global batch (128, then 1024),
optimizer and seed.
On one machine the replicas share the same cores, so no speed-up is expected: the rows show what
the data-parallel machinery costs here (target 0: informational). README 'cluster' quotes them.

    .venv/bin/python bench/bench_distribute.py      # prints the rows as JSON too
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROWS, EPOCHS = 20_000, 4
BATCHES = (128, 1024)
TIMEOUT = 600


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return env


def _wtool(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "wtool", *[str(a) for a in args]]


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _step_ms(doc: dict, batch: int) -> float:
    """Milliseconds per step of the fastest epoch after the first (tracing) one: the least disturbed by
    whatever else the host runs."""
    seconds = min(r["seconds"] for r in doc["history"][1:])
    return 1000 * seconds / -(-ROWS // batch)


def _run(cmds: list[list[str]]) -> list[dict]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) for c in cmds]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(p.args)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
        docs.append(json.loads(out))
    return docs


def measure(tmp: Path, batch: int) -> dict[str, float]:
    """Milliseconds per step of each setup, and how close the two-worker run ends to the one-device run."""
    if not (tmp / "data.npz").exists():
        rng = np.random.default_rng(0)
        x = rng.random((ROWS, 784), dtype=np.float32)
        y = rng.integers(0, 10, ROWS).astype(np.int32)
        np.savez(tmp / "data.npz", x=x, y=y)
        subprocess.run(_wtool("new", tmp / "mlp.keras", "--input-shape", "784", "--layers",
                              "dense:256:relu,dense:128:relu,dense:10:softmax", "--seed", "0"),
                       check=True, capture_output=True, env=_env(), timeout=TIMEOUT)
    common = ["--data", tmp / "data.npz", "--loss", "sparse_categorical_crossentropy", "--optimizer", "adam",
              "--batch-size", str(batch), "--epochs", str(EPOCHS), "--seed", "0", "--json", "-q"]
    out: dict[str, float] = {}
    (one,) = _run([_wtool("train", tmp / "mlp.keras", "-o", tmp / "one.keras", "--strategy", "one-device",
                          *common)])
    out["one-device"] = _step_ms(one, batch)
    (mir,) = _run([_wtool("train", tmp / "mlp.keras", "-o", tmp / "mir.keras", "--strategy", "mirrored",
                          "--replicas", "2", *common)])
    out["mirrored-2cpu"] = _step_ms(mir, batch)
    (solo,) = _run([_wtool("train", tmp / "mlp.keras", "-o", tmp / "solo.keras", "--strategy", "multi-worker",
                           "--workers", f"127.0.0.1:{_ports(1)[0]}", "--task-index", "0", *common)])
    out["multi-worker-1"] = _step_ms(solo, batch)
    workers = ",".join(f"127.0.0.1:{p}" for p in _ports(2))
    pair = _run([_wtool("train", tmp / "mlp.keras", "-o", tmp / f"mw{i}.keras", "--strategy", "multi-worker",
                        "--workers", workers, "--task-index", str(i), *common) for i in range(2)])
    out["multi-worker-2"] = max(_step_ms(d, batch) for d in pair)
    out["losses-equal"] = float(pair[0]["final"]["loss"] == pair[1]["final"]["loss"])
    out["loss-rel-diff"] = abs(pair[0]["final"]["loss"] - one["final"]["loss"]) / abs(one["final"]["loss"])
    return out


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in BATCHES:
            m = measure(Path(tmp), batch)
            base = m["one-device"]
            for key, label in (("mirrored-2cpu", "mirrored 2 CPUs"), ("multi-worker-1", "1 worker"),
                               ("multi-worker-2", "2 workers")):
                rows.append({"name": f"train step b{batch}: {label} vs 1 device", "wtool": m[key],
                             "baseline": base, "unit": "ms", "ratio": base / m[key], "target": 0.0})
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for batch in BATCHES:
            print(batch, json.dumps(measure(Path(tmp), batch)), flush=True)
