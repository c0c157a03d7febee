"""`wtool train --strategy`: mirrored and multi-worker runs end where a single-process run ends.

The mirrored and multi-worker runs happen in subprocesses (a strategy is fixed at a process's start-up);
the killed-worker test's one-device reference runs in-process (the default strategy). Multi-worker
runs use two workers on 127.0.0.1 with free ports; every process has a time limit and is killed at the
end of its test. Note: TensorFlow's gRPC server listens on every interface of the port it is given
(there is no bind-address option); the cluster itself only uses 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from wtool.errors import UsageError
from wtool.train import distribute as D

# Every subprocess gets this long at most; a hang fails the test instead of stalling the suite.
PROC_TIMEOUT = 150
ROWS, FEATURES, BATCH, EPOCHS = 200, 8, 32, 2
TRAIN_ARGS = ["--loss", "binary_crossentropy", "--optimizer", "adam", "--lr", "0.01", "--batch-size", str(BATCH),
              "--seed", "3", "--json", "-q"]


# ----------------------------------------------------------------------------------------- no TensorFlow


def test_replica_bounds_partition_each_batch() -> None:
    for rows in (1, 2, 7, 32, 33):
        for replicas in (1, 2, 3, 4):
            spans = [D.replica_bounds(rows, replicas, r) for r in range(replicas)]
            assert spans[0][0] == 0 and spans[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
            sizes = [hi - lo for lo, hi in spans]
            assert max(sizes) - min(sizes) <= 1


def test_cluster_from_workers_and_tf_config() -> None:
    spec = D.cluster_spec(["10.0.0.1:2222", "10.0.0.2:2222"], 1, environ={})
    assert spec.jobs == {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    assert (spec.task_type, spec.task_index, spec.is_chief, spec.num_workers) == ("worker", 1, False, 2)
    assert json.loads(spec.tf_config()) == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                                            "task": {"type": "worker", "index": 1}}
    env = {"TF_CONFIG": json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
                                    "task": {"type": "chief", "index": 0}})}
    spec = D.cluster_spec(None, None, environ=env)
    assert spec.is_chief and spec.num_workers == 3 and spec.address == "a:1" and spec.source == "TF_CONFIG"
    env["TF_CONFIG"] = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker",
                                                                                              "index": 0}})
    assert not D.cluster_spec(None, None, environ=env).is_chief


@pytest.mark.parametrize("workers, index, env, fragment", [
    (None, None, {}, "needs the cluster"),
    (["127.0.0.1:1", "127.0.0.1:2"], None, {}, "needs --task-index"),
    (["127.0.0.1:1", "127.0.0.1:2"], 2, {}, "out of range"),
    (["127.0.0.1"], 0, {}, "not HOST:PORT"),
    (["127.0.0.1:99999"], 0, {}, "port from 1 to 65535"),
    (None, 0, {}, "--task-index needs --workers"),
    (None, None, {"TF_CONFIG": "{nope"}, "not JSON"),
    (None, None, {"TF_CONFIG": '{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}'}, "not supported"),
    (None, None, {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'},
     "out of range"),
])
def test_bad_cluster_is_a_usage_error(workers, index, env, fragment) -> None:
    with pytest.raises(UsageError, match=fragment.replace("-", r"\-")):
        D.cluster_spec(workers, index, environ=env)


def test_parse_workers() -> None:
    assert D.parse_workers("h1:2222, h2:2223") == ["h1:2222", "h2:2223"]
    with pytest.raises(UsageError, match="twice"):
        D.parse_workers("h1:2222,h1:2222")


def test_cluster_error_names_the_failed_worker() -> None:
    spec = D.cluster_spec(["127.0.0.1:5000", "127.0.0.1:5001"], 0, environ={})
    exc = RuntimeError("Collective ops is aborted by: The following tasks are unhealthy (stopped sending "
                       "heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    err = D.cluster_error(exc, spec, 30, checkpoint="ck/ckpt-2", resume="wtool train ... --resume")
    assert err.exit_code == 7
    assert "worker 1 (127.0.0.1:5001) failed or stopped answering" in err.message
    assert "ck/ckpt-2" in (err.hint or "") and "--resume" in (err.hint or "")


# --------------------------------------------------------------------------------------- CLI, no TF run


@pytest.mark.parametrize("args, fragment", [
    (["--strategy", "multi-worker", "--workers", "127.0.0.1:1,127.0.0.1:2"], "needs --task-index"),
    (["--strategy", "mirrored", "--workers", "127.0.0.1:1", "--task-index", "0"], "go with --strategy multi-worker"),
    (["--strategy", "nope"], "nope"),
    (["--strategy", "one-device", "--replicas", "2"], "--replicas goes with"),
    (["--strategy", "multi-worker", "--workers", "127.0.0.1:1,127.0.0.1:2", "--task-index", "0",
      "--collective-timeout", "0"], "--collective-timeout"),
])
def test_bad_strategy_options_exit_2(tmp_path: Path, samples: Path, args: list[str], fragment: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    res = run_cli("train", samples / "xor.keras", "--data", samples / "xor.npz", "-o", tmp_path / "o.keras", *args)
    assert res.exit_code == 2, res
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o.keras").exists()


# ------------------------------------------------------------------------------------------ TF runs


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def _start(args: list[str | Path], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "wtool", *[str(a) for a in args]], stdout=subprocess.PIPE,
                                stderr=err, env=_env(**env), start_new_session=True)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = PROC_TIMEOUT) -> tuple[int, dict, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        pytest.fail(f"worker did not finish within {timeout} s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    doc = json.loads(out) if out.strip().startswith(b"{") else {}
    return proc.returncode, doc, text


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small model, data, and the single-process reference run (one device, same seed and batch)."""
    d = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype("float32")
    y = (x @ rng.normal(size=(FEATURES, 1)) > 0).astype("float32")
    np.savez(d / "data.npz", x=x, y=y)
    # In-process: `new` runs no strategy (a fresh interpreter here cost a TensorFlow start-up, ~5 s of CPU).
    res = run_cli("new", d / "model.keras", "--input-shape", FEATURES, "--layers", "dense:16:relu,dense:1:sigmoid",
                  "--seed", "1")
    assert res.exit_code == 0, res
    ref = _start(["train", d / "model.keras", "--data", d / "data.npz", "-o", d / "ref.keras", "--epochs", EPOCHS,
                  "--strategy", "one-device", *TRAIN_ARGS], d / "ref.log")
    code, doc, log = _finish(ref, d / "ref.log")
    assert code == 0, log[-3000:]
    (d / "ref.json").write_text(json.dumps(doc))
    return {"dir": d, "model": d / "model.keras", "data": d / "data.npz", "ref": d / "ref.keras"}


