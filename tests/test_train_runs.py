"""`wtool train` runs that were wrong or misleading (issue 15 §5): XLA by run length, a learning rate of 0,
resume with too few epochs, early stopping's optimizer state, checkpoint folders and numbers, messages.

One tiny linear model and data set per module; every case runs the real CLI and reads the files it wrote.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def lin(tmp_path_factory):
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("lin")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    np.savez(d / "lin.npz", x=x, y=y)
    np.savez(d / "small.npz", x=x[:16], y=y[:16])
    np.savez(d / "anti.npz", x=x, y=-y)  # validation data that gets worse as training gets better
    assert run_cli("new", d / "lin.keras", "--input-shape", "4", "--layers", "dense:1", "--seed", "0").exit_code == 0
    return d


def _train(wtool, d, *args):
    return wtool("train", d / "lin.keras", "--loss", "mse", "--seed", "0", *args)


def _iterations(path) -> int:
    import h5py

    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
        return int(np.asarray(h5["optimizer"]["vars"]["0"]))


def _kernel(path) -> np.ndarray:
    import h5py

    with zipfile.ZipFile(path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
        found = []
        h5.visititems(lambda name, obj: found.append(np.asarray(obj)) if name.endswith("vars/0") and
                      name.startswith("layers") else None)
        return found[0]


def test_jit_auto_does_not_depend_on_the_number_of_epochs(wtool, lin, tmp_path):
    """16 steps an epoch: 1 epoch and 320 epochs (5,120 steps) compile alike and start with the same loss."""
    common = ["--data", lin / "small.npz", "--batch-size", "1", "--json"]
    short = _train(wtool, lin, *common, "-o", tmp_path / "a.keras", "--epochs", "1")
    long = _train(wtool, lin, *common, "-o", tmp_path / "b.keras", "--epochs", "320")
    assert short.exit_code == 0 and long.exit_code == 0, (short, long)
    a, b = short.json(), long.json()
    assert a["jit"] == b["jit"]
    assert a["history"][0]["loss"] == b["history"][0]["loss"]


def test_the_run_header_says_when_xla_is_on(wtool, lin, tmp_path):
    on = _train(wtool, lin, "--data", lin / "small.npz", "-o", tmp_path / "on.keras", "--jit", "on")
    off = _train(wtool, lin, "--data", lin / "small.npz", "-o", tmp_path / "off.keras", "--jit", "off")
    assert on.exit_code == 0 and off.exit_code == 0, (on, off)
    assert "compiled with XLA" in on.stderr
    assert "XLA" not in off.stderr


def test_a_finished_cosine_schedule_is_refused_and_learning_rate_sets_a_new_one(wtool, lin, tmp_path):
    first = tmp_path / "cos.keras"
    res = _train(wtool, lin, "--data", lin / "lin.npz", "-o", first, "--optimizer", "sgd", "--lr", "0.1",
                 "--lr-schedule", "cosine", "--epochs", "2", "--batch-size", "16", "--json")
    assert res.exit_code == 0, res
    assert res.json()["optimizer"] == "sgd (lr CosineDecay(0.1) over 8 steps)"
    again = wtool("train", first, "--data", lin / "lin.npz", "-o", tmp_path / "again.keras", "--batch-size", "16")
    assert again.exit_code == 2, again
    assert "learning rate is 0" in again.stderr and "CosineDecay" in again.stderr
    assert "--lr RATE" in again.stderr and "Traceback" not in again.stderr
    assert not (tmp_path / "again.keras").exists()
    fixed = wtool("train", first, "--data", lin / "lin.npz", "-o", tmp_path / "fixed.keras", "--batch-size", "16",
                  "--learning-rate", "0.05", "--json")
    assert fixed.exit_code == 0, fixed
    assert fixed.json()["optimizer"] == "sgd (lr 0.05)"
    assert not np.array_equal(_kernel(first), _kernel(tmp_path / "fixed.keras"))


def test_a_warm_up_cosine_starting_at_zero_trains_and_is_described_by_its_target(wtool, lin, tmp_path):
    res = _train(wtool, lin, "--data", lin / "lin.npz", "-o", tmp_path / "w.keras", "--optimizer", "sgd",
                 "--lr", "0.1", "--lr-schedule", "cosine", "--warmup-steps", "2", "--batch-size", "16", "--json")
    assert res.exit_code == 0, res
    assert res.json()["optimizer"] == "sgd (lr CosineDecay(0.1) over 2 steps, warm-up 2)"


def test_resume_needs_more_epochs_than_done_and_checkpoints_are_numbered_by_epoch(wtool, lin, tmp_path):
    ck = tmp_path / "ck"
    common = ["--data", lin / "lin.npz", "--batch-size", "16", "--checkpoint-dir", ck, "--keep-checkpoints", "5"]
    res = _train(wtool, lin, *common, "-o", tmp_path / "a.keras", "--epochs", "4", "--checkpoint-every", "2")
    assert res.exit_code == 0, res
    assert sorted(p.name for p in ck.glob("*.index")) == ["ckpt-2.index", "ckpt-4.index"]
    more = _train(wtool, lin, *common, "-o", tmp_path / "b.keras", "--epochs", "5", "--resume")
    assert more.exit_code == 0, more
    assert (ck / "ckpt-5.index").exists()
    for epochs in ("3", "5"):
        res = _train(wtool, lin, *common, "-o", tmp_path / "c.keras", "--epochs", epochs, "--resume")
        assert res.exit_code == 2, res
        assert "leaves nothing to run" in res.stderr and "pass --epochs 6 or more" in res.stderr
    assert not (tmp_path / "c.keras").exists()


def test_early_stopping_writes_the_best_epochs_optimizer_state_with_its_weights(wtool, lin, tmp_path):
    out = tmp_path / "es.keras"
    res = _train(wtool, lin, "--data", lin / "lin.npz", "--val-data", lin / "anti.npz", "-o", out, "--optimizer",
                 "sgd", "--lr", "0.05", "--batch-size", "16", "--epochs", "10", "--early-stopping", "2", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["restored_best_weights"] and doc["best_epoch"] < doc["last_epoch"], doc
    assert _iterations(out) == doc["best_epoch"] * 4


def test_a_resumed_run_removes_the_automatic_checkpoint_folder(wtool, lin, tmp_path, monkeypatch):
    """Interrupted after epoch 1 (SIGINT from the reporter), then resumed with the hint's own command line."""
    import wtool.cli.commands.train as command
    import wtool.train.options as options

    def interrupt(self, record):
        os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "auto.keras"
    for cls in (command.LineReporter, options.Reporter):
        monkeypatch.setattr(cls, "epoch_end", interrupt)
    res = _train(wtool, lin, "--data", lin / "lin.npz", "-o", out, "--batch-size", "16", "--epochs", "3")
    monkeypatch.undo()
    assert res.exit_code == 130, res
    ckpt = tmp_path / "auto.keras.ckpt"
    assert (ckpt / "ckpt-1.index").exists() and not out.exists()
    hint = re.search(r"hint: resume with: (.*)", res.stderr)
    assert hint and "--checkpoint-dir" in hint.group(1), res.stderr
    resumed = wtool(*shlex.split(hint.group(1))[1:], "--json")
    assert resumed.exit_code == 0, resumed
    assert resumed.json()["epochs_run"] == 2 and resumed.json()["checkpoint"] is None
    assert out.exists() and not ckpt.exists()


