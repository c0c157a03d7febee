"""`wtool train --lora RANK`: checked against Keras's own `enable_lora` + `fit` on the same file, seed and data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import stored_weights

pytestmark = pytest.mark.tf  # builds models with Keras / trains

SEED = 3


def _model(keras, name: str = "m", constraint: str | None = None):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="d1", kernel_constraint=constraint)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, name="d2")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    import keras

    out = tmp_path_factory.mktemp("lora_train")
    keras.utils.set_random_seed(1)
    model = _model(keras)
    model.save(out / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(out / "d.npz", x=rng.normal(size=(40, 6)).astype("float32"), y=rng.normal(size=(40, 3)).astype("float32"))
    # saved after enable_lora(4) with non-zero adapters: the file holds merged kernels and lora_rank 4
    lora = _model(keras, "m")
    lora.set_weights(model.get_weights())
    lora.get_layer("d1").enable_lora(4)
    lora.get_layer("d1").lora_kernel_b.assign(rng.normal(size=(4, 8)).astype("float32"))
    lora.save(out / "saved_lora.keras")
    twin = _model(keras, "m")  # the same merged weights, no lora_rank
    twin.get_layer("d1").set_weights([lora.get_layer("d1").kernel.numpy(), lora.get_layer("d1").bias.numpy()])
    for name in ("bn", "d2"):
        twin.get_layer(name).set_weights(lora.get_layer(name).get_weights())
    twin.save(out / "twin.keras")
    _model(keras, "c", constraint="non_neg").save(out / "constrained.keras")
    keras.Sequential([keras.Input((6,)), keras.layers.BatchNormalization(name="bn")], name="n").save(out / "no_dense.keras")
    return {p.stem: p for p in out.iterdir()}


def _keras_lora_fit(path: Path, data: Path, layers: tuple[str, ...], rank: int, alpha: float | None, epochs: int):
    """What a Keras user writes: seed, enable_lora, freeze all but the adapters, fit without shuffling."""
    import keras

    model = keras.saving.load_model(path)
    keras.utils.set_random_seed(SEED)
    for name in layers:
        model.get_layer(name).enable_lora(rank, lora_alpha=alpha)
    for layer in model.layers:
        layer.trainable = layer.name in layers
    for var in model.weights:
        var.trainable = var.name in ("lora_kernel_a", "lora_kernel_b")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    arrays = np.load(data)
    model.fit(arrays["x"], arrays["y"], batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


def _train(wtool, src: Path, data: Path, out: Path, *args: str):
    return wtool("train", src, "--data", data, "--loss", "mse", "--optimizer", "sgd", "--lr", "0.1", "--batch-size",
                 "16", "--no-shuffle", "--seed", str(SEED), "-o", out, "--json", "-q", *args)


@pytest.mark.parametrize(("layers", "alpha", "epochs"), [((), None, 2), (("d2",), 8.0, 1)])
def test_lora_training_equals_keras_enable_lora_and_fit(wtool, files, tmp_path, layers, alpha, epochs):
    import keras

    args = ["--lora", "2", "--epochs", str(epochs)] + [a for name in layers for a in ("--lora-layers", name)]
    args += ["--lora-alpha", str(alpha)] if alpha is not None else []
    out = tmp_path / "o.keras"
    res = _train(wtool, files["m"], files["d"], out, *args)
    assert res.exit_code == 0, res
    adapted = layers or ("d1", "d2")
    reference = _keras_lora_fit(files["m"], files["d"], adapted, 2, alpha, epochs)
    lora = res.json()["lora"]
    assert lora["layers"] == list(adapted) and lora["rank"] == 2 and lora["alpha"] == (alpha or 2)
    adapters = [v for v in reference.weights if "lora_kernel" in v.name]
    assert lora["trainable_params"] == sum(int(np.prod(v.shape)) for v in adapters)
    assert lora["trainable_params_before"] == 8 * 6 + 8 + 3 * 8 + 3 + 8 + 8  # dense kernels, biases, bn gamma/beta
    assert res.json()["frozen"] == {"weights": 8, "unchanged": True}

    before, after = stored_weights(files["m"]), stored_weights(out)
    for name in adapted:  # kernel = kernel + (alpha / rank) * A @ B, as Keras merges it
        layer = reference.get_layer(name)
        merged = layer._kernel.numpy() + (layer.lora_alpha / 2) * (layer.lora_kernel_a.numpy()
                                                                   @ layer.lora_kernel_b.numpy())
        np.testing.assert_allclose(after[f"{name}/kernel"], merged, atol=1e-5, rtol=0)
        assert np.abs(after[f"{name}/kernel"] - before[f"{name}/kernel"]).max() > 1e-4  # the adapters learnt
    for path, value in before.items():  # biases, BatchNormalization, unadapted kernels: bitwise unchanged
        if not (path.endswith("/kernel") and path.split("/")[0] in adapted):
            assert after[path].tobytes() == value.tobytes(), path

    loaded = keras.saving.load_model(out)  # Keras loads OUT: lora_rank kept, merged kernels, same outputs
    assert [loaded.get_layer(n).lora_rank for n in ("d1", "d2")] == [2 if n in adapted else None for n in ("d1", "d2")]
    x = np.load(files["d"])["x"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert int(loaded.optimizer.iterations.numpy()) == 0  # no adapter moments left without their adapters


def test_a_model_saved_with_lora_rank_trains_with_and_without_lora(wtool, files, tmp_path):
    import keras

    # with --lora: fresh adapters on the merged kernel, exactly as on its plain twin
    res = _train(wtool, files["saved_lora"], files["d"], tmp_path / "a.keras", "--lora", "2")
    assert res.exit_code == 0, res
    twin = _train(wtool, files["twin"], files["d"], tmp_path / "b.keras", "--lora", "2")
    assert twin.exit_code == 0, twin
    a, b = stored_weights(tmp_path / "a.keras"), stored_weights(tmp_path / "b.keras")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert keras.saving.load_model(tmp_path / "a.keras").get_layer("d1").lora_rank == 2

    # without --lora: the merged kernel itself trains (Keras's zero adapters would never move it), lora_rank kept
    res = _train(wtool, files["saved_lora"], files["d"], tmp_path / "c.keras", "--epochs", "2")
    assert res.exit_code == 0, res
    assert any("trained as plain layers" in note for note in res.json()["notes"])
    plain = _train(wtool, files["twin"], files["d"], tmp_path / "d.keras", "--epochs", "2")
    c, d = stored_weights(tmp_path / "c.keras"), stored_weights(tmp_path / "d.keras")
    assert all(np.allclose(c[k], d[k], atol=1e-6) for k in c), plain
    assert not np.array_equal(c["d1/kernel"], stored_weights(files["saved_lora"])["d1/kernel"])
    assert keras.saving.load_model(tmp_path / "c.keras").get_layer("d1").lora_rank == 4
    # a LoRA run's output trains again, plain (it carries no optimizer state of the merged adapters)
    again = _train(wtool, tmp_path / "a.keras", files["d"], tmp_path / "e.keras")
    assert again.exit_code == 0, again


@pytest.mark.parametrize(("model", "args", "code", "fragment"), [
    ("m", ["--lora", "0"], 2, "--lora RANK must be at least 1 (not 0)"),
    ("m", ["--lora", "-3"], 2, "--lora RANK must be at least 1"),
    ("m", ["--lora", "2", "--lora-layers", "nothing*"], 2, "--lora-layers 'nothing*' matches no layer"),
    ("m", ["--lora", "2", "--lora-layers", "bn"], 4, "matches only layers that cannot take LoRA adapters"),
    ("m", ["--lora-alpha", "4"], 2, "need --lora RANK"),
    ("m", ["--lora", "2", "--freeze", "d1"], 2, "--freeze/--unfreeze do not apply"),
    ("no_dense", ["--lora", "2"], 4, "no layer of this model can take LoRA adapters"),
    ("constrained", ["--lora", "2"], 4, "Keras cannot enable LoRA on d1 (Dense): Lora is incompatible with kernel"),
])
def test_bad_lora_input_is_one_line_and_writes_nothing(wtool, files, tmp_path, model, args, code, fragment):
    out = tmp_path / "o.keras"
    res = wtool("train", files[model], "--data", files["d"], "--loss", "mse", "-o", out, *args)
    assert res.exit_code == code, res
    assert fragment in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) <= 2  # error, optional hint
    assert not out.exists()


def test_lora_on_an_int8_model_trains_the_adapters_and_keras_loads_it(wtool, tmp_path, files):
    import keras

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(3, name="d2")],
                             name="q")
    model.quantize("int8")
    model.save(tmp_path / "q.keras")
    res = _train(wtool, tmp_path / "q.keras", files["d"], tmp_path / "o.keras", "--lora", "2", "--lora-layers", "d1")
    assert res.exit_code == 0, res
    before, after = stored_weights(tmp_path / "q.keras"), stored_weights(tmp_path / "o.keras")
    assert after["d1/kernel"].dtype == np.int8
    assert not np.array_equal(before["d1/kernel"], after["d1/kernel"])  # the adapters merged and re-quantized
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.startswith("d1/kernel"))
    assert keras.saving.load_model(tmp_path / "o.keras").get_layer("d1").quantization_mode == "int8"
