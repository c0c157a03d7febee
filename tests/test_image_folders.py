"""Folders of images (DIR/<class>/*.png|jpg) for train, eval and infer, read by Keras's own
image_dataset_from_directory: checked against model.fit / model.evaluate / model.predict on the
dataset Keras makes from the same folder."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("image_folders")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, base in (("cat", 60), ("dog", 190)):
        (d / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(rng.normal(base, 40, size=(20, 18, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(d / "imgs" / name / f"{name}{i}.{'jpg' if i == 3 else 'png'}")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3), name="image"), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(d / "cnn.keras")
    ds = keras.utils.image_dataset_from_directory(d / "imgs", image_size=(16, 16), batch_size=None, shuffle=False,
                                                  verbose=False)
    x = np.stack([im for im, _ in ds.as_numpy_iterator()])
    y = np.array([lab for _, lab in ds.as_numpy_iterator()])
    np.savez(d / "imgs.npz", x=x, y=y)
    return d, keras, x, y, [p.split("imgs/", 1)[1] for p in ds.file_paths]


def test_train_eval_infer_on_a_folder(folder):
    d, keras, x, y, files = folder
    common = ["--epochs", "3", "--seed", "0", "--lr", "0.01", "-q"]
    res = run_cli("train", d / "cnn.keras", "--data", d / "imgs", "-o", d / "t.keras", *common)
    assert res.exit_code == 0, res
    # the same training on Keras's own arrays of the folder gives bitwise the same weights
    res = run_cli("train", d / "cnn.keras", "--data", d / "imgs.npz", "-o", d / "t_npz.keras", *common)
    assert res.exit_code == 0, res
    assert run_cli("diff", d / "t.keras", d / "t_npz.keras").exit_code == 0
    trained = keras.saving.load_model(d / "t.keras")
    # infer: one row per file, named, equal to model.predict on Keras's dataset
    res = run_cli("infer", d / "t.keras", d / "imgs", "-o", d / "p.csv")
    assert res.exit_code == 0, res
    rows = [line.split(",") for line in (d / "p.csv").read_text().splitlines()]
    assert rows[0] == ["file", "out_0", "out_1"]
    assert [r[0] for r in rows[1:]] == files
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(got, trained.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    # the class names were saved with the model: --argmax prints them
    res = run_cli("infer", d / "t.keras", d / "imgs" / "dog", "--argmax", "--json")
    assert res.exit_code == 0, res
    labels = [line for line in res.stdout.splitlines() if line.startswith("{")]
    want = np.array(["cat", "dog"])[trained.predict(x[y == 1], verbose=0).argmax(axis=1)]
    assert [eval_json(line)["label"] for line in labels] == list(want)
    assert [eval_json(line)["file"] for line in labels] == [f.split("/", 1)[1] for f in files if f.startswith("dog")]
    # eval: model.evaluate's numbers, classes named after the folders
    res = run_cli("eval", d / "t.keras", "--data", d / "imgs", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    want_eval = trained.evaluate(x, y, verbose=0, return_dict=True)
    assert abs(doc["metrics"]["loss"] - want_eval["loss"]) < 1e-5
    assert "dog" in res.stdout


def eval_json(line):
    import json

    return json.loads(line)


def test_folder_errors(folder):
    d, *_ = folder
    (d / "one" / "cat").mkdir(parents=True)
    (d / "empty").mkdir()
    import shutil

    for p in (d / "imgs" / "cat").iterdir():
        shutil.copy(p, d / "one" / "cat" / p.name)
    res = run_cli("train", d / "cnn.keras", "--data", d / "one", "-o", d / "x.keras")
    assert res.exit_code == 3 and "a classifier needs two" in res.stderr, res
    res = run_cli("train", d / "cnn.keras", "--data", d / "empty", "-o", d / "x.keras")
    assert res.exit_code == 3 and "no images" in res.stderr, res
    res = run_cli("infer", d / "cnn.keras", d / "imgs", "--image-size", "big")
    assert res.exit_code == 2 and "HEIGHTxWIDTH" in res.stderr
    res = run_cli("infer", d / "cnn.keras", d / "imgs", "--color-mode", "grayscale")
    assert res.exit_code == 4 and "the model takes 3" in res.stderr
    res = run_cli("infer", d / "cnn.keras", d / "imgs", "--image-size", "20x18")
    assert res.exit_code == 4 and "model expects (None, 16, 16, 3)" in res.stderr
    assert not (d / "x.keras").exists()


def test_val_split_of_a_folder_is_keras_shuffled_split(folder):
    """--val-split on a folder: Keras's image_dataset_from_directory(validation_split, subset, seed) files, so
    both classes validate (not the last class folder), the same for the same seed, in train and in eval."""
    d, keras, *_ = folder
    seed, split = 2, "0.5"
    kds = keras.utils.image_dataset_from_directory(d / "imgs", image_size=(16, 16), batch_size=None, seed=seed,
                                                   validation_split=0.5, subset="validation", verbose=False)
    pairs = list(kds.as_numpy_iterator())  # one pass: Keras reshuffles its files' order on every pass
    kx, ky = np.stack([im for im, _ in pairs]), np.array([lab for _, lab in pairs])
    assert sorted(set(ky)) == [0, 1]  # the seed's Keras split holds both classes
    res = run_cli("train", d / "cnn.keras", "--data", d / "imgs", "-o", d / "vs.keras", "--val-split", split,
                  "--seed", str(seed), "--epochs", "2", "--lr", "0.01", "--json")
    assert res.exit_code == 0, res
    val_loss = res.json()["history"][-1]["val_loss"]
    trained = keras.saving.load_model(d / "vs.keras")
    want = trained.evaluate(kx, ky, verbose=0, return_dict=True)
    # train validated on Keras's validation files: its last val_loss is model.evaluate on them
    assert abs(val_loss - want["loss"]) < 1e-5
    for _ in range(2):  # deterministic
        res = run_cli("eval", d / "vs.keras", "--data", d / "imgs", "--val-split", split, "--seed", str(seed), "--json")
        assert res.exit_code == 0, res
        doc = res.json()
        assert doc["rows"] == 4
        assert abs(doc["metrics"]["loss"] - want["loss"]) < 1e-5
        supports = [c["support"] for c in doc["classification"][0]["per_class"]]
        assert supports == [int((ky == 0).sum()), int((ky == 1).sum())] and min(supports) > 0
    res = run_cli("eval", d / "vs.keras", "--data", d / "imgs", "--val-split", split)
    assert res.exit_code == 2 and "--seed" in res.stderr
    assert "seed=SEED" in run_cli("train", "--help").stdout
