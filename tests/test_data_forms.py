"""The data people have (issue 15 §4): a training CSV used as-is for inference (--target/--drop),
flat CSV rows reshaped for train, string labels in a CSV. Values checked against Keras."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("data_forms")]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A CSV with an id column, 4 features and a label, and a Keras model for the features."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("forms")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["id,a,b,c,d,label"] + [",".join([str(i), *(repr(float(v)) for v in x[i]), str(y[i])])
                                    for i in range(len(x))]
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(d / "m.keras")
    return d, x, y, model


def test_infer_takes_the_training_csv_with_target_and_drop(table):
    d, x, _y, model = table
    res = run_cli("infer", d / "m.keras", d / "train.csv")
    assert res.exit_code == 4
    assert "input rows have shape (6,)" in res.stderr and "--columns" in res.stderr and "--target" in res.stderr
    res = run_cli("infer", d / "m.keras", d / "train.csv", "--target", "label", "--drop", "id", "-o", d / "p.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(d / "p.npy"), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    # a file of new rows without the label column: --target is simply not there
    rows = (d / "train.csv").read_text().splitlines()
    (d / "new.csv").write_text("\n".join(",".join(r.split(",")[:5]) for r in rows) + "\n")
    res = run_cli("infer", d / "m.keras", d / "new.csv", "--target", "label", "--drop", "id", "-o", d / "q.npy")
    assert res.exit_code == 0, res
    np.testing.assert_array_equal(np.load(d / "q.npy"), np.load(d / "p.npy"))
    res = run_cli("infer", d / "m.keras", d / "train.csv", "--drop", "nope")
    assert res.exit_code == 2 and "no column 'nope'" in res.stderr


@pytest.fixture(scope="module")
def animals(table):
    """The same features with string labels (cat, dog, emu), and a fresh 3-class model."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    d, x, _y, _model = table
    names = np.array(["cat", "dog", "emu"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)]
    lines = ["id,a,b,c,d,animal"] + [",".join([str(i), *(repr(float(v)) for v in x[i]), names[i]])
                                     for i in range(len(x))]
    (d / "animals.csv").write_text("\n".join(lines) + "\n")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, activation="softmax", name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(d / "m3.keras")
    return d, x, names


