"""Folders of text files (DIR/<class>/*.txt) for train, eval and infer, read by Keras's own
text_dataset_from_directory, on a model that takes strings (TextVectorization inside): checked against
model.fit / model.evaluate / model.predict on the dataset Keras makes from the same folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("text_folders")]

GOOD = ["good fun", "a great film", "great and good", "I loved it", "loved the good music"]
BAD = ["bad film", "an awful plot", "bad and dull", "I hated it", "hated the awful music"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("texts")
    for name, lines in (("bad", BAD), ("good", GOOD)):
        (d / "texts" / name).mkdir(parents=True)
        for i, line in enumerate(lines):
            (d / "texts" / name / f"{i}.txt").write_text(line, encoding="utf-8")
    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=6, name="vectorize")
    vectorize.adapt(GOOD + BAD)
    # shape (): one string per row (the sample model in sample_models/ takes (1,))
    model = keras.Sequential([keras.Input((), dtype="string", name="text"), vectorize,
                              keras.layers.Embedding(30, 4, name="embed"), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.save(d / "text.keras")
    return d, keras


def dataset(keras, path, batch_size=None, max_length=None):
    return keras.utils.text_dataset_from_directory(path, batch_size=batch_size, shuffle=False, verbose=False,
                                                   max_length=max_length)


def test_eval_and_infer_equal_keras(folder):
    d, keras = folder
    model = keras.saving.load_model(d / "text.keras")
    for extra, max_length in (([], None), (["--max-length", "4"], 4)):
        res = run_cli("eval", d / "text.keras", "--data", d / "texts", "--batch-size", "3", "--json", *extra)
        assert res.exit_code == 0, res
        doc = res.json()
        want = model.evaluate(dataset(keras, d / "texts", 3, max_length), verbose=0, return_dict=True)
        assert doc["rows"] == 10
        assert abs(doc["metrics"]["loss"] - want["loss"]) < 1e-6
        assert abs(doc["metrics"]["accuracy"] - want["accuracy"]) < 1e-6
    assert "--max-length" in run_cli("eval", "--help").stdout
    # infer: one row per file in Keras's order, equal to model.predict on Keras's dataset
    res = run_cli("infer", d / "text.keras", d / "texts", "-o", d / "p.csv")
    assert res.exit_code == 0, res
    rows = [line.split(",") for line in (d / "p.csv").read_text().splitlines()]
    assert rows[0] == ["file", "out_0", "out_1"]
    assert [r[0] for r in rows[1:]] == [f"{c}/{i}.txt" for c in ("bad", "good") for i in range(5)]
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    want_p = model.predict(dataset(keras, d / "texts", 4).map(lambda x, y: x), verbose=0)
    np.testing.assert_allclose(got, want_p, rtol=1e-5, atol=1e-6)


def test_train_equals_keras_fit(folder):
    d, keras = folder
    res = run_cli("train", d / "text.keras", "--data", d / "texts", "-o", d / "t.keras", "--epochs", "3",
                  "--batch-size", "4", "--no-shuffle", "--seed", "0", "-q")
    assert res.exit_code == 0, res
    before = keras.saving.load_model(d / "text.keras")
    after = keras.saving.load_model(d / "t.keras")
    # Keras's own fit on its dataset of the folder, in file order, batches of 4, the same Adam(0.05)
    reference = keras.saving.load_model(d / "text.keras")
    reference.fit(dataset(keras, d / "texts", 4), epochs=3, verbose=0, shuffle=False)
    changed = 0
    for w_before, w_after, w_ref in zip(before.weights, after.weights, reference.weights, strict=True):
        changed += not np.array_equal(w_before.numpy(), w_after.numpy())
        # measured: bitwise equal here
        np.testing.assert_allclose(w_after.numpy(), w_ref.numpy(), rtol=1e-6, atol=1e-7, err_msg=w_after.path)
    assert changed == 3  # embedding, kernel, bias all moved
    # the adapted vocabulary went with the model, unchanged
    assert after.get_layer("vectorize").get_vocabulary() == before.get_layer("vectorize").get_vocabulary()
    # the class names were saved with the model: --argmax prints them without a --labels file
    res = run_cli("infer", d / "t.keras", d / "texts" / "good", "--argmax", "--json")
    assert res.exit_code == 0, res
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    want = np.array(["bad", "good"])[after.predict(dataset(keras, d / "texts", 4).map(lambda x, y: x),
                                                   verbose=0)[5:].argmax(axis=1)]
    assert [line["label"] for line in lines] == list(want)
    # a validation split and --max-length go through as for images: the history has val_loss
    res = run_cli("train", d / "text.keras", "--data", d / "texts", "-o", d / "v.keras", "--val-split", "0.2",
                  "--max-length", "5", "--seed", "0", "--json")
    assert res.exit_code == 0, res
    val_loss = res.json()["history"][-1]["val_loss"]
    # the split is Keras's text_dataset_from_directory(validation_split=0.2, subset="validation", seed=0):
    # files shuffled with the seed (here one of each class), not the last rows (both "good")
    kds = keras.utils.text_dataset_from_directory(d / "texts", batch_size=None, max_length=5, seed=0,
                                                  validation_split=0.2, subset="validation", verbose=False)
    pairs = list(kds.as_numpy_iterator())
    ky = np.array([lab for _, lab in pairs])
    assert sorted(ky) == [0, 1]
    v = keras.saving.load_model(d / "v.keras")
    want = v.evaluate(kds.batch(4), verbose=0, return_dict=True)  # a mean: the pass's order does not matter
    assert abs(val_loss - want["loss"]) < 1e-5
    res = run_cli("eval", d / "v.keras", "--data", d / "texts", "--val-split", "0.2", "--max-length", "5",
                  "--seed", "0", "--json")
    assert res.exit_code == 0, res
    assert res.json()["rows"] == 2 and abs(res.json()["metrics"]["loss"] - want["loss"]) < 1e-5


def test_text_folder_errors(folder):
    from PIL import Image

    d, _keras = folder
    (d / "empty").mkdir()
    res = run_cli("train", d / "text.keras", "--data", d / "empty", "-o", d / "x.keras")
    assert res.exit_code == 3 and "no text files" in res.stderr, res
    (d / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(d / "imgs" / "a" / "0.png")
    res = run_cli("eval", d / "text.keras", "--data", d / "imgs")
    assert res.exit_code == 4 and "a folder of images; the model takes strings" in res.stderr, res
    res = run_cli("infer", d / "text.keras", d / "imgs")
    assert res.exit_code == 4 and "a folder of images" in res.stderr, res
    (d / "latin" / "a").mkdir(parents=True)
    (d / "latin" / "b").mkdir(parents=True)
    (d / "latin" / "a" / "0.txt").write_text("fine")
    (d / "latin" / "b" / "0.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    res = run_cli("train", d / "text.keras", "--data", d / "latin", "-o", d / "x.keras")
    assert res.exit_code == 3 and "b/0.txt is not UTF-8 text" in res.stderr, res
    assert len(res.stderr.strip().splitlines()) <= 2 and "Traceback" not in res.stderr
    res = run_cli("infer", d / "text.keras", d / "latin")
    assert res.exit_code == 3 and "not UTF-8" in res.stderr, res
    res = run_cli("train", d / "text.keras", "--data", d / "texts", "-o", d / "x.keras", "--max-length", "0")
    assert res.exit_code == 2 and "--max-length" in res.stderr, res
    res = run_cli("train", d / "text.keras", "--data", d / "texts", "-o", d / "x.keras", "--jit", "on")
    assert res.exit_code == 2 and "string ops" in res.stderr, res
    res = run_cli("train", d / "text.keras", "--data", d / "texts", "-o", d / "x.h5")
    assert res.exit_code == 2 and "kept only in a .keras file's assets" in res.stderr, res
    assert not (d / "x.h5").exists()
    assert not (d / "x.keras").exists()


def test_text_folder_for_a_number_model(samples, tmp_path):
    res = run_cli("train", samples / "images.keras", "--data", samples / "texts", "-o", tmp_path / "x.keras")
    assert res.exit_code == 4 and "a folder of text files; the model takes float32" in res.stderr, res
    assert not (tmp_path / "x.keras").exists()
