"""Models with Keras's stateful preprocessing layers: `infer` against `model.predict`, by format.

One combined model per form, built once per module and saved in every format:
- `dict`: the model of issue 17: dict inputs `num` (Normalization) and `cat` (int64 ids
  beyond float32's range, IntegerLookup), dict outputs `cls` and `reg`;
- `numeric`: one float input through Normalization, Discretization, Hashing, CategoryEncoding;
- `text`: one string input () through TextVectorization and StringLookup;
- `multi`: inputs `num`, `cat` and a string `word` (1,) through every stateful layer (Hashing of strings).
Keras's own answers are the reference (`model.predict` on the same arrays).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands

BIG = 2**40  # int64 ids that float32 cannot tell apart: a cast would send every id to one bucket
WORDS = ["red", "green", "blue", "red", "pink", "blue", "green", "red"]
TEXTS = ["the cat sat", "a dog ran far", "the dog sat", "cats and dogs", "a cat", "red dog", "the end", "far"]


def ok(*args):
    res = run_cli("infer", *args)
    assert res.exit_code == 0, res
    return res


def _dict_model(keras, num, cat):
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(num)
    look = keras.layers.IntegerLookup(name="look", output_mode="one_hot")
    look.adapt(cat)
    i_num, i_cat = keras.Input((4,), name="num"), keras.Input((1,), name="cat", dtype="int64")
    h = keras.layers.Dense(8, activation="relu", name="d")(keras.layers.Concatenate()([norm(i_num), look(i_cat)]))
    outs = {"cls": keras.layers.Dense(3, activation="softmax", name="cls")(h),
            "reg": keras.layers.Dense(1, name="reg")(h)}
    return keras.Model({"num": i_num, "cat": i_cat}, outs, name="dict")


def _numeric_model(keras, num):
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(num)
    disc = keras.layers.Discretization(num_bins=4, name="disc")
    disc.adapt(num)
    x = keras.Input((4,), name="x")
    bins = disc(x)
    parts = [norm(x), keras.layers.CategoryEncoding(num_tokens=4, output_mode="count", name="enc")(bins),
             keras.layers.Hashing(num_bins=3, output_mode="multi_hot", name="hash")(bins)]
    y = keras.layers.Dense(2, name="out")(keras.layers.Concatenate()(parts))
    return keras.Model(x, y, name="numeric")


def _text_model(keras):
    vec = keras.layers.TextVectorization(max_tokens=20, output_mode="multi_hot", name="vec")
    vec.adapt(np.array(TEXTS))
    look = keras.layers.StringLookup(output_mode="one_hot", name="slook")
    look.adapt(np.array(TEXTS))
    t = keras.Input((), dtype="string", name="text")
    parts = [vec(t), look(t)]
    return keras.Model(t, keras.layers.Dense(2, name="out")(keras.layers.Concatenate()(parts)), name="text")


def _multi_model(keras, num, cat):
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(num)
    disc = keras.layers.Discretization(num_bins=3, name="disc")
    disc.adapt(num)
    ilook = keras.layers.IntegerLookup(output_mode="multi_hot", name="ilook")
    ilook.adapt(cat)
    slook = keras.layers.StringLookup(output_mode="one_hot", name="slook")
    slook.adapt(np.array(WORDS)[:, None])
    vec = keras.layers.TextVectorization(output_mode="count", name="vec")
    vec.adapt(np.array(WORDS)[:, None])
    i_num, i_cat = keras.Input((4,), name="num"), keras.Input((1,), name="cat", dtype="int64")
    i_word = keras.Input((1,), name="word", dtype="string")
    parts = [norm(i_num), keras.layers.CategoryEncoding(num_tokens=3, output_mode="multi_hot", name="enc")(disc(i_num)),
             ilook(i_cat), keras.layers.Hashing(num_bins=4, output_mode="one_hot", name="hash")(i_word),
             slook(i_word), keras.layers.Flatten(name="flat")(vec(i_word))]
    h = keras.layers.Dense(6, activation="relu", name="d")(keras.layers.Concatenate()(parts))
    outs = {"cls": keras.layers.Dense(3, activation="softmax", name="cls")(h),
            "reg": keras.layers.Dense(1, name="reg")(h)}
    return keras.Model({"num": i_num, "cat": i_cat, "word": i_word}, outs, name="multi")


def _predict(model, x):
    import tensorflow as tf

    def tensor(a):
        return tf.constant(a) if a.dtype.kind in "US" else a

    feed = {k: tensor(v) for k, v in x.items()} if isinstance(x, dict) else tensor(x)
    return model.predict(feed, verbose=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("prep")
    rng = np.random.default_rng(7)
    num = (rng.normal(size=(len(WORDS), 4)) * 3 + 1).astype("float32")
    cat = (BIG + rng.integers(0, 5, size=(len(WORDS), 1))).astype("int64")
    words = np.array(WORDS)[:, None]
    inputs = {"dict": {"num": num, "cat": cat}, "numeric": num, "text": np.array(TEXTS),
              "multi": {"num": num, "cat": cat, "word": words}}
    models = {"dict": _dict_model(keras, num, cat), "numeric": _numeric_model(keras, num),
              "text": _text_model(keras), "multi": _multi_model(keras, num, cat)}
    refs = {}
    for name, model in models.items():
        model.save(d / f"{name}.keras")
        model.save(d / f"{name}.h5")
        model.save_weights(d / f"{name}.weights.h5")
        refs[name] = _predict(model, inputs[name])
    np.save(d / "num.npy", num)
    np.save(d / "cat.npy", cat)
    np.save(d / "words.npy", words)
    np.save(d / "texts.npy", np.array(TEXTS))
    np.save(d / "texts_bytes.npy", np.array(TEXTS).astype("S"))
    (d / "rows.csv").write_text("id,text,word\n" + "".join(f'{i},"{t}",{w}\n' for i, (t, w) in
                                                           enumerate(zip(TEXTS, WORDS, strict=True))))
    (d / "rows.jsonl").write_text("".join(json.dumps({"text": t, "word": w}) + "\n" for t, w in zip(TEXTS, WORDS,
                                                                                                  strict=True)))
    (d / "bare.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    return d, models, refs


def _formats(d, name):
    """(file, extra args) for the .keras, .h5 and .weights.h5 (+ --arch .keras) forms of a model."""
    return {"keras": (d / f"{name}.keras", []), "h5": (d / f"{name}.h5", []),
            "weights": (d / f"{name}.weights.h5", ["--arch", d / f"{name}.keras"])}


@pytest.mark.parametrize("fmt", ["keras", "weights"])
def test_dict_model_equals_keras(tmp_path, built, fmt):
    d, _, refs = built
    model, extra = _formats(d, "dict")[fmt]
    ok(model, *extra, "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}", "-o", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        assert sorted(z.files) == ["cls", "reg"]
        for key in ("cls", "reg"):
            np.testing.assert_allclose(z[key], refs["dict"][key], atol=1e-6)
    # CSV and JSON lines: columns named (and prefixed) by output name
    ok(model, *extra, "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}", "-o", tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].split(",") == ["cls_0", "cls_1", "cls_2", "reg_0"]
    np.testing.assert_allclose(np.loadtxt(lines[1:], delimiter=",", ndmin=2),
                               np.concatenate([refs["dict"]["cls"], refs["dict"]["reg"]], axis=1), atol=1e-6)
    res = ok(model, *extra, "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert list(rows[0]) == ["cls", "reg"]
    np.testing.assert_allclose([r["cls"] for r in rows], refs["dict"]["cls"], atol=1e-6)
    np.testing.assert_allclose([r["reg"] for r in rows], refs["dict"]["reg"], atol=1e-6)


def test_dict_model_h5_without_vocabulary_is_refused_like_keras(tmp_path, built):
    """A legacy .h5 keeps no adapted vocabulary: Keras fails on it too, wtool says why (exit 4)."""
    from wtool.graph.model import import_keras

    d, _, _ = built
    keras = import_keras()
    reloaded = keras.models.load_model(d / "dict.h5")
    with pytest.raises(Exception, match="not initialized"):
        _predict(reloaded, {"num": np.load(d / "num.npy"), "cat": np.load(d / "cat.npy")})
    for model in (d / "dict.h5", d / "dict.weights.h5"):
        extra = ["--arch", d / "dict.h5"] if model.name.endswith(".weights.h5") else []
        res = run_cli("infer", model, *extra, "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}",
                      "-o", tmp_path / "p.npz")
        assert res.exit_code == 4, res
        assert "'look' (IntegerLookup) has no vocabulary" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 2  # the error line and its hint
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["keras", "h5", "weights"])
def test_numeric_preprocessing_equals_keras(tmp_path, built, fmt):
    d, _, refs = built
    model, extra = _formats(d, "numeric")[fmt]
    ok(model, *extra, d / "num.npy", "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), refs["numeric"], atol=1e-6)


@pytest.mark.parametrize(("source", "extra"), [
    ("texts.npy", []), ("texts_bytes.npy", []), ("rows.csv", ["--columns", "text"]),
    ("rows.jsonl", ["--input-key", "text"]), ("bare.jsonl", []),
    ("rows.csv", []), ("rows.jsonl", [])])  # no option: the column / field named after the input
def test_string_input_from_every_format(tmp_path, built, source, extra):
    d, _, refs = built
    ok(d / "text.keras", d / source, *extra, "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), refs["text"], atol=1e-6)


def test_string_input_refuses_numbers_and_object_arrays(tmp_path, built):
    d, _, _ = built
    np.save(tmp_path / "ids.npy", np.arange(len(TEXTS), dtype=np.float32))
    res = run_cli("infer", d / "text.keras", tmp_path / "ids.npy", "-o", tmp_path / "p.npy")
    assert res.exit_code == 4 and "input 'text' takes strings" in res.stderr, res
    np.save(tmp_path / "obj.npy", np.array(TEXTS, dtype=object), allow_pickle=True)
    res = run_cli("infer", d / "text.keras", tmp_path / "obj.npy", "-o", tmp_path / "p.npy")
    assert res.exit_code == 3 and "never unpickled" in res.stderr, res
    assert not (tmp_path / "p.npy").exists()


@pytest.mark.parametrize("fmt", ["keras", "weights"])
def test_multi_input_every_layer_equals_keras(tmp_path, built, fmt):
    d, _, refs = built
    model, extra = _formats(d, "multi")[fmt]
    ok(model, *extra, "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}",
       "--input", f"word={d / 'rows.csv'}", "-o", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        for key in ("cls", "reg"):
            np.testing.assert_allclose(z[key], refs["multi"][key], atol=1e-6)
    ok(model, *extra, "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}",
       "--input", f"word={d / 'rows.jsonl'}", "-o", tmp_path / "q.npz")
    with np.load(tmp_path / "q.npz") as z:
        np.testing.assert_allclose(z["cls"], refs["multi"]["cls"], atol=1e-6)


def test_inspect_check_passes_on_every_file(built):
    d, _, _ = built
    for path in sorted(d.glob("*.keras")) + sorted(d.glob("*.h5")):
        if path.name.endswith(".weights.h5"):
            continue
        res = run_cli("inspect", path, "--check")
        assert res.exit_code == 0, (path, res)


# --------------------------------------------------------------------------- state: inspect, surgery, train


def _keras_state(model):
    """Every preprocessing layer's state as Keras reports it (vocabulary, statistics, boundaries)."""
    state = {}
    for layer in model.layers:
        if hasattr(layer, "get_vocabulary"):
            state[layer.name] = [str(v) for v in layer.get_vocabulary()]
        elif type(layer).__name__ == "Normalization":
            state[layer.name] = (np.asarray(layer.adapt_mean), np.asarray(layer.adapt_variance))
        elif type(layer).__name__ == "Discretization":
            state[layer.name] = list(layer.bin_boundaries)
    return state


