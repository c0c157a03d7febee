"""Quantized Keras 3.15 models (int8, int4, float8): every command checked against Keras on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands

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
        np.save(out / f"dense-{mode}-d1.npy", np.asarray(model.get_layer("d1").kernel))
        model.quantize(mode)
        files[f"dense-{mode}"] = out / f"dense-{mode}.keras"
        model.save(files[f"dense-{mode}"])
    for mode in ("int8", "int4"):
        model = _embedding_model(keras)
        np.save(out / f"emb-{mode}-emb.npy", np.asarray(model.get_layer("emb").embeddings))
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


# ---- wtool quantize ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A float model with a layer Keras cannot quantize (BatchNormalization) between Dense layers."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(16, name="d2")(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    path = tmp_path_factory.mktemp("plain") / "plain.keras"
    keras.Model(inputs, outputs, name="plain").save(path)
    return path


@pytest.mark.parametrize("mode", ["int8", "int4"])  # float8 files: test_infer_equals_keras_on_the_quantized_model
def test_quantize_reports_each_layer_and_infer_equals_keras_own_quantize(wtool, quantized, plain, tmp_path, mode):
    import keras

    before = plain.read_bytes()
    out = tmp_path / f"q-{mode}.keras"
    res = wtool("quantize", plain, "--mode", mode, "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    outcome = {layer["path"]: layer for layer in doc["layers"]}
    assert [p for p, o in outcome.items() if o["quantized"]] == ["d1", "d2", "out"]
    assert outcome["bn"]["detail"] == f"Keras has no {mode} form of BatchNormalization"
    assert doc["size_before"] == len(before) and doc["size_after"] == out.stat().st_size
    assert plain.read_bytes() == before
    reference = keras.saving.load_model(plain)
    reference.quantize(mode)
    x = np.load(quantized["x"])
    res = wtool("infer", out, quantized["x"], "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference.predict(x, verbose=0), atol=1e-5, rtol=0)
    layers = {layer["name"]: layer for layer in wtool("inspect", out, "--json").json()["layers"]}
    assert layers["d1"]["quantization"].startswith(mode) and "quantization" not in layers["bn"]


def test_quantize_layers_glob_and_refusals(wtool, plain, tmp_path):
    out = tmp_path / "sel.keras"
    res = wtool("quantize", plain, "--mode", "int8", "--layers", "d*", "-o", out)
    assert res.exit_code == 0, res
    assert "out    Dense               skipped: not selected by --layers" in res.stdout
    res = wtool("quantize", out, "--mode", "int8", "--layers", "d*", "-o", tmp_path / "again.keras")
    assert res.exit_code == 4 and "no layer was quantized" in res.stderr and "already quantized" in res.stderr
    assert not (tmp_path / "again.keras").exists()
    res = wtool("quantize", plain, "--mode", "int8", "-o", tmp_path / "q.h5")
    assert res.exit_code == 2 and not (tmp_path / "q.h5").exists()
    res = wtool("quantize", plain, "--mode", "int8", "--layers", "nope*", "-o", tmp_path / "n.keras")
    assert res.exit_code == 2 and "matches no layer" in res.stderr


def test_train_on_a_quantized_model_trains_what_keras_trains(wtool, quantized, tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(2)
    np.savez(data, x=rng.normal(size=(32, 8)).astype("float32"), y=rng.normal(size=(32, 4)).astype("float32"))
    out = tmp_path / "t.keras"
    res = wtool("train", quantized["dense-int8"], "--data", data, "--loss", "mse", "--epochs", "2", "--seed", "0",
                "-o", out, "--lr", "0.1")
    assert res.exit_code == 0, res
    a = wtool("inspect", quantized["dense-int8"], "--export", tmp_path / "a.npz")
    b = wtool("inspect", out, "--export", tmp_path / "b.npz")
    assert a.exit_code == b.exit_code == 0
    before, after = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(before["d1/kernel"], after["d1/kernel"])  # int8 kernels are frozen in Keras
    np.testing.assert_array_equal(before["d1/kernel_scale"], after["d1/kernel_scale"])
    assert not np.array_equal(before["d1/bias"], after["d1/bias"])


def _keras_dequantized(path: Path, layer_name: str):
    """The float values of a quantized layer from Keras's own unpacking and group-dequantizing functions."""
    import keras
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    layer = keras.saving.load_model(path).get_layer(layer_name)
    is_dense = layer_name == "d1"
    values = np.asarray(layer._kernel if is_dense else layer._embeddings)
    scale = np.asarray(layer.kernel_scale if is_dense else layer.embeddings_scale)
    if layer.quantization_mode == "int8":
        return values / (scale if is_dense else scale[:, None])
    values = np.asarray(keras.quantizers.unpack_int4(values, layer._orig_output_dim, axis=-1)).astype("float32")
    zero = layer.kernel_zero if is_dense else layer.embeddings_zero
    return np.asarray(dequantize_with_sz_map(values, scale, zero, layer.g_idx, group_axis=0 if is_dense else -1))


