"""`train --mixed-precision bfloat16|float16`: trained under Keras's mixed policies, checked against Keras's
own mixed-precision fit (a model built under keras.config.set_dtype_policy, from the same weights), and
written back with float32 weights and the model's own float32 policies."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("mixed_precision")]


def layers(keras):
    return [keras.Input((6,), name="x"), keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="out")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = np.argmax(x[:, :3], axis=1).astype("int64")
    np.savez(d / "data.npz", x=x, y=y)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(layers(keras), name="mlp")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.save(d / "mlp.keras")
    return d, keras, x, y, [w.numpy() for w in model.weights]


def keras_mixed_fit(keras, policy, weights, x, y):
    """Keras's own way: the model built under the global mixed policy, compiled (float16: Keras wraps the
    optimizer in a LossScaleOptimizer itself), fit in file order."""
    keras.config.set_dtype_policy(policy)
    try:
        model = keras.Sequential(layers(keras), name="mlp")
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        assert (type(model.optimizer).__name__ == "LossScaleOptimizer") == (policy == "mixed_float16")
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
        return [w.numpy() for w in model.weights]
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains_and_saves_float32(setup, precision):
    d, keras, x, y, weights = setup
    out = d / f"{precision}.keras"
    res = run_cli("train", d / "mlp.keras", "--data", d / "data.npz", "-o", out, "--epochs", "4", "--batch-size",
                  "16", "--no-shuffle", "--seed", "0", "--mixed-precision", precision, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    losses = [h["loss"] for h in doc["history"]]
    assert losses[-1] < losses[0] * 0.8, losses
    header = " ".join(doc["notes"])
    assert f"mixed_{precision}" in header
    assert ("LossScaleOptimizer" in header) == (precision == "float16")
    # the file: float32 variables, the model's own float32 policies, Keras's plain Adam as optimizer
    with zipfile.ZipFile(out) as archive:
        config = json.loads(archive.read("config.json"))
    policies = [layer["config"]["dtype"]["config"]["name"] for layer in config["config"]["layers"]
                if isinstance(layer["config"].get("dtype"), dict)]
    assert policies == ["float32", "float32"]
    assert config["compile_config"]["optimizer"]["class_name"] == "Adam"
    trained = keras.saving.load_model(out)
    assert [str(w.dtype) for w in trained.weights] == ["float32"] * 4
    got = [w.numpy() for w in trained.weights]
    assert all(not np.array_equal(a, b) for a, b in zip(got, weights, strict=True))
    # Keras's own mixed-precision fit from the same weights, same batches (measured: bitwise equal here)
    want = keras_mixed_fit(keras, f"mixed_{precision}", weights, x, y)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and a float32 run of the same command ends elsewhere (the policy made a difference)
    if precision == "bfloat16":
        res = run_cli("train", d / "mlp.keras", "--data", d / "data.npz", "-o", d / "f32.keras", "--epochs", "4",
                      "--batch-size", "16", "--no-shuffle", "--seed", "0", "-q")
        assert res.exit_code == 0, res
        f32 = [w.numpy() for w in keras.saving.load_model(d / "f32.keras").weights]
        assert any(not np.array_equal(a, b) for a, b in zip(got, f32, strict=True))
    # infer runs on the result, in float32, as Keras predicts
    res = run_cli("infer", out, d / "data.npz", "-o", d / f"p_{precision}.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(d / f"p_{precision}.npy"), trained.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-6)


def test_mixed_precision_refusals(setup):
    d, keras, *_ = setup
    res = run_cli("train", d / "mlp.keras", "--data", d / "data.npz", "-o", d / "x.keras", "--mixed-precision",
                  "float16", "--strategy", "mirrored")
    assert res.exit_code == 2 and "--strategy mirrored is not supported" in res.stderr, res
    res = run_cli("train", d / "mlp.keras", "--data", d / "data.npz", "-o", d / "x.keras", "--mixed-precision",
                  "float16", "--lora", "2")
    assert res.exit_code == 2 and "--mixed-precision with --lora" in res.stderr, res
    res = run_cli("train", d / "mlp.keras", "--data", "-", "-o", d / "x.keras", "--mixed-precision", "bfloat16",
                  input="")
    assert res.exit_code == 2 and "--mixed-precision does not apply to --data -" in res.stderr, res
    model = keras.saving.load_model(d / "mlp.keras")
    model.quantize("int8")
    model.save(d / "int8.keras")
    res = run_cli("train", d / "int8.keras", "--data", d / "data.npz", "-o", d / "x.keras", "--mixed-precision",
                  "bfloat16")
    assert res.exit_code == 4 and "quantized layers" in res.stderr, res
    res = run_cli("train", d / "mlp.keras", "--data", d / "data.npz", "-o", d / "x.keras", "--mixed-precision",
                  "float8")
    assert res.exit_code == 2, res
    keras.config.set_dtype_policy("float16")  # every layer float16 already: nothing to mix
    try:
        half = keras.Sequential(layers(keras), name="half")
    finally:
        keras.config.set_dtype_policy("float32")
    half.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    half.save(d / "half.keras")
    res = run_cli("train", d / "half.keras", "--data", d / "data.npz", "-o", d / "x.keras", "--mixed-precision",
                  "float16")
    assert res.exit_code == 4 and "no layer of the model computes in float32" in res.stderr, res
    assert not (d / "x.keras").exists()


def test_mixed_precision_with_two_inputs_and_outputs(samples, tmp_path):
    """The several-inputs/outputs step scales the loss too: the sample two-input model trains under float16."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    res = run_cli("train", samples / "two_inputs.keras", "--data", samples / "two_inputs.npz", "--x-key", "a=xa",
                  "--x-key", "b=xb", "--y-key", "value=y_value", "--y-key", "kind=y_kind", "--epochs", "3",
                  "--lr", "0.01", "--seed", "0", "--mixed-precision", "float16", "-o", tmp_path / "two.keras",
                  "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert "LossScaleOptimizer" in " ".join(doc["notes"])
    losses = [h["loss"] for h in doc["history"]]
    assert losses[-1] < losses[0], losses
    trained = keras.saving.load_model(tmp_path / "two.keras")
    assert {str(w.dtype) for w in trained.weights} == {"float32"}
    assert {layer.dtype_policy.name for layer in trained.layers if layer.weights} == {"float32"}


def test_mixed_precision_resume_equals_one_run(setup, tmp_path):
    """The checkpoint holds the LossScaleOptimizer's scale too: 2 + 2 resumed epochs equal 4 in one go."""
    d, *_ = setup
    common = ["--data", d / "data.npz", "--batch-size", "16", "--no-shuffle", "--seed", "0", "-q"]
    fp16 = ["--mixed-precision", "float16"]
    ck = ["--checkpoint-dir", tmp_path / "ck"]
    assert run_cli("train", d / "mlp.keras", "-o", tmp_path / "one.keras", "--epochs", "4", *common,
                   *fp16).exit_code == 0
    assert run_cli("train", d / "mlp.keras", "-o", tmp_path / "r.keras", "--epochs", "2", *common, *fp16,
                   *ck).exit_code == 0
    res = run_cli("train", d / "mlp.keras", "-o", tmp_path / "r.keras", "--epochs", "5", *common, *ck, "--resume")
    assert res.exit_code == 2 and "--mixed-precision float16" in res.stderr, res
    res = run_cli("train", d / "mlp.keras", "-o", tmp_path / "r.keras", "--epochs", "4", *common, *fp16, *ck,
                  "--resume")
    assert res.exit_code == 0, res
    assert run_cli("diff", tmp_path / "one.keras", tmp_path / "r.keras").exit_code == 0