def _assert_same_state(got, want):
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, tuple):
            for a, b in zip(got[name], value, strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert got[name] == value, name


def test_inspect_shows_preprocessing_state_without_tensorflow(built):
    d, models, _ = built
    doc = run_cli("inspect", d / "multi.keras", "--json").json()
    by_layer = {s["layer"]: s for s in doc["preprocessing"]}
    assert set(by_layer) == {"norm", "disc", "enc", "ilook", "hash", "slook", "vec"}
    model = models["multi"]
    for name in ("ilook", "slook", "vec"):
        vocab = model.get_layer(name).get_vocabulary()
        assert by_layer[name]["vocabulary_size"] == len(vocab) == model.get_layer(name).vocabulary_size()
        assert by_layer[name]["vocabulary_head"] == vocab[:5]
    norm = model.get_layer("norm")
    np.testing.assert_allclose(by_layer["norm"]["mean"], np.asarray(norm.adapt_mean), rtol=1e-7)
    np.testing.assert_allclose(by_layer["norm"]["variance"], np.asarray(norm.adapt_variance), rtol=1e-7)
    assert by_layer["disc"]["bins"] == len(model.get_layer("disc").bin_boundaries) + 1 == 3
    assert by_layer["hash"]["num_bins"] == 4 and by_layer["enc"]["num_tokens"] == 3
    text = run_cli("inspect", d / "multi.keras").stdout
    assert f"vocabulary of {len(model.get_layer('slook').get_vocabulary())} " in text
    lost = run_cli("inspect", d / "dict.h5").stdout
    assert "look" in lost and "no vocabulary in this file" in lost


def test_state_survives_set_weights_transfer_and_train(tmp_path, built):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d, models, refs = built
    want = _keras_state(models["multi"])
    feed = ["--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}", "--input", f"word={d / 'rows.csv'}"]
    res = run_cli("set-weights", d / "multi.keras", "--init", "reg/*=zeros", "-o", tmp_path / "sw.keras")
    assert res.exit_code == 0, res
    res = run_cli("transfer", d / "dict.keras", d / "multi.keras", "--skip-mismatch", "-o", tmp_path / "tr.keras")
    assert res.exit_code == 0, res
    for out in ("sw.keras", "tr.keras"):
        loaded = keras.models.load_model(tmp_path / out)
        _assert_same_state(_keras_state(loaded), want)
        ok(tmp_path / out, *feed, "-o", tmp_path / f"{out}.npz")
        expected = _predict(loaded, {"num": np.load(d / "num.npy"), "cat": np.load(d / "cat.npy"),
                                     "word": np.array(WORDS)[:, None]})
        with np.load(tmp_path / f"{out}.npz") as z:
            np.testing.assert_allclose(z["cls"], expected["cls"], atol=1e-6)
            np.testing.assert_allclose(z["cls"], refs["multi"]["cls"], atol=1e-6)  # only reg was zeroed
            np.testing.assert_allclose(z["reg"], expected["reg"], atol=1e-6)
    # train: the preprocessing statistics are not trained, the Dense layer is
    num = np.load(d / "num.npy")
    np.savez(tmp_path / "xy.npz", x=num, y=np.ones((len(num), 2), np.float32))
    res = run_cli("train", d / "numeric.keras", "--data", tmp_path / "xy.npz", "--loss", "mse", "--optimizer", "sgd",
                  "--epochs", "2", "--seed", "0", "-o", tmp_path / "trained.keras")
    assert res.exit_code == 0, res
    trained = keras.models.load_model(tmp_path / "trained.keras")
    _assert_same_state(_keras_state(trained), _keras_state(models["numeric"]))
    assert not np.allclose(trained.get_layer("out").kernel, models["numeric"].get_layer("out").kernel)


def test_train_dict_model_by_input_order_keeps_state_and_equals_fit(tmp_path, built):
    """Issue 17: the dict-input dict-output model trains with `--x-key num --x-key cat --y-key cls --y-key reg`
    (keys in the model's input/output order), as `model.fit` on the same dicts; Normalization's mean/variance
    and IntegerLookup's vocabulary do not move, the Dense layers do."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    d, models, _ = built
    num, cat = np.load(d / "num.npy"), np.load(d / "cat.npy")
    cls = np.array([0, 1, 2, 1, 0, 2, 1, 0], np.int64)
    reg = num[:, :1] * 0.5 + 1
    np.savez(tmp_path / "xy.npz", num=num, cat=cat, cls=cls, reg=reg)
    res = run_cli("train", d / "dict.keras", "--data", tmp_path / "xy.npz", "--x-key", "num", "--x-key", "cat",
                  "--y-key", "cls", "--y-key", "reg", "--loss", "cls=sparse_categorical_crossentropy",
                  "--loss", "reg=mse", "--metric", "cls=accuracy", "--optimizer", "sgd", "--lr", "0.1",
                  "--batch-size", "4", "--no-shuffle", "--epochs", "3", "--seed", "0", "-o", tmp_path / "t.keras",
                  "--json")
    assert res.exit_code == 0, res
    history = res.json()["history"]
    trained = keras.models.load_model(tmp_path / "t.keras")
    _assert_same_state(_keras_state(trained), _keras_state(models["dict"]))
    assert not np.allclose(trained.get_layer("d").kernel, models["dict"].get_layer("d").kernel)

    ref = keras.models.load_model(d / "dict.keras", compile=False)
    ref.compile(optimizer=keras.optimizers.SGD(0.1), loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                metrics={"cls": ["accuracy"]})
    fit = ref.fit({"num": num, "cat": cat}, {"cls": cls, "reg": reg}, batch_size=4, epochs=3, shuffle=False,
                  verbose=0).history
    assert {k for k in history[0] if k not in ("epoch", "lr", "seconds")} == set(fit)
    for key, values in fit.items():
        np.testing.assert_allclose([h[key] for h in history], values, rtol=1e-5, atol=1e-6, err_msg=key)
    for layer in ("d", "cls", "reg"):
        for got, want in zip(trained.get_layer(layer).weights, ref.get_layer(layer).weights, strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    # int64 ids beyond float32's range reach the lookup intact: a cast would have sent them all to one bucket
    ok(tmp_path / "t.keras", "--input", f"num={d / 'num.npy'}", "--input", f"cat={d / 'cat.npy'}", "-o",
       tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_allclose(z["cls"], _predict(ref, {"num": num, "cat": cat})["cls"], atol=1e-6)
    # eval reads the dict model's inputs by key (their flat order is sorted: cat before num), as evaluate does
    res = run_cli("eval", tmp_path / "t.keras", "--data", tmp_path / "xy.npz", "--x-key", "num", "--x-key", "cat",
                  "--y-key", "cls", "--y-key", "reg", "--json")
    assert res.exit_code == 0, res
    want = ref.evaluate({"num": num, "cat": cat}, {"cls": cls, "reg": reg}, verbose=0, return_dict=True)
    for key, value in want.items():
        assert res.json()["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
