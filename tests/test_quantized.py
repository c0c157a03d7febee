"""Quantized Keras 3.15 models (int8, int4, float8): every command checked against Keras on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MODES = ("int8", "int4", "float8")


def _dense_model(keras):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    x = keras.layers.EinsumDense("ab,bc->ac", output_shape=6, bias_axes="c", name="e1")(x)
    outputs = keras.layers.Dense(4, use_bias=False, name="d2")(x)
    return keras.Model(inputs, outputs, name="qmlp")


def _embedding_model(keras):
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 6, name="emb")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="qemb")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    """One file per (model, mode), each written by Keras 3.15 after `model.quantize(mode)`."""
    import keras

    out = tmp_path_factory.mktemp("quantized")
    files: dict[str, Path] = {}
    keras.utils.set_random_seed(3)
    for mode in MODES:
        model = _dense_model(keras)
        model.quantize(mode)
        files[f"dense-{mode}"] = out / f"dense-{mode}.keras"
        model.save(files[f"dense-{mode}"])
    for mode in ("int8", "int4"):
        model = _embedding_model(keras)
        model.quantize(mode)
        files[f"emb-{mode}"] = out / f"emb-{mode}.keras"
        model.save(files[f"emb-{mode}"])
    np.save(out / "x.npy", np.random.default_rng(0).normal(size=(7, 8)).astype("float32"))
    np.save(out / "tokens.npy", np.random.default_rng(1).integers(0, 20, size=(7, 5)).astype("int32"))
    files["x"], files["tokens"] = out / "x.npy", out / "tokens.npy"
    return files


def _keras_variables(path: Path) -> tuple[dict[str, np.ndarray], set[str]]:
    """Keras's own view of the file: every variable by path below the model, and the trainable ones."""
    import keras

    model = keras.saving.load_model(path)
    values = {v.path: np.asarray(v) for v in model.weights}  # a Functional model: paths start at the layer
    trainable = {v.path for v in model.trainable_weights}
    return values, trainable


@pytest.mark.parametrize("name", ["dense-int8", "dense-int4", "dense-float8", "emb-int8", "emb-int4"])
def test_every_variable_named_and_valued_as_keras_loads_it(wtool, quantized, tmp_path, name):
    exported = tmp_path / "w.npz"
    res = wtool("inspect", quantized[name], "--export", exported, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    keras_values, keras_trainable = _keras_variables(quantized[name])
    arrays = np.load(exported)
    assert sorted(arrays.files) == sorted(keras_values)
    for path, value in keras_values.items():
        assert arrays[path].dtype == value.dtype, path
        np.testing.assert_array_equal(arrays[path], value, err_msg=path)
    trainable = {w["path"] for w in doc["weights"] if w["trainable"]}
    assert trainable == keras_trainable
    assert not any("/vars/" in w["path"] for w in doc["weights"])


def test_inspect_shows_the_mode_of_each_quantized_layer(wtool, quantized):
    res = wtool("inspect", quantized["dense-int4"], "--json")
    layers = {layer["name"]: layer for layer in res.json()["layers"]}
    assert layers["d1"]["quantization"] == "int4/128" and layers["e1"]["quantization"] == "int4/128"
    text = wtool("inspect", quantized["emb-int8"]).stdout
    assert "Embedding [int8]" in text and "Dense [int8]" in text


@pytest.mark.parametrize("name", ["dense-int8", "dense-int4", "dense-float8", "emb-int8", "emb-int4"])
def test_infer_equals_keras_on_the_quantized_model(wtool, quantized, tmp_path, name):
    import keras

    x = quantized["tokens"] if name.startswith("emb") else quantized["x"]
    res = wtool("infer", quantized[name], x, "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    expected = keras.saving.load_model(quantized[name]).predict(np.load(x), verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5, rtol=0)
