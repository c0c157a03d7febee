"""`wtool train` on models with several inputs and outputs, against Keras's own `model.fit`.

One two-input two-output Functional model (inputs a (3,), b (2,); outputs value (1,) regression and
kind (3,) softmax), compiled per output with loss weights and saved once per module. The same
initial weights are trained by `wtool train` and by `model.fit` (SGD, shuffle off): weights and
every history value (Keras's names: value_loss, kind_accuracy, val_kind_loss, ...) agree within
float tolerance, and `wtool eval` on the result equals `model.evaluate`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.tf

KEYS = ["--x-key", "a=xa", "--x-key", "b=xb", "--y-key", "value=yv", "--y-key", "kind=yk"]
RUN = ["--optimizer", "sgd", "--lr", "0.05", "--batch-size", "16", "--no-shuffle", "--seed", "0"]
LOSSES = {"value": "mse", "kind": "sparse_categorical_crossentropy"}
WEIGHTS = {"value": 0.5, "kind": 2.0}
METRICS = {"value": ["mae"], "kind": ["accuracy"]}


def _keras():
    from wtool.graph.model import import_keras

    return import_keras()


def _arrays(rng, n):
    xa = rng.normal(size=(n, 3)).astype("float32")
    xb = rng.normal(size=(n, 2)).astype("float32")
    yv = (xa @ np.array([1.0, -1.0, 0.5], "float32") + xb[:, :1].T[0]).reshape(-1, 1).astype("float32")
    yk = np.digitize(xa[:, 0] + xb[:, 1], [-0.5, 0.5]).astype("int64")
    return {"xa": xa, "xb": xb, "yv": yv, "yk": yk}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    keras = _keras()
    d = tmp_path_factory.mktemp("two")
    keras.utils.set_random_seed(1)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(1, name="value")(h),
                                 keras.layers.Dense(3, activation="softmax", name="kind")(h)], name="two")
    model.compile(optimizer="sgd", loss=LOSSES, loss_weights=WEIGHTS, metrics=METRICS)
    model.save(d / "two.keras")
    rng = np.random.default_rng(3)
    train, val = _arrays(rng, 64), _arrays(rng, 32)
    np.savez(d / "train.npz", **train)
    np.savez(d / "val.npz", **val)
    return d, train, val


def _fit_with_keras(path, train, val, epochs, loss=LOSSES, weights=WEIGHTS, metrics=METRICS):
    keras = _keras()
    model = keras.saving.load_model(path, compile=False)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, loss_weights=weights, metrics=metrics)
    history = model.fit([train["xa"], train["xb"]], [train["yv"], train["yk"]], batch_size=16, epochs=epochs,
                        shuffle=False, verbose=0, validation_data=([val["xa"], val["xb"]], [val["yv"], val["yk"]]))
    return model, history.history


def _weights(path):
    model = _keras().saving.load_model(path, compile=False)
    return {f"{layer.name}/{w.name}": w.numpy() for layer in model.layers for w in layer.weights}


def _train(*args):
    res = run_cli("train", *args, "--json")
    assert res.exit_code == 0, res
    return res.json()


def _same_history(ours, keras_history, atol=1e-5):
    assert {k for k in ours[0] if k not in ("epoch", "lr", "seconds")} == set(keras_history)
    for key, values in keras_history.items():
        np.testing.assert_allclose([rec[key] for rec in ours], values, rtol=1e-5, atol=atol, err_msg=key)


def test_train_equals_model_fit_then_eval_equals_evaluate(tmp_path, two):
    """The compiled losses, loss weights and metrics are used when none are given."""
    d, train, val = two
    out = tmp_path / "out.keras"
    doc = _train(d / "two.keras", "--data", d / "train.npz", *KEYS, *RUN, "--epochs", "3", "--val-data",
                 d / "val.npz", "--history", tmp_path / "h.json", "-o", out)
    ref, history = _fit_with_keras(d / "two.keras", train, val, 3)
    assert set(history) >= {"value_loss", "kind_loss", "value_mae", "kind_accuracy", "val_kind_loss"}
    _same_history(doc["history"], history)
    assert json.loads((tmp_path / "h.json").read_text()) == doc["history"]
    got = _weights(out)
    for layer in ref.layers:
        for w in layer.weights:
            np.testing.assert_allclose(got[f"{layer.name}/{w.name}"], w.numpy(), rtol=1e-5, atol=1e-6)
    # OUT keeps the per-output compile settings, and eval on it equals Keras's evaluate
    res = run_cli("eval", out, "--data", d / "val.npz", *KEYS, "--json")
    assert res.exit_code == 0, res
    want = ref.evaluate([val["xa"], val["xb"]], [val["yv"], val["yk"]], batch_size=256, verbose=0, return_dict=True)
    assert set(res.json()["metrics"]) == set(want)
    for key, value in want.items():
        assert res.json()["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_per_output_options_equal_the_same_compile_in_keras(tmp_path, two):
    """--loss NAME=LOSS, --loss-weight NAME=W and --metric NAME=METRIC over the saved ones; keys in model order."""
    d, train, val = two
    doc = _train(d / "two.keras", "--data", d / "train.npz", "--x-key", "xa", "--x-key", "xb", "--y-key", "yv",
                 "--y-key", "yk", *RUN, "--epochs", "2", "--val-split", "0.25", "--loss", "value=mae",
                 "--loss-weight", "kind=0.25", "--metric", "kind=accuracy", "--metric", "value=mse",
                 "-o", tmp_path / "o.keras")
    cut = 48
    part = {k: v[:cut] for k, v in train.items()}
    rest = {k: v[cut:] for k, v in train.items()}
    _, history = _fit_with_keras(d / "two.keras", part, rest, 2, loss={**LOSSES, "value": "mae"},
                                 weights={**WEIGHTS, "kind": 0.25}, metrics={"value": ["mse"], "kind": ["accuracy"]})
    _same_history(doc["history"], history)
    assert doc["loss"] == "value=mae x0.5, kind=sparse_categorical_crossentropy x0.25"


def test_freeze_early_stopping_and_resume(tmp_path, two):
    d, _, _ = two
    common = [d / "two.keras", "--data", d / "train.npz", *KEYS, "--optimizer", "sgd", "--lr", "0.05",
              "--batch-size", "16", "--seed", "4", "--val-split", "0.25", "--monitor", "val_kind_loss",
              "--early-stopping", "5"]
    frozen = _train(*common, "--epochs", "1", "--freeze", "hidden", "-o", tmp_path / "f.keras")
    assert frozen["frozen"] == {"weights": 2, "unchanged": True}
    before, after = _weights(d / "two.keras"), _weights(tmp_path / "f.keras")
    assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("hidden/"))
    assert not np.array_equal(before["kind/kernel"], after["kind/kernel"])
    straight = _train(*common, "--epochs", "3", "-o", tmp_path / "s.keras")
    assert straight["monitor"] == "val_kind_loss" and straight["best"] == min(
        h["val_kind_loss"] for h in straight["history"])
    ck = tmp_path / "ck"
    _train(*common, "--epochs", "2", "--checkpoint-dir", ck, "-o", tmp_path / "p.keras")
    resumed = _train(*common, "--epochs", "3", "--checkpoint-dir", ck, "--resume", "-o", tmp_path / "r.keras")
    assert resumed["epochs_run"] == 1 and resumed["history"] == [
        {**h, "seconds": r["seconds"]} for h, r in zip(straight["history"], resumed["history"], strict=True)]
    a, b = _weights(tmp_path / "s.keras"), _weights(tmp_path / "r.keras")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--x-key", "a=xa", "--x-key", "b=nope", "--y-key", "value=yv", "--y-key", "kind=yk"], 3, "no array 'nope'"),
    (["--x-key", "a=xa", "--y-key", "value=yv", "--y-key", "kind=yk"], 4, "no data for the model's input 'b'"),
    (["--x-key", "a=xa", "--x-key", "a=xb", "--y-key", "value=yv", "--y-key", "kind=yk"], 2, "given twice"),
    ([*KEYS, "--loss", "nope=mse"], 2, "the model has no output 'nope'"),
    ([*KEYS, "--loss", "kind=mse", "--loss", "kind=mae"], 2, "--loss kind=...: given twice"),
    ([*KEYS, "--metric", "kind=mse"], 4, "--metric kind=mse: does not fit the output (None, 3)"),
    (["--x-key", "a=xb", "--x-key", "b=xa", "--y-key", "value=yv", "--y-key", "kind=yk"], 4,
     "model expects (None, 3); x has rows of shape (2,)"),
    ([], 4, "the model has 2 inputs (a, b) and 2 outputs (value, kind); name an array for each"),
    ([*KEYS, "--strategy", "mirrored", "--replicas", "2"], 4, "trains models with one input and one output"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, two, args, code, message):
    d, _, _ = two
    res = run_cli("train", d / "two.keras", "--data", d / "train.npz", *args, "-o", tmp_path / "o.keras")
    assert res.exit_code == code, res
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # the error and its hint
    assert not list(tmp_path.iterdir())


def test_a_stream_refuses_named_arrays(tmp_path, two):
    d, _, _ = two
    res = run_cli("train", d / "two.keras", "--data", "-", *KEYS, "-o", tmp_path / "o.keras", input='{"x": [1]}\n')
    assert res.exit_code == 2 and "--data - reads one x and one y per row" in res.stderr, res
    assert not list(tmp_path.iterdir())


def test_csv_column_groups_and_npy_files_train_as_the_npz(tmp_path, two):
    """The same rows from CSV column groups (--x-cols/--y-cols) and from .npy files (--x/--y NAME=FILE) give
    bitwise the weights of the .npz run."""
    d, train, _ = two
    header = "a1,a2,a3,b1,b2,value,kind\n"
    rows = np.concatenate([train["xa"], train["xb"], train["yv"]], axis=1)
    (tmp_path / "t.csv").write_text(header + "".join(
        ",".join(repr(float(v)) for v in row) + f",{k}\n" for row, k in zip(rows, train["yk"], strict=True)))
    for key, arr in train.items():
        np.save(tmp_path / f"{key}.npy", arr)
    common = [d / "two.keras", *RUN, "--epochs", "2"]
    _train(*common, "--data", d / "train.npz", *KEYS, "-o", tmp_path / "npz.keras")
    _train(*common, "--data", tmp_path / "t.csv", "--x-cols", "a=a1,a2,a3", "--x-cols", "b=3-4",
           "--y-cols", "value=value", "--y-cols", "kind=kind", "-o", tmp_path / "csv.keras")
    _train(*common, "--x", f"a={tmp_path / 'xa.npy'}", "--x", f"b={tmp_path / 'xb.npy'}",
           "--y", f"value={tmp_path / 'yv.npy'}", "--y", f"kind={tmp_path / 'yk.npy'}", "-o", tmp_path / "npy.keras")
    want = _weights(tmp_path / "npz.keras")
    for other in ("csv.keras", "npy.keras"):
        got = _weights(tmp_path / other)
        assert all(got[k].tobytes() == want[k].tobytes() for k in want), other
