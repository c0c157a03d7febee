"""`wtool eval`: the numbers equal Keras's own `model.evaluate` on the same file, classifier reports, gates, plots."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("eval")]


def _keras():
    from wtool.graph.model import import_keras

    return import_keras()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A 4-class Functional classifier with Dropout and BatchNormalization (training=False matters), trained a bit."""
    keras = _keras()
    keras.utils.set_random_seed(3)
    tmp = tmp_path_factory.mktemp("eval_cls")
    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    out = keras.layers.Dense(4, activation="softmax", name="species")(h)
    model = keras.Model(inp, out, name="cls")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype("float32")
    y = (np.argmax(x[:, :4], axis=1)).astype("int64")
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    path = tmp / "cls.keras"
    model.save(path)
    x_test = rng.normal(size=(203, 6)).astype("float32")  # 203: the last batch is partial
    y_test = np.argmax(x_test[:, :4], axis=1).astype("int64")
    np.savez(tmp / "test.npz", x=x_test, y=y_test)
    np.save(tmp / "x.npy", x_test)
    np.save(tmp / "y.npy", y_test)
    reference = keras.saving.load_model(path)
    expected = reference.evaluate(x_test, y_test, verbose=0, return_dict=True)
    predicted = np.argmax(reference.predict(x_test, verbose=0), axis=1)
    (tmp / "labels.txt").write_text("setosa\nversicolor\nvirginica\nother\n")
    return {"path": path, "dir": tmp, "expected": expected, "predicted": predicted, "y": y_test}


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """A regression MLP with an L2 regularizer (model.losses count in the loss), saved as legacy .h5, data in a CSV."""
    keras = _keras()
    keras.utils.set_random_seed(5)
    tmp = tmp_path_factory.mktemp("eval_reg")
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01)),
                              keras.layers.Dense(1, name="value")], name="reg")
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1).astype("float32")
    path = tmp / "reg.h5"
    model.save(path)
    rows = ["a,b,c,target"] + [f"{a!r},{b!r},{c!r},{t!r}" for (a, b, c), t in zip(x.tolist(), y.tolist(), strict=True)]
    (tmp / "test.csv").write_text("\n".join(rows) + "\n")
    reference = keras.saving.load_model(path, compile=False)  # Keras's .h5 loader fails on its own "mse" config
    reference.compile(loss="mse", metrics=["mae"])
    expected = reference.evaluate(x, y, verbose=0, return_dict=True)
    reference.compile(loss="mae", metrics=["mse", "mape"])
    expected_override = reference.evaluate(x, y, verbose=0, return_dict=True)
    return {"path": path, "dir": tmp, "expected": expected, "override": expected_override}


def _eval(wtool, *args, code=0):
    res = wtool("eval", *args, "--json")
    assert res.exit_code == code, res
    return res.json()


def test_equals_model_evaluate_with_confusion_matrix_and_per_class_scores(wtool, classifier):
    doc = _eval(wtool, classifier["path"], "--data", classifier["dir"] / "test.npz", "--batch-size", "32")
    exp = classifier["expected"]
    assert doc["rows"] == 203
    assert doc["metrics"]["loss"] == pytest.approx(exp["loss"], rel=1e-5)
    assert doc["metrics"]["accuracy"] == pytest.approx(exp["accuracy"], abs=1e-6)
    (c,) = doc["classification"]
    assert c["output"] == "species"
    y, pred = classifier["y"], classifier["predicted"]
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (y, pred), 1)
    assert c["confusion_matrix"] == cm.tolist()
    assert c["accuracy"] == pytest.approx(float(np.mean(y == pred)))
    for k, row in enumerate(c["per_class"]):
        tp = int(np.sum((y == k) & (pred == k)))
        precision = tp / max(1, int(np.sum(pred == k)))
        recall = tp / max(1, int(np.sum(y == k)))
        assert row["support"] == int(np.sum(y == k))
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    assert doc["passed"] is True and doc["gates"] == []


def test_npy_pair_any_batch_size_same_numbers_and_labels(wtool, classifier):
    doc = _eval(wtool, classifier["path"], "--x", classifier["dir"] / "x.npy", "--y", classifier["dir"] / "y.npy",
                "--batch-size", "7", "--labels", classifier["dir"] / "labels.txt")
    assert doc["metrics"]["loss"] == pytest.approx(classifier["expected"]["loss"], rel=1e-5)
    assert doc["classification"][0]["classes"] == ["setosa", "versicolor", "virginica", "other"]


