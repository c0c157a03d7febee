"""`wtool train`: learning, determinism, freezing, incremental updates, checkpoints/resume, divergence, bad input."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.tf

XOR_SPEC = "dense:3:sigmoid:nobias,dense:1:sigmoid:nobias"


def load(path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    return keras.saving.load_model(path, compile=False)


def weights(path) -> dict[str, np.ndarray]:
    """Weights by layer path/variable name (nested models walked), read back through Keras."""
    model = load(path)
    out: dict[str, np.ndarray] = {}

    def walk(container, prefix):
        for layer in container.layers:
            if hasattr(layer, "layers") and layer.weights and type(layer).__name__ in ("Sequential", "Functional"):
                walk(layer, f"{prefix}{layer.name}/")
                continue
            for w in layer.weights:
                out[f"{prefix}{layer.name}/{w.name}"] = w.numpy()

    walk(model, "")
    return out


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def optimizer_iterations(path) -> int:
    import h5py

    with zipfile.ZipFile(path) as zf, h5py.File(__import__("io").BytesIO(zf.read("model.weights.h5")), "r") as h5:
        return int(np.asarray(h5["optimizer"]["vars"]["0"]))


def train(wtool, *args):
    res = wtool("train", *args, "--json")
    return res


# ------------------------------------------------------------------------------------ learning


def test_xor_network_learns_xor_with_plain_sgd_and_mse(wtool, tmp_path, samples):
    """The classic 2-3-1 sigmoid network without biases, plain SGD, mse."""
    model = tmp_path / "xor.keras"
    assert wtool("new", model, "--input-shape", "2", "--layers", XOR_SPEC, "--seed", "5").exit_code == 0
    out = tmp_path / "xor-trained.keras"
    res = train(wtool, model, "--data", samples / "xor.npz", "-o", out, "--optimizer", "sgd", "--lr", "8",
                "--loss", "mse", "--batch-size", "4", "--epochs", "2000", "--seed", "0")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["epochs_run"] == 2000 and len(doc["history"]) == 2000
    assert doc["final"]["loss"] < 0.01
    assert doc["optimizer"].startswith("sgd (lr 8")
    assert doc["optimizer_steps"] == 2000
    x = np.load(samples / "xor.npz")["x"]
    pred = load(out).predict(x, verbose=0).ravel()
    assert (pred > 0.5).astype(int).tolist() == [0, 1, 1, 0], pred
    assert doc["samples_per_s"] > 0


def test_same_command_twice_is_bitwise_identical(wtool, tmp_path, samples):
    outs = []
    for name in ("a.keras", "b.keras"):
        out = tmp_path / name
        res = train(wtool, samples / "cnn.keras", "--data", samples / "cnn.npz", "-o", out, "--epochs", "2",
                    "--batch-size", "48", "--seed", "7", "--val-split", "0.25")
        assert res.exit_code == 0, res
        outs.append(weights(out))
    assert same_bits(*outs)
    base = weights(samples / "cnn.keras")
    assert not same_bits(outs[0], base)  # it did train (dropout and shuffling were seeded)


# ------------------------------------------------------------------------------------ freezing


def test_everything_frozen_leaves_every_weight_bitwise_unchanged(wtool, tmp_path, samples):
    out = tmp_path / "frozen.keras"
    res = train(wtool, samples / "nested.keras", "--data", samples / "nested.npz", "-o", out, "--epochs", "2",
                "--freeze", "*", "--seed", "0")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["trainable_weights"] == 0
    assert doc["frozen"] == {"weights": 10, "unchanged": True}
    assert same_bits(weights(samples / "nested.keras"), weights(out))
    diff = wtool("diff", samples / "nested.keras", out)
    assert diff.exit_code == 0, diff
    human = wtool("train", samples / "nested.keras", "--data", samples / "nested.npz", "-o", out, "--freeze", "*")
    assert "10 frozen weights unchanged" in human.stdout


def test_fine_tuning_with_features_frozen_changes_only_the_head(wtool, tmp_path, samples):
    out = tmp_path / "tuned.keras"
    res = train(wtool, samples / "nested.keras", "--data", samples / "nested.npz", "-o", out, "--epochs", "2",
                "--freeze", "features", "--seed", "0")
    assert res.exit_code == 0, res
    assert res.json()["frozen"]["weights"] == 8  # d1 (2), bn (4: its moving statistics too), d2 (2)
    before, after = weights(samples / "nested.keras"), weights(out)
    changed = {k for k in before if before[k].tobytes() != after[k].tobytes()}
    assert changed == {"classifier/kernel", "classifier/bias"}
    # the flags are saved: the output's feature extractor is frozen
    model = load(out)
    assert not any(layer.trainable for layer in model.get_layer("features").layers)
    assert [w.path for w in model.trainable_weights] == ["classifier/kernel", "classifier/bias"]
    # --unfreeze on top of the saved flags trains it again; nested globs reach single layers
    again = train(wtool, out, "--data", samples / "nested.npz", "-o", tmp_path / "t2.keras", "--unfreeze",
                  "features/d2", "--seed", "0")
    assert again.exit_code == 0, again
    after2 = weights(tmp_path / "t2.keras")
    changed2 = {k for k in after if after[k].tobytes() != after2[k].tobytes()}
    assert changed2 == {"features/d2/kernel", "features/d2/bias", "classifier/kernel", "classifier/bias"}


def test_frozen_batchnorm_runs_in_inference_mode(wtool, tmp_path, samples):
    out = tmp_path / "cnn.keras"
    res = train(wtool, samples / "cnn.keras", "--data", samples / "cnn.npz", "-o", out, "--freeze", "bn1",
                "--seed", "0")
    assert res.exit_code == 0, res
    before, after = weights(samples / "cnn.keras"), weights(out)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        assert before[f"bn1/{name}"].tobytes() == after[f"bn1/{name}"].tobytes()
    assert before["conv1/kernel"].tobytes() != after["conv1/kernel"].tobytes()


def test_a_frozen_weight_that_moves_is_exit_70(wtool, tmp_path, samples, monkeypatch):
    import wtool.train.steps as core

    real = core.make_functions

    def buggy(*args, **kwargs):
        fns = real(*args, **kwargs)
        model = args[0]
        inner = fns.train

        def train_and_break(xs, ys):
            result = inner(xs, ys)
            model.get_layer("features").get_layer("d1").kernel.assign_add(np.ones((16, 32), "float32"))
            return result

        fns.train = train_and_break
        return fns

    monkeypatch.setattr(core, "make_functions", buggy)
    out = tmp_path / "o.keras"
    res = wtool("train", samples / "nested.keras", "--data", samples / "nested.npz", "-o", out, "--freeze",
                "features", "--seed", "0")
    assert res.exit_code == 70, res
    assert "frozen weight" in res.stderr and "d1/kernel" in res.stderr
    assert not out.exists()


def test_freeze_glob_that_matches_nothing_is_exit_2(wtool, tmp_path, samples):
    res = wtool("train", samples / "nested.keras", "--data", samples / "nested.npz", "-o", tmp_path / "o.keras",
                "--freeze", "feature")
    assert res.exit_code == 2, res
    assert "'feature' matches no layer" in res.stderr and "features" in res.stderr


# ---------------------------------------------------------------------------- incremental updates


def test_continued_adam_has_the_saved_step_count_and_is_a_true_continuation(wtool, tmp_path, samples):
    common = ["--data", samples / "mlp.npz", "--batch-size", "100", "--no-shuffle", "--seed", "0"]
    one, two, straight = tmp_path / "one.keras", tmp_path / "two.keras", tmp_path / "straight.keras"
    r1 = train(wtool, samples / "mlp.keras", *common, "-o", one, "--epochs", "1")
    assert r1.exit_code == 0, r1
    assert r1.json()["optimizer_steps"] == 6 and optimizer_iterations(one) == 6
    r2 = train(wtool, one, *common, "-o", two, "--epochs", "1")
    assert r2.exit_code == 0, r2
    doc = r2.json()
    assert doc["restored_optimizer_steps"] == 6 and doc["optimizer_steps"] == 12
    assert optimizer_iterations(two) == 12
    assert any("continuing the saved optimizer state (6 steps" in n for n in doc["notes"])
    r3 = train(wtool, samples / "mlp.keras", *common, "-o", straight, "--epochs", "2")
    assert r3.exit_code == 0, r3
    assert same_bits(weights(two), weights(straight))  # 1 + 1 epochs == 2 epochs, bit for bit
    fresh = train(wtool, one, *common, "-o", tmp_path / "fresh.keras", "--reset-optimizer")
    assert fresh.exit_code == 0 and fresh.json()["optimizer_steps"] == 6


def test_optimizer_state_that_cannot_be_restored_is_an_error(wtool, tmp_path, samples):
    one = tmp_path / "one.keras"
    assert train(wtool, samples / "mlp.keras", "--data", samples / "mlp.npz", "-o", one).exit_code == 0
    out = tmp_path / "o.keras"
    res = wtool("train", one, "--data", samples / "mlp.npz", "-o", out, "--optimizer", "sgd")
    assert res.exit_code == 4, res
    assert "Adam" in res.stderr and "SGD cannot continue it" in res.stderr and "--reset-optimizer" in res.stderr
    assert not out.exists()
    ok = wtool("train", one, "--data", samples / "mlp.npz", "-o", out, "--optimizer", "sgd", "--reset-optimizer")
    assert ok.exit_code == 0, ok


# ------------------------------------------------------------------------ checkpoints and resume


def test_checkpoint_and_resume_equal_the_uninterrupted_run(wtool, tmp_path, samples):
    common = ["--data", samples / "cnn.npz", "--batch-size", "64", "--seed", "3", "--val-split", "0.25",
              "--early-stopping", "5"]
    straight = tmp_path / "straight.keras"
    assert train(wtool, samples / "cnn.keras", *common, "-o", straight, "--epochs", "3").exit_code == 0
    ck = tmp_path / "ck"
    part = train(wtool, samples / "cnn.keras", *common, "-o", tmp_path / "part.keras", "--epochs", "2",
                 "--checkpoint-dir", ck)
    assert part.exit_code == 0, part
    assert (ck / "checkpoint").exists()
    resumed = tmp_path / "resumed.keras"
    res = train(wtool, samples / "cnn.keras", *common, "-o", resumed, "--epochs", "3", "--checkpoint-dir", ck,
                "--resume")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["epochs_run"] == 1 and [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    assert same_bits(weights(straight), weights(resumed))


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_resume_equals_the_uninterrupted_run(wtool, tmp_path, samples):
    # 50 epochs (2,500 steps), not 300: the interrupt is sent on the first epoch line, and the 49 epochs
    # left (~2 s of the child's CPU) are margin enough; the resumed and the straight run (in-process)
    # were 2 x 15,000 steps before, which proved nothing more.
    epochs = 50
    common = ["--data", str(samples / "nested.npz"), "--batch-size", "8", "--seed", "1", "--epochs", str(epochs)]
    out = tmp_path / "out.keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
    cmd = [sys.executable, "-m", "wtool", "train", str(samples / "nested.keras"), *common, "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # wait until training runs (the first epoch line), then interrupt
        lines.append(line)
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 130, "".join(lines) + rest
    assert not out.exists()
    match = re.search(r"hint: resume with: (.*)", rest)
    assert match, rest
    resume = shlex.split(match.group(1))
    assert resume[:2] == ["wtool", "train"] and "--resume" in resume
    ckdir = resume[resume.index("--checkpoint-dir") + 1]
    assert os.path.isdir(os.path.join(tmp_path, ckdir)) or os.path.isdir(ckdir)
    res = wtool(*resume[1:], "--json")
    assert res.exit_code == 0, res
    assert 0 < res.json()["epochs_run"] < epochs
    straight = tmp_path / "straight.keras"
    assert train(wtool, samples / "nested.keras", *common, "-o", straight).exit_code == 0
    assert same_bits(weights(straight), weights(out))


def test_nan_divergence_exits_6_and_keeps_the_last_good_checkpoint(wtool, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    data = tmp_path / "lin.npz"
    np.savez(data, x=x, y=y)
    model = tmp_path / "lin.keras"
    assert wtool("new", model, "--input-shape", "4", "--layers", "dense:1", "--seed", "0").exit_code == 0
    ck = tmp_path / "ck"
    out = tmp_path / "o.keras"
    res = wtool("train", model, "--data", data, "-o", out, "--optimizer", "sgd", "--lr", "1.5", "--loss", "mse",
                "--batch-size", "64", "--epochs", "500", "--checkpoint-dir", ck, "--seed", "0",
                "--history", tmp_path / "h.json")
    assert res.exit_code == 6, res
    assert "diverged" in res.stderr and "--lr" in res.stderr and "--clip-norm" in res.stderr
    assert "last good checkpoint" in res.stderr
    assert not out.exists()
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(ck))
    assert latest is not None
    reader = tf.train.load_checkpoint(latest)
    values = [reader.get_tensor(k) for k, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating]
    assert len(values) >= 3 and all(np.all(np.isfinite(v)) for v in values)  # kernel, bias, learning rate
    history = json.loads((tmp_path / "h.json").read_text())
    assert history and all(np.isfinite(h["loss"]) for h in history)
    assert "--resume with a lower --lr" in res.stderr
    # the same run with a sane learning rate converges
    ok = train(wtool, model, "--data", data, "-o", out, "--optimizer", "sgd", "--lr", "0.1", "--loss", "mse",
               "--batch-size", "64", "--epochs", "200")
    assert ok.exit_code == 0 and ok.json()["final"]["loss"] < 1e-3


# ------------------------------------------------------------------------------ early stopping


def test_early_stopping_restores_the_best_weights(wtool, tmp_path, samples):
    common = ["--data", samples / "nested.npz", "--seed", "2", "--val-split", "0.2"]
    res = train(wtool, samples / "nested.keras", *common, "-o", tmp_path / "es.keras", "--epochs", "20",
                "--early-stopping", "2", "--min-delta", "1000")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["stopped_early"] and doc["epochs_run"] == 3 and doc["best_epoch"] == 1
    assert doc["restored_best_weights"]
    one = train(wtool, samples / "nested.keras", *common, "-o", tmp_path / "one.keras", "--epochs", "1")
    assert one.exit_code == 0
    assert same_bits(weights(tmp_path / "es.keras"), weights(tmp_path / "one.keras"))


# -------------------------------------------------------------------------- data sources, output


def test_history_files_json_output_and_in_place(wtool, tmp_path, samples):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copy(samples / "nested.keras", model)
    res = train(wtool, model, "--data", samples / "nested.npz", "--in-place", "--epochs", "2",
                "--history", tmp_path / "h.csv", "--metric", "accuracy", "--val-split", "0.25")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["output"] == str(model)
    assert set(doc["history"][0]) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(lines) == 3
    assert not same_bits(weights(samples / "nested.keras"), weights(model))
    refuse = wtool("train", model, "--data", samples / "nested.npz", "-o", model)
    assert refuse.exit_code == 2 and "--in-place" in refuse.stderr


def test_npy_pair_csv_and_tensorboard(wtool, tmp_path, samples):
    d = np.load(samples / "nested.npz")
    np.save(tmp_path / "x.npy", d["x"])
    np.save(tmp_path / "y.npy", d["y"])
    res = train(wtool, samples / "nested.keras", "--x", tmp_path / "x.npy", "--y", tmp_path / "y.npy", "-o",
                tmp_path / "a.keras", "--tensorboard", tmp_path / "tb", "--seed", "0")
    assert res.exit_code == 0, res
    assert any(name.startswith("events.out") for _root, _dirs, files in os.walk(tmp_path / "tb") for name in files)
    rows = ["f" + ",f".join(str(i) for i in range(16)) + ",label"]
    rows += [",".join(f"{v:.6f}" for v in xs) + f",{int(y)}" for xs, y in zip(d["x"], d["y"], strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    res = train(wtool, samples / "nested.keras", "--data", tmp_path / "d.csv", "--target", "label", "-o",
                tmp_path / "b.keras", "--seed", "0")
    assert res.exit_code == 0, res
    assert res.json()["samples"] == 400


def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, code, fragment", [
    ("wrong_features", 4, "model expects (None, 784); x has rows of shape (16,)"),
    ("labels_out_of_range", 4, "model has 10 classes"),
    ("rows_differ", 4, "rows"),
    ("nan", 3, "nan in row 3"),
    ("empty", 3, "empty file"),
    ("missing_key", 3, "no array 'x'"),
    ("csv_without_target", 2, "--target"),
    ("no_data", 2, "no training data"),
    ("no_output", 2, "-o OUT"),
    ("bad_loss", 2, "not a Keras loss"),
    ("bad_monitor", 2, "--monitor val_auc is not logged"),
    ("bad_output", 2, "must end in .keras"),
    ("no_output_dir", 2, "does not exist"),
    ("no_saved_loss", 2, "no saved loss"),
])
def test_bad_input(wtool, tmp_path, samples, case, code, fragment):
    mlp = samples / "mlp.keras"
    out = tmp_path / "o.keras"
    good = np.load(samples / "mlp.npz")
    args: list = []
    if case == "wrong_features":
        args = [mlp, "--data", samples / "nested.npz"]
    elif case == "labels_out_of_range":
        args = [mlp, "--data", _write(tmp_path, "d.npz", x=good["x"], y=good["y"] + 5)]
    elif case == "rows_differ":
        args = [mlp, "--data", _write(tmp_path, "d.npz", x=good["x"], y=good["y"][:10])]
    elif case == "nan":
        x = good["x"].copy()
        x[3, 7] = np.nan
        args = [mlp, "--data", _write(tmp_path, "d.npz", x=x, y=good["y"])]
    elif case == "empty":
        (tmp_path / "e.npz").write_bytes(b"")
        args = [mlp, "--data", tmp_path / "e.npz"]
    elif case == "missing_key":
        args = [mlp, "--data", _write(tmp_path, "d.npz", features=good["x"], y=good["y"])]
    elif case == "csv_without_target":
        (tmp_path / "d.csv").write_text("a,b\n1,2\n")
        args = [mlp, "--data", tmp_path / "d.csv"]
    elif case == "no_data":
        args = [mlp]
    elif case == "no_output":
        res = wtool("train", mlp, "--data", samples / "mlp.npz")
        assert res.exit_code == code and fragment in res.stderr, res
        return
    elif case == "bad_monitor":
        args = [mlp, "--data", samples / "mlp.npz", "--early-stopping", "2", "--monitor", "val_auc", "--val-split", "0.2"]
    elif case == "bad_loss":
        args = [mlp, "--data", samples / "mlp.npz", "--loss", "msee"]
    elif case in ("bad_output", "no_output_dir"):
        target = tmp_path / "o.npz" if case == "bad_output" else tmp_path / "missing" / "o.keras"
        res = wtool("train", mlp, "--data", samples / "mlp.npz", "-o", target)
        assert res.exit_code == code and fragment in res.stderr, res
        return
    elif case == "no_saved_loss":
        model = tmp_path / "raw.keras"
        assert wtool("new", model, "--input-shape", "2", "--layers", "dense:1").exit_code == 0
        args = [model, "--data", samples / "xor.npz"]
    res = wtool("train", *args, "-o", out)
    assert res.exit_code == code, res
    assert fragment in res.stderr, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert not out.exists()


def test_many_tiny_epochs_run(wtool, tmp_path, samples):
    """Per-epoch overhead stays small (timed in bench/, not here): 1,000 epochs of XOR complete."""
    res = train(wtool, samples / "xor.keras", "--data", samples / "xor.npz", "-o", tmp_path / "x.keras",
                "--epochs", "1000", "-q")
    assert res.exit_code == 0, res
    assert res.json()["optimizer_steps"] == 1000 and len(res.json()["history"]) == 1000


def test_import_of_train_command_stays_tf_free():
    code = ("import sys, wtool.cli, wtool.cli.commands.train, wtool.cli.commands.new, wtool.train.loop, wtool.train.data, "
            "wtool.graph.spec; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); "
            "raise SystemExit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fine_tuning_a_trained_model_keeps_the_moments_of_the_weights_it_still_trains(wtool, tmp_path, samples):
    one = tmp_path / "one.keras"
    assert train(wtool, samples / "nested.keras", "--data", samples / "nested.npz", "-o", one, "--seed", "0",
                 "--no-shuffle").exit_code == 0
    res = train(wtool, one, "--data", samples / "nested.npz", "-o", tmp_path / "two.keras", "--freeze", "features",
                "--seed", "0")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["restored_optimizer_steps"] == 13 and doc["optimizer_steps"] == 26
    assert "12 saved optimizer variables belong to weights frozen in this run" in doc["notes"]


def test_tf_keras_2_optimizer_state_is_continued(corpus):
    """A tf.keras 2.4 .h5 names its Adam slots `Adam/dense/kernel/m:0`; they land on the right weights."""
    import h5py

    from wtool.graph.model import import_keras, load_model
    from wtool.train.optim import saved_optimizer
    from wtool.train.saved import read_saved_training, restore_optimizer_state

    path = corpus / "dawn0829__ecgclassification" / "模型_DNN_new.h5"
    if not path.exists():
        pytest.skip("corpus file not present")
    keras = import_keras()
    model = load_model(path)
    saved = read_saved_training(str(path))
    base = saved_optimizer(saved.compile_config)
    opt = keras.optimizers.Adam.from_config(base.get_config())
    trainable = list(model.trainable_variables)
    opt.build(trainable)
    restore_optimizer_state(opt, saved.optimizer_state, base, trainable, trainable)
    assert int(opt.iterations.numpy()) == 30500
    with h5py.File(path, "r") as h5:
        m = np.asarray(h5["optimizer_weights"]["Adam"]["dense_1"]["kernel"]["m:0"])
        v = np.asarray(h5["optimizer_weights"]["Adam"]["dense"]["bias"]["v:0"])
    k1 = next(i for i, w in enumerate(trainable) if w.path.endswith("dense_1/kernel"))
    b0 = next(i for i, w in enumerate(trainable) if w.path.endswith("dense/bias"))
    assert np.array_equal(opt._momentums[k1].numpy(), m)
    assert np.array_equal(opt._velocities[b0].numpy(), v)


def test_keras_1_2_optimizer_state_is_refused_without_reset(wtool, tmp_path, corpus):
    path = corpus / "lyhue1991__keras_tutorial" / "boston_housing_model.h5"
    if not path.exists():
        pytest.skip("corpus file not present")
    rng = np.random.default_rng(0)
    data = _write(tmp_path, "b.npz", x=rng.normal(size=(32, 13)).astype("float32"),
                  y=rng.normal(size=(32, 1)).astype("float32"))
    out = tmp_path / "o.keras"
    res = wtool("train", path, "--data", data, "-o", out)
    assert res.exit_code == 4 and "--reset-optimizer" in res.stderr, res
    assert not out.exists()
    ok = wtool("train", path, "--data", data, "-o", out, "--reset-optimizer")
    assert ok.exit_code == 0, ok


def test_schedules_clip_norm_and_weight_decay(wtool, tmp_path, samples):
    common = [samples / "nested.keras", "--data", samples / "nested.npz", "--epochs", "3", "--seed", "0"]
    res = train(wtool, *common, "-o", tmp_path / "a.keras", "--optimizer", "adamw", "--lr", "0.01",
                "--lr-schedule", "cosine", "--min-lr", "0.001", "--clip-norm", "1.0", "--weight-decay", "0.01")
    assert res.exit_code == 0, res
    doc = res.json()
    lrs = [h["lr"] for h in doc["history"]]
    assert lrs[0] > lrs[1] > lrs[2] and abs(lrs[2] - 0.001) < 1e-6  # cosine over the whole run, down to --min-lr
    assert doc["optimizer"].startswith("adamw (lr CosineDecay(0.01)") and "clip norm 1" in doc["optimizer"]
    step = train(wtool, *common, "-o", tmp_path / "b.keras", "--optimizer", "sgd", "--lr", "0.1",
                 "--lr-schedule", "piecewise", "--boundaries", "13,26", "--lr-values", "0.1,0.01,0.001")
    assert step.exit_code == 0, step
    assert [round(h["lr"], 6) for h in step.json()["history"]] == [0.1, 0.01, 0.001]  # Keras: step <= 13 -> 0.1
    bad = wtool("train", *common, "-o", tmp_path / "c.keras", "--lr-schedule", "piecewise", "--boundaries", "5")
    assert bad.exit_code == 2 and "one more value than boundaries" in bad.stderr
    bad = wtool("train", *common, "-o", tmp_path / "c.keras", "--momentum", "0.9", "--optimizer", "adam")
    assert bad.exit_code == 2 and "--momentum does not apply to Adam" in bad.stderr


def test_resume_refuses_what_would_not_equal_the_run(wtool, tmp_path, samples):
    common = [samples / "nested.keras", "--data", samples / "nested.npz", "--seed", "0"]
    res = wtool("train", *common, "-o", tmp_path / "o.keras", "--resume", "--checkpoint-dir", tmp_path / "none")
    assert res.exit_code == 3 and "does not exist" in res.stderr
    ck = tmp_path / "ck"
    assert train(wtool, *common, "-o", tmp_path / "a.keras", "--checkpoint-dir", ck).exit_code == 0
    res = wtool("train", *common, "-o", tmp_path / "b.keras", "--checkpoint-dir", ck, "--resume", "--epochs", "2",
                "--batch-size", "16")
    assert res.exit_code == 4 and "batch size 32" in res.stderr, res
    assert not (tmp_path / "b.keras").exists()
    # a resumed run may lower the learning rate (what the divergence hint suggests)
    res = train(wtool, *common, "-o", tmp_path / "b.keras", "--checkpoint-dir", ck, "--resume", "--epochs", "2",
                "--lr", "0.0001")
    assert res.exit_code == 0, res
    assert [round(h["lr"], 6) for h in res.json()["history"]] == [0.001, 0.0001]


def test_validation_file_and_input_left_untouched(wtool, tmp_path, samples):
    import hashlib

    d = np.load(samples / "nested.npz")
    val = _write(tmp_path, "val.npz", x=d["x"][:50], y=d["y"][:50])
    before = hashlib.sha256((samples / "nested.keras").read_bytes()).hexdigest()
    res = train(wtool, samples / "nested.keras", "--data", samples / "nested.npz", "--val-data", val, "-o",
                tmp_path / "o.h5", "--seed", "0")
    assert res.exit_code == 0, res
    assert "val_loss" in res.json()["history"][0]
    assert hashlib.sha256((samples / "nested.keras").read_bytes()).hexdigest() == before
    assert load(tmp_path / "o.h5").count_params() == 1268  # .h5 output follows the extension


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_too(tmp_path, samples):
    out = tmp_path / "out.keras"
    ck = tmp_path / "ck"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "wtool", "train", str(samples / "nested.keras"), "--data", str(samples / "nested.npz"),
           "--batch-size", "8", "--epochs", "300", "-o", str(out), "--checkpoint-dir", str(ck), "--checkpoint-every",
           "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "interrupted (SIGTERM)" in rest and f"--checkpoint-dir {ck}" in rest and "--resume" in rest
    assert (ck / "checkpoint").exists() and not out.exists()


def test_freeze_reaches_sublayers_by_their_weight_path_prefix(wtool, tmp_path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.Bidirectional(keras.layers.LSTM(4), name="bidir"),
                              keras.layers.Dense(1, name="out")])
    model.compile(optimizer="sgd", loss="mse")
    model.save(tmp_path / "b.keras")
    rng = np.random.default_rng(0)
    data = _write(tmp_path, "b.npz", x=rng.random((16, 6, 3), dtype=np.float32), y=rng.random((16, 1), dtype=np.float32))
    res = train(wtool, tmp_path / "b.keras", "--data", data, "-o", tmp_path / "o.keras", "--freeze", "bidir/forward*")
    assert res.exit_code == 0, res
    assert res.json()["frozen"]["weights"] == 3 and res.json()["trainable_weights"] == 5
    before = {w.path: w.numpy() for w in load(tmp_path / "b.keras").weights}
    after = {w.path: w.numpy() for w in load(tmp_path / "o.keras").weights}
    moved = {k for k in before if before[k].tobytes() != after[k].tobytes()}
    assert moved and not any("forward" in k for k in moved) and any("backward" in k for k in moved)
