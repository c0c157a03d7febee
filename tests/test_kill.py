"""kill -9 never tears a file (issue 6, point 7).

`set-weights --in-place` and `train --in-place` are killed with SIGKILL at seeded random
moments, 20+ times each: half at a random time over the whole run, a quarter inside the
command's write (from its temporary output file's appearance, spread over as long as the
uninterrupted run's temporary file existed), a quarter just after its rename. Afterwards the target must
pass the archive checks (members, CRCs), open in the weight store, and hold exactly the
old weights or exactly the new ones (those of an uninterrupted run of the same command).

Each of those runs is `wtool ARGS` in a child forked by tests/kill_forker.py after it has imported wtool and
TensorFlow: a fresh `python -m wtool` spends most of its life (4-5 s of CPU for train) in imports
that never touch the target, so seeded kills there proved nothing more; forked, every run starts at
the command's own code and the same kills land in the reading, training and writing (test_kill took
~100 s with a fresh interpreter per run).

A sharded overwrite (`X.weights.json` + shards, issue 14) is killed through a test-only hook
(`WTOOL_TEST_KILL_AT=N`: SIGKILL just before the commit's Nth file operation) at every step of
its commit: the set must read as the old or the new model, in wtool and in Keras's own
`load_weights`, and the next write must leave a clean set.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SAMPLES, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc and fork")]

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


class Forker:
    """The fork server of tests/kill_forker.py: `wtool ARGS` runs in a child forked after the imports."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_forker.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"
        self.lock = threading.Lock()

    def start(self, args: list[str]) -> int:
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps([str(REPO), *args]) + "\n")
            self.proc.stdin.flush()
            return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _status(pid: int) -> int | None:
    """None while the child runs; its exit code once it has ended (a zombie: the forker reaps only at the end).

    /proc/PID/stat: field 3 is the state, field 52 the wait status (Linux 3.5 and later).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    if fields[0] not in ("Z", "X"):
        return None
    status = int(fields[49])
    return -(status & 0x7F) if status & 0x7F else status >> 8


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (code := _status(pid)) is None:
        assert time.monotonic() < deadline, f"wtool (pid {pid}) still running after {timeout:.0f} s"
        time.sleep(0.005)
    return code


def _args(command: str, target: Path) -> list[str]:
    if command == "set-weights":
        return ["set-weights", str(target), "--init", "*=constant:0.5", "--in-place", "-q"]
    return ["train", str(target), "--data", str(SAMPLES / "xor.npz"), "--in-place", "--epochs", "3", "--seed", "0",
            "-q"]


def _temporary(directory: Path) -> bool:
    return any(p.name.startswith(".") for p in directory.iterdir())  # atomic_output's temporary file


def _run_to_end(forker: Forker, command: str, target: Path) -> tuple[float, float]:
    """Run uninterrupted; return how long the run took and how long its temporary file existed (the write)."""
    start = time.monotonic()
    pid = forker.start(_args(command, target))
    appeared = gone = None
    while _status(pid) is None:
        assert time.monotonic() - start < 300, f"wtool (pid {pid}) still running after 300 s"
        if appeared is None and _temporary(target.parent):
            appeared = time.monotonic()
        elif appeared is not None and gone is None and not _temporary(target.parent):
            gone = time.monotonic()
        time.sleep(0.001)
    assert _wait(pid, 1) == 0
    end = time.monotonic()
    assert appeared is not None, "the run wrote no temporary file beside its target"
    return end - start, (gone or end) - appeared


def _kill_once(forker: Forker, command: str, source: Path, workdir: Path, seed: int, full: float,
               write: float) -> tuple[str, str]:
    """Run the command on a fresh copy, SIGKILL it at a seeded moment; return (outcome, how)."""
    rng = random.Random(seed)
    workdir.mkdir()
    target = workdir / source.name
    shutil.copyfile(source, target)
    pid = forker.start(_args(command, target))
    start = time.monotonic()
    deadline = start + 3 * full + 30
    how = ""
    if seed % 4 == 1:
        # Inside the write: from the temporary file's appearance, spread over the first 80% of as long as
        # the uninterrupted run's write lasted (four runs side by side write slower than that one alone, so
        # these land before the rename). A fixed 0-0.4 s used to land mostly after the rename of a small
        # file, in a fresh interpreter's shutdown.
        delay = rng.uniform(0, 0.8) * write
        while _status(pid) is None and time.monotonic() < deadline:
            if _temporary(workdir):
                time.sleep(delay)
                how = f"{delay * 1000:.0f} ms after the temporary file appeared"
                break
            time.sleep(0.001)
    elif seed % 4 == 3:
        # Just after the rename (the temporary file seen, then gone): the moment before the directory's
        # fsync and the end of the run, where the target must already be the whole new file.
        seen = False
        while _status(pid) is None and time.monotonic() < deadline:
            present = _temporary(workdir)
            if seen and not present:
                how = "just after the rename"
                break
            seen = seen or present
            time.sleep(0.001)
    else:
        delay = rng.uniform(0.2, 2.0) * full
        while _status(pid) is None and time.monotonic() - start < delay:
            time.sleep(0.005)
        how = f"at {delay:.2f} s of a {full:.2f} s run"
    finished = _status(pid) is not None
    if not finished:
        os.kill(pid, signal.SIGKILL)
    _wait(pid, 60)
    return ("finished" if finished else "killed"), how


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    server = Forker()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory, forker: Forker) -> Path:
    """A 4.2M-parameter model (17 MB) as .keras and .h5, so a write lasts long enough to be hit."""
    directory = tmp_path_factory.mktemp("big")
    for name in ("big.keras", "big.h5"):
        pid = forker.start(["new", str(directory / name), "--input-shape", "2048", "--layers", "dense:2048:relu,dense:10",
                            "--seed", "0", "-q"])
        assert _wait(pid, 300) == 0
    return directory


@pytest.mark.parametrize("command,model", [("set-weights", "big.keras"), ("set-weights", "big.h5"),
                                           ("train", "xor.keras")])
def test_sigkill_leaves_old_or_new(command: str, model: str, tmp_path: Path, big_models: Path,
                                   forker: Forker) -> None:
    source = tmp_path / model
    shutil.copyfile(big_models / model if model.startswith("big") else SAMPLES / model, source)
    old = weights_of(source)
    reference = tmp_path / "reference"
    reference.mkdir()
    finished_copy = reference / model
    shutil.copyfile(source, finished_copy)
    full, write = _run_to_end(forker, command, finished_copy)
    new = weights_of(finished_copy)
    assert not same(old, new)
    kills = KILLS if model != "big.h5" else KILLS // 2
    seeds = range(kills)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        outcomes = list(pool.map(lambda s: _kill_once(forker, command, source, tmp_path / f"run{s}", s, full, write),
                                  seeds))
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
            assert how != "just after the rename", f"seed {seed}: the old model after the rename"
            counts["old"] += 1
        elif same(now, new):
            counts["new"] += 1
        else:
            pytest.fail(f"seed {seed} ({outcome} {how}): the target is neither the old nor the new model")
    print(f"{command} {model}: {counts} (a whole run: {full:.2f} s, its write {write:.3f} s)")
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