def test_text_report_shows_the_confusion_matrix_table(wtool, classifier):
    res = wtool("eval", classifier["path"], "--data", classifier["dir"] / "test.npz", "--labels",
                classifier["dir"] / "labels.txt")
    assert res.exit_code == 0, res
    assert "confusion matrix (rows: true, columns: predicted)" in res.stdout
    assert "virginica" in res.stdout and "macro avg" in res.stdout
    assert f"{classifier['expected']['accuracy']:.4f}" in res.stdout


def test_regression_from_csv_with_regularization_loss_and_h5(wtool, regressor):
    doc = _eval(wtool, regressor["path"], "--data", regressor["dir"] / "test.csv", "--target", "target")
    exp = regressor["expected"]
    assert set(doc["metrics"]) == {"loss", "mae"}
    assert doc["metrics"]["loss"] == pytest.approx(exp["loss"], rel=1e-5)
    assert doc["metrics"]["mae"] == pytest.approx(exp["mae"], rel=1e-5)
    assert doc["classification"] == []


def test_loss_and_metric_options_replace_the_saved_ones(wtool, regressor):
    doc = _eval(wtool, regressor["path"], "--data", regressor["dir"] / "test.csv", "--target", "target",
                "--loss", "mae", "--metric", "mse", "--metric", "mape")
    exp = regressor["override"]
    assert set(doc["metrics"]) == {"loss", "mse", "mape"}
    for key in ("loss", "mse", "mape"):
        assert doc["metrics"][key] == pytest.approx(exp[key], rel=1e-5)