def test_divergence_with_a_checkpoint_dir_does_not_ask_for_one(wtool, lin, tmp_path):
    res = _train(wtool, lin, "--data", lin / "lin.npz", "-o", tmp_path / "d.keras", "--optimizer", "sgd",
                 "--lr", "1e12", "--batch-size", "8", "--epochs", "3", "--checkpoint-dir", tmp_path / "ck")
    assert res.exit_code == 6, res
    assert "diverged at epoch 1" in res.stderr
    assert f"no checkpoint was saved in {tmp_path / 'ck'} yet" in res.stderr
    assert "pass --checkpoint-dir" not in res.stderr


def test_terminal_progress_keeps_every_epoch_line_and_ends_before_an_interrupt(wtool, lin, tmp_path, monkeypatch):
    """On a terminal (rich's TTY_COMPATIBLE=1): run and epoch bars with an ETA, every epoch's line printed, and
    the interrupt message on a line of its own after the bars are gone."""
    import wtool.train.loop as loop

    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "160")
    ok = _train(wtool, lin, "--data", lin / "lin.npz", "-o", tmp_path / "p.keras", "--batch-size", "16",
                "--epochs", "30")
    assert ok.exit_code == 0, ok
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", ok.stderr)
    for epoch in range(1, 31):
        assert f"epoch {epoch}/30  loss" in plain, plain[-3000:]

    real = loop._Run._end_epoch

    def end_then_interrupt(self, epoch, record):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, epoch, record)

    monkeypatch.setattr(loop._Run, "_end_epoch", end_then_interrupt)
    res = _train(wtool, lin, "--data", lin / "lin.npz", "-o", tmp_path / "q.keras", "--batch-size", "16",
                 "--epochs", "5")
    assert res.exit_code == 130, res
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", res.stderr)
    assert "epoch 2/5  loss" in plain
    assert "run 1/5 epochs" in plain and "eta" in plain
    assert re.search(r"(^|[\r\n])error: interrupted", plain), plain[-2000:]  # \r: the bars' line is erased first


def test_keras_style_validation_option_names_are_aliases(tmp_path):
    """--validation-split / --validation-data (model.fit's names) do what --val-split / --val-data do."""
    from tests.conftest import SAMPLES, run_cli

    common = ["--data", SAMPLES / "nested.npz", "--epochs", "1", "--seed", "2", "--json", "-q"]
    runs = {}
    for name, opt, val in (("short", "--val-split", "0.25"), ("keras", "--validation-split", "0.25"),
                           ("data", "--validation-data", SAMPLES / "nested.npz")):
        res = run_cli("train", SAMPLES / "nested.keras", *common, opt, val, "-o", tmp_path / f"{name}.keras")
        assert res.exit_code == 0, res
        runs[name] = res.json()["history"][-1]
    assert runs["short"]["val_loss"] == runs["keras"]["val_loss"]
    assert "val_loss" in runs["data"]