def _same_weights(a: Path, b: Path) -> None:
    res = run_cli("diff", a, b, "--atol", "1e-5", "--rtol", "1e-4")
    assert res.exit_code == 0, res


def _ref_loss(setup: dict[str, Path]) -> float:
    return json.loads((setup["dir"] / "ref.json").read_text())["final"]["loss"]


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.xdist_group("distribute")
def test_mirrored_two_cpu_replicas_match_one_device(setup: dict[str, Path]) -> None:
    d = setup["dir"]
    proc = _start(["train", setup["model"], "--data", setup["data"], "-o", d / "mirrored.keras", "--epochs", EPOCHS,
                   "--strategy", "mirrored", "--replicas", "2", *TRAIN_ARGS], d / "mirrored.log")
    code, doc, log = _finish(proc, d / "mirrored.log")
    assert code == 0, log[-3000:]
    assert doc["strategy"]["kind"] == "mirrored" and doc["strategy"]["replicas"] == 2
    _same_weights(setup["ref"], d / "mirrored.keras")
    assert doc["final"]["loss"] == pytest.approx(_ref_loss(setup), rel=1e-5)
    assert doc["optimizer_steps"] == EPOCHS * -(-ROWS // BATCH)


def _start_pair(setup: dict[str, Path], tag: str, epochs: int, extra: list[str],
                tf_config_for_second: bool = False) -> tuple[list, list[Path], list[Path]]:
    """Two workers on 127.0.0.1; the second one optionally told the cluster by TF_CONFIG instead of flags."""
    d = setup["dir"]
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    outs = [d / f"{tag}{i}.keras" for i in range(2)]
    logs = [d / f"{tag}{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        env: dict[str, str] = {}
        cluster = ["--workers", ",".join(addrs), "--task-index", str(i)]
        if i == 1 and tf_config_for_second:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addrs}, "task": {"type": "worker", "index": 1}})
            cluster = []
        procs.append(_start(["train", setup["model"], "--data", setup["data"], "-o", outs[i], "--epochs", epochs,
                             "--strategy", "multi-worker", *cluster, "--collective-timeout", "40", *extra,
                             *TRAIN_ARGS], logs[i], **env))
    return procs, outs, logs


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.xdist_group("distribute")
def test_two_workers_match_one_process(setup: dict[str, Path]) -> None:
    procs, outs, logs = _start_pair(setup, "mw", EPOCHS, [], tf_config_for_second=True)
    try:
        results = [_finish(p, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        for p in procs:
            _kill(p)
    for code, _doc, log in results:
        assert code == 0, log[-3000:]
    chief, other = results[0][1], results[1][1]
    assert chief["strategy"]["chief"] is True and other["strategy"]["chief"] is False
    assert chief["strategy"]["workers"] == 2 and chief["strategy"]["replicas"] == 2
    assert "from TF_CONFIG" in other["strategy"]["description"]
    # Both workers report the same final loss, and the single-process one.
    assert chief["final"]["loss"] == other["final"]["loss"]
    assert chief["final"]["loss"] == pytest.approx(_ref_loss(setup), rel=1e-5)
    # The chief wrote OUT (once); the other worker wrote nothing there.
    assert outs[0].is_file() and not outs[1].exists()
    assert not list(setup["dir"].glob(".mw1*"))
    _same_weights(setup["ref"], outs[0])


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.xdist_group("distribute")
def test_killed_worker_stops_the_other_and_resume_finishes(setup: dict[str, Path]) -> None:
    d = setup["dir"]
    # 20 epochs of 7 steps: the chief checkpoints after every epoch, the kill follows its first checkpoint
    # within ~0.05 s (2-3 epochs at most, seen), so the rest is margin; 40 proved nothing more.
    epochs = 20
    ckpt = d / "kill.ckpt"
    extra = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "1"]
    procs, outs, logs = _start_pair(setup, "kill", epochs, extra)
    try:
        deadline = time.monotonic() + PROC_TIMEOUT
        while not (ckpt / "checkpoint").exists():  # the chief saved after its first epoch
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            assert procs[0].poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(procs[1].pid, signal.SIGKILL)
        # Bounded: the chief must stop by itself (collective timeout 40 s, heartbeat ~10 s), not hang.
        code, _doc, log = _finish(procs[0], logs[0], timeout=90)
    finally:
        for p in procs:
            _kill(p)
    assert code == 7, log[-3000:]
    assert "error: multi-worker training stopped: worker 1 (127.0.0.1:" in log, log[-3000:]
    assert "hint:" in log and "--resume" in log
    assert "Traceback" not in log
    assert not outs[0].exists()

    # Restart both with --resume: the run finishes where an uninterrupted single-process run ends.
    procs, outs, logs = _start_pair(setup, "resume", epochs, [*extra, "--resume"])
    try:
        # The reference meanwhile, in-process: one-device is the default strategy, nothing to fix at
        # start-up (a third TensorFlow process here cost ~5 s of CPU beside the two workers).
        ref = run_cli("train", setup["model"], "--data", setup["data"], "-o", d / "ref_long.keras", "--epochs",
                      epochs, "--strategy", "one-device", *TRAIN_ARGS)
        results = [_finish(p, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        for p in procs:
            _kill(p)
    assert ref.exit_code == 0, ref
    for code, _doc, log in results:
        assert code == 0, log[-3000:]
    assert results[0][1]["final"]["loss"] == results[1][1]["final"]["loss"]
    assert results[0][1]["final"]["loss"] == pytest.approx(ref.json()["final"]["loss"], rel=1e-4)
    _same_weights(d / "ref_long.keras", outs[0])