def test_fail_under_exits_1_with_the_report_and_the_failed_gate(wtool, classifier):
    acc = classifier["expected"]["accuracy"]
    res = wtool("eval", classifier["path"], "--data", classifier["dir"] / "test.npz", "--json",
                "--fail-under", f"accuracy={acc + 0.01}", "--fail-above", "loss=100")
    assert res.exit_code == 1, res
    doc = res.json()
    assert doc["passed"] is False
    assert [(g["metric"], g["passed"]) for g in doc["gates"]] == [("accuracy", False), ("loss", True)]
    ok = _eval(wtool, classifier["path"], "--data", classifier["dir"] / "test.npz",
               "--fail-under", f"accuracy={acc - 0.01}", "--fail-under", "macro_f1=0")
    assert ok["passed"] is True


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--fail-under", "loss=0.5"], 2, "use --fail-above loss=0.5"),
    (["--fail-above", "accuracy=0.5"], 2, "use --fail-under accuracy=0.5"),
    (["--fail-under", "accuracy"], 2, "METRIC=VALUE"),
    (["--fail-under", "auc=0.5"], 2, "no metric 'auc'"),
    (["--plot", "cm.gif"], 2, "unsupported picture format"),
    (["--labels", "two.txt"], 4, "--labels has 2 names; the model has 4 classes"),
    (["--loss", "nonsense_loss"], 2, "--loss"),
])
def test_bad_options_one_line_and_exit_code(wtool, classifier, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.txt").write_text("a\nb\n")
    res = wtool("eval", classifier["path"], "--data", classifier["dir"] / "test.npz", *args)
    assert res.exit_code == code, res
    assert message in res.stderr
    assert "Traceback" not in res.stderr and list(tmp_path.iterdir()) == [tmp_path / "two.txt"]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_valid_png_of_the_documented_size(wtool, classifier, tmp_path):
    import matplotlib.image

    from wtool.cli.plot import DPI, FIG_INCHES

    target = tmp_path / "confusion.png"
    doc = _eval(wtool, classifier["path"], "--data", classifier["dir"] / "test.npz", "--plot", target)
    assert doc["plot"] == str(target)
    assert _png_size(target) == (int(FIG_INCHES[0] * DPI), int(FIG_INCHES[1] * DPI))
    pixels = matplotlib.image.imread(target)  # decodes: a whole, valid image
    assert pixels.shape[:2] == (600, 800) and pixels.std() > 0


def test_plot_without_matplotlib_says_how_to_install_before_evaluating(wtool, classifier, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    res = wtool("eval", classifier["path"], "--data", classifier["dir"] / "test.npz", "--plot", tmp_path / "c.png")
    assert res.exit_code == 2, res
    assert "--plot needs matplotlib" in res.stderr and "wtool[plot]" in res.stderr
    assert not (tmp_path / "c.png").exists()


def test_model_that_does_not_fit_the_data_is_exit_4(wtool, classifier, regressor):
    res = wtool("eval", classifier["path"], "--data", regressor["dir"] / "test.csv", "--target", "target")
    assert res.exit_code == 4, res
    assert "model expects (None, 6)" in res.stderr


def test_unknown_metric_is_a_usage_error(wtool, classifier):
    res = wtool("eval", classifier["path"], "--data", classifier["dir"] / "test.npz", "--metric", "accurasy")
    assert res.exit_code == 2, res
    assert res.stderr.startswith("error: --loss/--metric:") and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """A two-input (a, b), two-output (value: regression, kind: 3 classes) Functional model, compiled per output."""
    keras = _keras()
    keras.utils.set_random_seed(7)
    tmp = tmp_path_factory.mktemp("eval_two")
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu", name="h")(keras.layers.Concatenate(name="cat")([a, b]))
    value = keras.layers.Dense(1, name="value")(h)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(h)
    model = keras.Model([a, b], [value, kind], name="two")
    model.compile(optimizer="adam", loss={"value": "mse", "kind": "sparse_categorical_crossentropy"},
                  loss_weights={"value": 0.5, "kind": 1.0}, metrics={"value": ["mae"], "kind": ["accuracy"]})
    path = tmp / "two.keras"
    model.save(path)
    rng = np.random.default_rng(2)
    # 96 rows: whole batches of 32 for model.evaluate, whose per-output losses weight a batch by its static size
    arrays = {"xa": rng.normal(size=(96, 3)).astype("float32"), "xb": rng.normal(size=(96, 2)).astype("float32"),
              "y1": rng.normal(size=(96, 1)).astype("float32"), "y2": rng.integers(0, 3, 96)}
    np.savez(tmp / "test.npz", **arrays)
    table = np.column_stack([arrays["xa"], arrays["xb"], arrays["y1"], arrays["y2"]])
    lines = ["a0,a1,a2,b0,b1,value,kind"] + [",".join(repr(float(v)) for v in row[:6]) + f",{int(row[6])}"
                                             for row in table]
    (tmp / "test.csv").write_text("\n".join(lines) + "\n")
    reference = keras.saving.load_model(path)
    x, y = [arrays["xa"], arrays["xb"]], [arrays["y1"], arrays["y2"]]
    expected = reference.evaluate(x, y, verbose=0, return_dict=True)
    reference.compile(loss={"value": "mae", "kind": "sparse_categorical_crossentropy"},
                      loss_weights={"value": 2.0, "kind": 1.0}, metrics={"kind": ["accuracy"]})
    override = reference.evaluate(x, y, verbose=0, return_dict=True)
    kind_pred = np.argmax(reference.predict(x, verbose=0)[1], axis=1)
    return {"path": path, "npz": tmp / "test.npz", "csv": tmp / "test.csv", "expected": expected, "override": override,
            "kind_pred": kind_pred, "y2": arrays["y2"]}


def test_two_inputs_two_outputs_by_name_equal_model_evaluate(wtool, two_by_two):
    doc = _eval(wtool, two_by_two["path"], "--data", two_by_two["npz"], "--x-key", "b=xb", "--x-key", "a=xa",
                "--y-key", "kind=y2", "--y-key", "value=y1", "--batch-size", "16")
    exp = two_by_two["expected"]
    assert set(doc["metrics"]) == set(exp)  # loss, value_loss, kind_loss, value_mae, kind_accuracy: Keras's names
    for key, value in exp.items():
        assert doc["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    (c,) = doc["classification"]
    assert c["output"] == "kind"
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (two_by_two["y2"], two_by_two["kind_pred"]), 1)
    assert c["confusion_matrix"] == cm.tolist()


def test_two_outputs_loss_per_output_and_loss_weight_in_model_order(wtool, two_by_two):
    doc = _eval(wtool, two_by_two["path"], "--data", two_by_two["npz"], "--x-key", "xa", "--x-key", "xb",
                "--y-key", "y1", "--y-key", "y2", "--loss", "value=mae", "--loss", "kind=sparse_categorical_crossentropy",
                "--loss-weight", "value=2", "--metric", "kind=accuracy")
    for key, value in two_by_two["override"].items():
        assert doc["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_two_inputs_from_csv_column_groups(wtool, two_by_two):
    doc = _eval(wtool, two_by_two["path"], "--data", two_by_two["csv"], "--x-cols", "a=a0,a1,a2", "--x-cols", "b=3-4",
                "--y-cols", "value=value", "--y-cols", "kind=6")
    for key, value in two_by_two["expected"].items():
        assert doc["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    res = wtool("eval", two_by_two["path"], "--data", two_by_two["csv"], "--x-cols", "a=a0,a1,a2",
                "--y-cols", "value=value", "--y-cols", "kind=kind")
    assert res.exit_code == 4 and "no data for the model's input 'b'" in res.stderr, res


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], 3, "no array 'x' (it has: xa, xb, y1, y2)"),
    (["--x-key", "xa", "--y-key", "y1"], 4, "the model has 2 input(s) (a, b) and 2 output(s) (value, kind)"),
    (["--x-key", "a=xa", "--y-key", "value=y1", "--y-key", "kind=y2"], 4, "no data for the model's input 'b'"),
    (["--x-key", "c=xa", "--x-key", "b=xb", "--y-key", "y1", "--y-key", "y2"], 2, "the model has no input 'c'"),
    (["--x-key", "a=xa", "--x-key", "xb", "--y-key", "y1", "--y-key", "y2"], 2, "give every one as NAME=VALUE"),
])
def test_two_inputs_bad_naming(wtool, two_by_two, args, code, message):
    res = wtool("eval", two_by_two["path"], "--data", two_by_two["npz"], *args)
    assert res.exit_code == code, res
    assert message in res.stderr and "Traceback" not in res.stderr