@pytest.mark.parametrize(("name", "weight"), [("dense-int8", "d1/kernel"), ("dense-int4", "d1/kernel"),
                                              ("emb-int8", "emb/embeddings"), ("emb-int4", "emb/embeddings")])
def test_stats_report_dequantized_values_as_keras_computes_them(wtool, quantized, name, weight):
    res = wtool("inspect", quantized[name], "--stats", "--layer", weight, "--json")
    assert res.exit_code == 0, res
    row = next(w for w in res.json()["weights"] if w["path"] == weight)
    reference = _keras_dequantized(quantized[name], weight.split("/")[0])
    deq = row["dequantized"]
    assert deq["shape"] == list(reference.shape)
    for key, value in (("min", reference.min()), ("max", reference.max()), ("mean", reference.mean()),
                       ("std", reference.std())):
        assert deq["stats"][key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    original = np.load(quantized[name].with_name(f"{name}-{weight.split('/')[0]}.npy"))
    step = np.abs(original).max() / 127 if name.endswith("int8") else (original.max() - original.min()) / 15
    assert abs(deq["stats"]["mean"] - original.mean()) < step and abs(deq["stats"]["max"] - original.max()) < step
    text = wtool("inspect", quantized[name], "--stats", "--layer", weight).stdout
    assert f"{weight} (dequantized)" in text
    assert ("int8 (packed int4)" in text) == name.endswith("int4")


def test_a_scale_that_does_not_fit_its_kernel_is_one_line_exit_3(wtool, quantized, tmp_path):
    import shutil
    import zipfile

    import h5py

    bad = tmp_path / "bad.keras"
    shutil.copy(quantized["dense-int8"], bad)
    with zipfile.ZipFile(bad) as zf:
        zf.extract("model.weights.h5", tmp_path)
        members = {n: zf.read(n) for n in zf.namelist() if n != "model.weights.h5"}
    with h5py.File(tmp_path / "model.weights.h5", "r+") as h5:
        group = h5["layers/dense/vars"]
        del group["2"]
        group["2"] = np.ones((5,), "float32")  # d1 has 16 units
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
        zf.write(tmp_path / "model.weights.h5", "model.weights.h5")
    for args in (("inspect", bad), ("infer", bad, quantized["x"]), ("diff", bad, quantized["dense-int8"])):
        res = wtool(*args)
        assert res.exit_code == 3, res
        assert "kernel_scale has shape (5,), which does not fit its kernel (8, 16)" in res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2


def test_set_weights_and_transfer_into_a_quantized_kernel_need_the_same_quantization(wtool, quantized, plain,
                                                                                    tmp_path):
    int8, int4 = quantized["dense-int8"], quantized["dense-int4"]
    float_npz = tmp_path / "float.npz"
    np.savez(float_npz, **{"d1/kernel": np.ones((8, 16), "float32")})
    res = wtool("set-weights", int8, "--npz", float_npz, "-o", tmp_path / "a.keras")
    assert res.exit_code == 4, res
    assert "d1/kernel belongs to a layer quantized to int8" in res.stderr and "wtool quantize" in res.stderr
    assert not (tmp_path / "a.keras").exists()
    res = wtool("transfer", int8, int4, "-o", tmp_path / "b.keras")
    assert res.exit_code == 4 and "quantized to int4/128 and source d1/kernel is int8" in res.stderr, res
    assert not (tmp_path / "b.keras").exists()
    # the same quantization on both sides: copied as they are, and Keras loads the result equal to the source
    res = wtool("set-weights", quantized["dense-int8"], "--from-model", int8, "--layer", "d1/*",
                "-o", tmp_path / "c.keras")
    assert res.exit_code == 0, res
    res = wtool("diff", tmp_path / "c.keras", int8)
    assert res.exit_code == 0, res
    res = wtool("set-weights", int8, "--weight", f"d1/bias={_npy(tmp_path, np.full(16, 0.5, 'float32'))}",
                "-o", tmp_path / "d.keras")
    assert res.exit_code == 0, res  # the bias of a quantized layer stays a float: allowed


def _npy(tmp_path: Path, value: np.ndarray) -> Path:
    path = tmp_path / "value.npy"
    np.save(path, value)
    return path


# ---- LoRA ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory) -> Path:
    """Saved after `enable_lora(4)` with trained-looking adapters: Keras 3.15 writes the merged kernel."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="d1"), keras.layers.Dense(4, name="d2")],
                             name="lora")
    model.get_layer("d1").enable_lora(4)
    model.get_layer("d1").lora_kernel_b.assign(np.random.default_rng(4).normal(size=(4, 16)).astype("float32"))
    path = tmp_path_factory.mktemp("lora") / "lora.keras"
    model.save(path)
    return path


def test_a_lora_model_is_shown_as_merged_and_infers_as_keras(wtool, lora_model, quantized, tmp_path):
    import keras

    res = wtool("inspect", lora_model, "--json")
    assert res.exit_code == 0, res
    layers = {layer["name"]: layer for layer in res.json()["layers"]}
    assert layers["d1"]["lora_rank"] == 4 and "lora_rank" not in layers["d2"]
    assert [w["path"] for w in res.json()["weights"]] == ["d1/kernel", "d1/bias", "d2/kernel", "d2/bias"]
    assert "Dense [lora rank 4, merged]" in wtool("inspect", lora_model).stdout
    reference = keras.saving.load_model(lora_model)
    res = wtool("infer", lora_model, quantized["x"], "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference.predict(np.load(quantized["x"]), verbose=0),
                               atol=1e-5, rtol=0)
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(3)
    np.savez(data, x=rng.normal(size=(32, 8)).astype("float32"), y=rng.normal(size=(32, 4)).astype("float32"))
    res = wtool("train", lora_model, "--data", data, "--loss", "mse", "--epochs", "1", "-o", tmp_path / "t.keras")
    assert res.exit_code == 0, res
    assert keras.saving.load_model(tmp_path / "t.keras").get_layer("d1").lora_rank == 4


def test_diff_of_two_int8_models_compares_dequantized_kernels(wtool, quantized, tmp_path):
    import keras

    model = keras.saving.load_model(quantized["dense-int8"])
    layer = model.get_layer("d1")
    before = np.asarray(layer._kernel).astype("float32") / np.asarray(layer.kernel_scale)
    layer._kernel.assign(np.clip(np.asarray(layer._kernel).astype("int16") + 3, -127, 127).astype("int8"))
    after = np.asarray(layer._kernel).astype("float32") / np.asarray(layer.kernel_scale)
    changed = tmp_path / "changed.keras"
    model.save(changed)
    res = wtool("diff", quantized["dense-int8"], changed, "--json")
    assert res.exit_code == 1, res
    rows = {w["path"]: w for w in res.json()["weights"]}
    assert rows["d1/kernel"]["dequantized"] is True and rows["d1/kernel"]["status"] == "changed"
    assert rows["d1/kernel"]["max_abs_diff"] == pytest.approx(float(np.abs(before - after).max()), rel=1e-6)
    assert rows["d2/kernel"]["status"] == "same" and rows["d1/kernel_scale"]["status"] == "same"
    assert "d1/kernel (dequantized)" in wtool("diff", quantized["dense-int8"], changed).stdout