def test_string_labels_round_trip(animals):
    from wtool.graph.model import import_keras
    from wtool.store import open_model

    keras = import_keras()
    d, x, names = animals
    for out in ("t3.keras", "t3.h5"):
        res = run_cli("train", d / "m3.keras", "--data", d / "animals.csv", "--target", "animal", "--drop", "id",
                      "-o", d / out, "--epochs", "3", "--seed", "0", "--lr", "0.05", "-q")
        assert res.exit_code == 0, res
        with open_model(d / out) as mf:
            assert mf.class_names == ["cat", "dog", "emu"]
    trained = keras.saving.load_model(d / "t3.keras")
    expected = np.array(["cat", "dog", "emu"])[trained.predict(x, verbose=0).argmax(axis=1)]
    for out in ("t3.keras", "t3.h5"):
        res = run_cli("infer", d / out, d / "animals.csv", "--target", "animal", "--drop", "id", "--argmax",
                      "-o", d / "labels.csv")
        assert res.exit_code == 0, res
        rows = [line.split(",") for line in (d / "labels.csv").read_text().splitlines()]
        assert rows[0] == ["class", "label"]
        assert [r[1] for r in rows[1:]] == list(expected)
    # an .npy output holds the one array asked for: the class indices
    res = run_cli("infer", d / "t3.keras", d / "animals.csv", "--target", "animal", "--drop", "id", "--argmax",
                  "-o", d / "classes.npy")
    assert res.exit_code == 0, res
    np.testing.assert_array_equal(np.load(d / "classes.npy"), trained.predict(x, verbose=0).argmax(axis=1))
    # eval decodes the same way: its numbers equal Keras's evaluate on the encoded labels
    res = run_cli("eval", d / "t3.keras", "--data", d / "animals.csv", "--target", "animal", "--drop", "id", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    y = np.searchsorted(["cat", "dog", "emu"], names)
    want = trained.evaluate(x, y, verbose=0, return_dict=True)
    assert abs(doc["metrics"]["loss"] - want["loss"]) < 1e-5, doc["metrics"]
    assert "emu" in res.stdout
    # continued training on rows without 'cat' keeps the saved class numbers
    (d / "no_cat.csv").write_text("\n".join(line for line in (d / "animals.csv").read_text().splitlines()
                                           if not line.endswith(",cat")) + "\n")
    res = run_cli("train", d / "t3.keras", "--data", d / "no_cat.csv", "--target", "animal", "--drop", "id",
                  "-o", d / "t4.keras", "--seed", "0", "-q")
    assert res.exit_code == 0, res
    with open_model(d / "t4.keras") as mf:
        assert mf.class_names == ["cat", "dog", "emu"]


def test_string_label_errors(animals):
    d, _x, _names = animals
    text = (d / "animals.csv").read_text().splitlines()
    (d / "cow.csv").write_text("\n".join([*text, "99,0.1,0.2,0.3,0.4,cow"]) + "\n")
    res = run_cli("train", d / "m3.keras", "--data", d / "animals.csv", "--target", "animal", "--drop", "id",
                  "-o", d / "e3.keras", "--epochs", "1", "-q")  # its own: tests may run on other workers
    assert res.exit_code == 0, res
    res = run_cli("train", d / "e3.keras", "--data", d / "cow.csv", "--target", "animal", "--drop", "id",
                  "-o", d / "x.keras")
    assert res.exit_code == 4 and "'cow' are not among the model's classes (cat, dog, emu)" in res.stderr
    (d / "empty.csv").write_text("\n".join([*text[:5], "99,0.1,0.2,0.3,0.4,", *text[5:]]) + "\n")
    res = run_cli("train", d / "m3.keras", "--data", d / "empty.csv", "--target", "animal", "--drop", "id",
                  "-o", d / "x.keras")
    assert res.exit_code == 3 and "line 6, column 'animal': the label is empty" in res.stderr, res
    (d / "hole.csv").write_text("\n".join([*text[:3], "99,0.1,,0.3,0.4,dog", *text[3:]]) + "\n")
    res = run_cli("train", d / "m3.keras", "--data", d / "hole.csv", "--target", "animal", "--drop", "id",
                  "-o", d / "x.keras")
    assert res.exit_code == 3 and "line 4, column 'b': the cell is empty" in res.stderr, res
    assert not (d / "x.keras").exists()
    res = run_cli("infer", d / "m3.keras", d / "animals.csv", "--target", "animal", "--drop", "id", "--argmax",
                  "--labels")
    assert res.exit_code == 2 and "no class names are saved with the model" in res.stderr


def test_train_reshapes_flat_csv_rows_like_npz(table):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d, x, y, _model = table
    keras.utils.set_random_seed(0)
    grid = keras.Sequential([keras.Input((2, 2), name="g"), keras.layers.Flatten(),
                             keras.layers.Dense(2, activation="softmax", name="out")])
    grid.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    grid.save(d / "grid.keras")
    np.savez(d / "grid.npz", x=x.reshape(-1, 2, 2), y=y)
    common = ["--epochs", "2", "--seed", "4", "-q"]
    res = run_cli("train", d / "grid.keras", "--data", d / "train.csv", "--target", "label", "--drop", "id",
                  "-o", d / "g_csv.keras", *common)
    assert res.exit_code == 0, res
    res = run_cli("train", d / "grid.keras", "--data", d / "grid.npz", "-o", d / "g_npz.keras", *common)
    assert res.exit_code == 0, res
    assert run_cli("diff", d / "g_csv.keras", d / "g_npz.keras").exit_code == 0  # bitwise the same training