def test_model_with_a_list_of_one_input_runs_without_keras_warnings(wtool, tmp_path, classifier, recwarn):
    """keras.Model(inputs=[x], ...) (as transfer --replace-head writes) is called with a list, as it was built."""
    keras = _keras()
    inp = keras.Input((6,), name="features")
    model = keras.Model([inp], keras.layers.Dense(4, activation="softmax", name="head")(inp))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "listed.keras")
    data = np.load(classifier["dir"] / "test.npz")
    expected = model.evaluate([data["x"]], data["y"], verbose=0, return_dict=True)
    res = wtool("eval", tmp_path / "listed.keras", "--data", classifier["dir"] / "test.npz", "--json")
    assert res.exit_code == 0, res
    assert res.json()["metrics"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert not [w for w in recwarn if "structure of `inputs`" in str(w.message)]


def test_plot_draws_every_classifier_output(wtool, tmp_path):
    """Two classifier outputs (and a regression one, not drawn): one panel each in the picture, named and
    with its own counts (the SVG keeps its words as text)."""
    import re

    keras = _keras()
    keras.utils.set_random_seed(3)
    x = keras.Input((3,), name="x")
    model = keras.Model(x, [keras.layers.Dense(2, activation="softmax", name="left")(x),
                            keras.layers.Dense(1, name="level")(x),
                            keras.layers.Dense(3, activation="softmax", name="right")(x)])
    model.compile(loss={"left": "sparse_categorical_crossentropy", "level": "mse",
                        "right": "sparse_categorical_crossentropy"})
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3)).astype("float32"), a=rng.integers(0, 2, 40),
             v=rng.normal(size=(40, 1)).astype("float32"), b=rng.integers(0, 3, 40))
    target = tmp_path / "cm.svg"
    doc = _eval(wtool, tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--x-key", "x", "--y-key", "left=a",
                "--y-key", "level=v", "--y-key", "right=b", "--plot", target)
    assert doc["plot"] == str(target) and [c["output"] for c in doc["classification"]] == ["left", "right"]
    words = re.findall(r"<text[^>]*>([^<]*)</text>", target.read_text())
    for c in doc["classification"]:
        assert f"{c['output']}: accuracy {c['accuracy']:.4f}" in words
    counts = sorted(int(w) for w in words if w.isdigit())
    cells = sorted(v for c in doc["classification"] for row in c["confusion_matrix"] for v in row)
    assert all(counts.count(v) >= cells.count(v) for v in set(cells))  # 4 + 9 cells written (ticks may add digits)
    png = tmp_path / "cm.png"
    _eval(wtool, tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--x-key", "x", "--y-key", "left=a",
          "--y-key", "level=v", "--y-key", "right=b", "--plot", png)
    assert _png_size(png) == (800, 600)


def test_val_split_on_arrays_is_the_rows_fit_validates_on(wtool, classifier):
    """--val-split F on arrays: the last rows that Keras's fit(validation_split=F) holds out, counted as Keras
    counts them (203 rows, F=0.35: fit trains on floor(131.95) = 131 rows and validates on 72, not round(71.05))."""
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    keras = _keras()
    with np.load(classifier["dir"] / "test.npz") as z:
        x, y = z["x"], z["y"]
    _, (kx, ky) = train_validation_split((x, y), validation_split=0.35)
    assert len(kx) == 72
    want = keras.saving.load_model(classifier["path"]).evaluate(kx, ky, verbose=0, return_dict=True)
    doc = _eval(wtool, classifier["path"], "--data", classifier["dir"] / "test.npz", "--val-split", "0.35")
    assert doc["rows"] == 72
    assert doc["metrics"]["loss"] == pytest.approx(want["loss"], rel=1e-5)
