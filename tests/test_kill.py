"""kill -9 never tears a file (issue 6, point 7).

`set-weights --in-place` and `train --in-place` are killed with SIGKILL at seeded random
moments, 20+ times each: half at a random time over the whole run, half just after the
command's temporary output file appears (inside the write). Afterwards the target must
pass the archive checks (members, CRCs), open in the weight store, and hold exactly the
old weights or exactly the new ones (those of an uninterrupted run of the same command).

A sharded overwrite (`X.weights.json` + shards, issue 14) is killed through a test-only hook
(`WTOOL_TEST_KILL_AT=N`: SIGKILL just before the commit's Nth file operation) at every step of
its commit: the set must read as the old or the new model, in wtool and in Keras's own
`load_weights`, and the next write must leave a clean set.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SAMPLES, run_cli

pytestmark = [pytest.mark.slow]

KILLS = 20
PARALLEL = 4
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}


def weights_of(path: Path) -> dict[str, np.ndarray]:
    """All weights (model and optimizer) through the store, after the archive checks."""
    from wtool.safety.archive import check_archive
    from wtool.store import open_model

    if path.read_bytes()[:4] == b"PK\x03\x04":
        check_archive(path)
    values = {}
    with open_model(path) as mf:
        for w in mf.weights:
            values[w.path] = mf.read(w.path)
        h5 = mf.h5
        for group_name in ("optimizer", "optimizer_weights"):
            group = h5.get(group_name)
            if group is not None:
                group.visititems(lambda n, o, g=group_name: values.__setitem__(f"{g}/{n}", o[()])
                                 if hasattr(o, "shape") else None)
    return values


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _argv(command: str, target: Path) -> list[str]:
    base = [sys.executable, "-m", "wtool"]
    if command == "set-weights":
        return [*base, "set-weights", str(target), "--init", "*=constant:0.5", "--in-place", "-q"]
    return [*base, "train", str(target), "--data", str(SAMPLES / "xor.npz"), "--in-place", "--epochs", "3",
            "--seed", "0", "-q"]


def _run_to_end(command: str, target: Path) -> float:
    start = time.monotonic()
    res = subprocess.run(_argv(command, target), capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return time.monotonic() - start


def _kill_once(command: str, source: Path, workdir: Path, seed: int, full: float) -> tuple[str, str]:
    """Run the command on a fresh copy, SIGKILL it at a seeded moment; return (outcome, how)."""
    rng = random.Random(seed)
    workdir.mkdir()
    target = workdir / source.name
    shutil.copyfile(source, target)
    during_write = seed % 2 == 1
    proc = subprocess.Popen(_argv(command, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            cwd=REPO)
    start = time.monotonic()
    how = ""
    if during_write:
        delay = rng.uniform(0, 0.4)
        deadline = start + 3 * full + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".") for p in workdir.iterdir()):  # atomic_output's temporary file
                time.sleep(delay)
                how = f"{delay * 1000:.0f} ms after the temporary file appeared"
                break
            time.sleep(0.001)
    else:
        delay = rng.uniform(0.2, 2.0) * full
        while proc.poll() is None and time.monotonic() - start < delay:
            time.sleep(0.005)
        how = f"at {delay:.2f} s of a {full:.2f} s run"
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return ("finished" if finished else "killed"), how


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4.2M-parameter model (17 MB) as .keras and .h5, so a write lasts long enough to be hit."""
    directory = tmp_path_factory.mktemp("big")
    for name in ("big.keras", "big.h5"):
        res = subprocess.run([sys.executable, "-m", "wtool", "new", str(directory / name), "--input-shape", "2048",
                              "--layers", "dense:2048:relu,dense:10", "--seed", "0", "-q"],
                             capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
        assert res.returncode == 0, res.stderr
    return directory


@pytest.mark.parametrize("command,model", [("set-weights", "big.keras"), ("set-weights", "big.h5"),
                                           ("train", "xor.keras")])
def test_sigkill_leaves_old_or_new(command: str, model: str, tmp_path: Path, big_models: Path) -> None:
    source = tmp_path / model
    shutil.copyfile(big_models / model if model.startswith("big") else SAMPLES / model, source)
    old = weights_of(source)
    reference = tmp_path / "reference"
    reference.mkdir()
    finished_copy = reference / model
    shutil.copyfile(source, finished_copy)
    full = _run_to_end(command, finished_copy)
    new = weights_of(finished_copy)
    assert not same(old, new)
    kills = KILLS if model != "big.h5" else KILLS // 2
    seeds = range(kills)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        outcomes = list(pool.map(lambda s: _kill_once(command, source, tmp_path / f"run{s}", s, full), seeds))
    counts = {"old": 0, "new": 0, "killed": 0, "killed in write": 0}
    for seed, (outcome, how) in zip(seeds, outcomes, strict=True):
        counts["killed"] += outcome == "killed"
        counts["killed in write"] += outcome == "killed" and "temporary" in how
        target = tmp_path / f"run{seed}" / model
        try:
            now = weights_of(target)
        except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
            pytest.fail(f"seed {seed} ({outcome} {how}): the target no longer opens: {type(exc).__name__}: {exc}")
        if same(now, old):
            counts["old"] += 1
        elif same(now, new):
            counts["new"] += 1
        else:
            pytest.fail(f"seed {seed} ({outcome} {how}): the target is neither the old nor the new model")
    print(f"{command} {model}: {counts}")
    assert counts["old"] + counts["new"] == kills
    assert counts["old"] > 0, f"no kill landed before the rename: {counts}"
    assert counts["new"] > 0, f"no run got as far as the rename: {counts}"
    assert counts["killed in write"] >= kills // 5, f"too few kills inside the write: {counts}"


# --------------------------------------------------------------------------- sharded sets (issue 14)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 228-parameter model as arch.keras and as X.weights.json over three shards, by Keras itself."""
    import keras

    d = tmp_path_factory.mktemp("sharded")
    keras.utils.set_random_seed(3)
    x = inputs = keras.Input((8,))
    for name, units in (("d1", 8), ("d2", 8), ("d3", 4)):
        x = keras.layers.Dense(units, name=name)(x)
    model = keras.Model(inputs, x)
    model.save(d / "arch.keras")
    model.save_weights(d / "X.weights.json", max_shard_size=300 / 1024**3)  # one layer (288 or 144 B) a shard
    assert sorted(p.name for p in d.glob("X_*")) == [f"X_{i:05}.weights.h5" for i in range(3)]
    return d


def _set_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


MAP_STEP = 8  # 3 second names, the transit map, 1 old shard removed, 2 new shards, then the map


@pytest.mark.tf
def test_sigkill_at_every_step_of_a_sharded_overwrite(sharded: Path, tmp_path: Path) -> None:
    """3 shards rewritten in place as 2, killed before each step of the commit up to the first removal."""
    import keras

    model = keras.models.load_model(sharded / "arch.keras")

    def keras_reads(target: Path) -> list[np.ndarray]:
        model.load_weights(target)
        return [np.asarray(v.numpy()) for v in model.weights]

    old = weights_of(sharded / "X.weights.json")
    old_keras = keras_reads(sharded / "X.weights.json")
    args = ("--init", "*=constant:0.5", "--in-place", "-q", "--max-shard-size", "600")  # 576 + 144 bytes

    def run(k: int) -> tuple[int, Path]:
        folder = tmp_path / f"k{k}"
        shutil.copytree(sharded, folder, ignore=shutil.ignore_patterns("arch.keras"))
        res = subprocess.run([sys.executable, "-m", "wtool", "set-weights", str(folder / "X.weights.json"), *args],
                             capture_output=True, text=True, timeout=120, cwd=REPO,
                             env={**ENV, "WTOOL_TEST_KILL_AT": str(k)})
        assert res.returncode in (0, -signal.SIGKILL), res.stderr
        return res.returncode, folder / "X.weights.json"

    points = [*range(1, MAP_STEP + 2), 0]  # 0: no kill, the uninterrupted run
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(run, points))
    assert [code for code, _ in runs] == [-signal.SIGKILL] * (MAP_STEP + 1) + [0]
    finished = runs[-1][1]
    assert _set_files(finished.parent) == ["X.weights.json", "X_00000.weights.h5", "X_00001.weights.h5"]
    new, new_keras = weights_of(finished), keras_reads(finished)
    assert not same(old, new)
    verdicts = []
    for k, (_, target) in zip(points, runs[:-1], strict=False):
        try:
            now = weights_of(target)
        except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
            pytest.fail(f"killed before step {k}: wtool cannot read the set ({_set_files(target.parent)}): {exc}")
        verdict = "old" if same(now, old) else "new" if same(now, new) else "mixed"
        by_keras = keras_reads(target)
        keras_verdict = ("old" if all(np.array_equal(a, b) for a, b in zip(by_keras, old_keras, strict=True))
                         else "new" if all(np.array_equal(a, b) for a, b in zip(by_keras, new_keras, strict=True))
                         else "mixed")
        assert verdict == keras_verdict != "mixed", (k, verdict, keras_verdict, _set_files(target.parent))
        verdicts.append(verdict)
        # The next write over what the kill left: a clean set (a killed write's second names and shards gone).
        res = run_cli("set-weights", target, "--init", "*=constant:0.25", *args[2:])
        assert res.exit_code == 0, (k, res)
        assert _set_files(target.parent) == _set_files(finished.parent), k
        assert all(np.all(v == 0.25) for v in keras_reads(target))
    assert verdicts == ["old"] * MAP_STEP + ["new"], verdicts  # the map's rename decides
