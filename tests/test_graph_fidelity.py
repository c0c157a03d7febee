"""Issue 13: graph commands give exactly what Keras gives on the same file (differential tests).

Each model is built once per module, saved by Keras, then run through the real CLI and compared with
`keras.models.load_model(path)(x, training=False)` (or the in-memory model where Keras cannot load it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLES, run_cli

TOL = 1e-5


def _keras():
    from wtool.graph.model import import_keras

    return import_keras()


def _infer(model: Path, *inputs: str | Path, out: Path) -> np.ndarray:
    res = run_cli("infer", model, *inputs, "-o", out)
    assert res.exit_code == 0, res
    return np.load(out)


@pytest.fixture(scope="module")
def stateful_norm_h5(tmp_path_factory) -> tuple[Path, Path]:
    """What EfficientNet has: Rescaling, a Normalization with state, swish, depthwise conv, SE Multiply."""
    keras = _keras()
    d = tmp_path_factory.mktemp("norm")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    norm = keras.layers.Normalization(axis=-1)
    x = norm(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="swish")(x)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = keras.layers.Conv2D(3, 1, activation="sigmoid")(se)
    x = keras.layers.Multiply()([x, se])
    out = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    norm.adapt(np.random.RandomState(1).rand(16, 8, 8, 3).astype("float32") * 0.7 + 0.2)
    model.save(d / "m.h5")
    x_path = d / "x.npy"
    np.save(x_path, (np.random.RandomState(0).rand(5, 8, 8, 3) * 255).astype("float32"))
    return d / "m.h5", x_path


def test_h5_normalization_state_is_finalized_after_weights(stateful_norm_h5, tmp_path):
    model_path, x_path = stateful_norm_h5
    keras = _keras()
    expected = np.asarray(keras.models.load_model(model_path, compile=False)(np.load(x_path), training=False))
    got = _infer(model_path, x_path, out=tmp_path / "y.npy")
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_efficientnet_b0_h5_equals_keras(tmp_path_factory):
    keras = _keras()
    d = tmp_path_factory.mktemp("effnet")
    model = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10)
    model.save(d / "e.h5")
    x = (np.random.RandomState(0).rand(3, 32, 32, 3) * 255).astype("float32")
    np.save(d / "x.npy", x)
    expected = np.asarray(keras.models.load_model(d / "e.h5", compile=False)(x, training=False))
    np.testing.assert_allclose(expected, np.asarray(model(x, training=False)), atol=TOL, rtol=0)
    got = _infer(d / "e.h5", d / "x.npy", out=d / "y.npy")
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory) -> tuple[Path, Path]:
    keras = _keras()
    d = tmp_path_factory.mktemp("binary")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.save(d / "b.keras")
    np.save(d / "x.npy", np.random.RandomState(0).randn(6, 3).astype("float32"))
    return d / "b.keras", d / "x.npy"


@pytest.mark.parametrize("flag", [["--argmax"], ["--top-k", "1"]])
def test_argmax_on_a_single_unit_output_points_to_threshold(binary_model, tmp_path, flag):
    model, x = binary_model
    res = run_cli("infer", model, x, "-o", tmp_path / "y.npz", *flag)
    assert res.exit_code == 4, res
    assert "single unit" in res.stderr and "--threshold" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2 and "Traceback" not in res.stderr
    assert not (tmp_path / "y.npz").exists()
    ok = run_cli("infer", model, x, "-o", tmp_path / "t.npy", "--threshold", "0.5")
    assert ok.exit_code == 0, ok
    expected = (np.asarray(_keras().models.load_model(model)(np.load(x))) >= 0.5).astype(np.int64)[:, 0]
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), expected)


@pytest.fixture(scope="module")
def ops_model(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A Functional model written the ordinary Keras 3 way: operations on KerasTensors."""
    keras = _keras()
    ops = keras.ops
    d = tmp_path_factory.mktemp("ops")
    a = keras.Input((4,), name="a")
    b = keras.Input((4,), name="b")
    x = keras.layers.Dense(4, name="dense")(a)
    y = keras.layers.LayerNormalization(name="ln")(x + b)
    z = ops.concatenate([y * 0.5, ops.mean(x, axis=-1, keepdims=True), ops.exp(x[:, :2])], axis=-1)
    z = keras.layers.Add(name="layer_add")([z, ops.reshape(ops.transpose(ops.stack([z, z]), (1, 0, 2))[:, 0], (-1, 7))])
    model = keras.Model([a, b], keras.layers.Dense(3, name="head")(z))
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    rng = np.random.RandomState(0)
    xa, xb = rng.randn(5, 4).astype("float32"), rng.randn(5, 4).astype("float32")
    np.save(d / "a.npy", xa)
    np.save(d / "b.npy", xb)
    return d, xa, xb, np.asarray(model([xa, xb], training=False))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_operations_on_keras_tensors_are_not_code(ops_model, tmp_path, suffix):
    d, xa, xb, expected = ops_model
    path = d / f"m{suffix}"
    check = run_cli("inspect", path, "--check", "--json")
    assert check.exit_code == 0, check
    got = _infer(path, "--input", f"a={d / 'a.npy'}", "--input", f"b={d / 'b.npy'}", out=tmp_path / "y.npy")
    if suffix == ".keras":  # Keras's own safe-mode load agrees (it cannot load the .h5: its writer drops modules)
        keras = _keras()
        loaded = keras.models.load_model(path, compile=False, safe_mode=True)
        np.testing.assert_allclose(np.asarray(loaded([xa, xb], training=False)), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("module, cls", [("keras.src.ops.core", "Cond"), ("keras.src.ops.core", "WhileLoop"),
                                         ("keras.src.ops.nn", "Mean"), ("os", "Add"), ("keras.src.ops.numpy", "Evil")])
def test_only_keras_own_data_operations_pass_as_operations(module, cls):
    """Control flow (Python callables), a class in the wrong module or outside Keras stays a refusal."""
    from wtool.errors import UnsafeError
    from wtool.graph.legacy_config import translate
    from wtool.safety.config_check import check_code

    node = {"module": module, "class_name": cls, "config": {"name": "op"}, "registered_name": cls, "name": "op",
            "inbound_nodes": []}
    config = {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
              "config": {"name": "m", "layers": [node], "input_layers": [], "output_layers": []}}
    refused = any(p.kind == "code" for p in translate(config, "3.15.1").problems)
    try:
        check_code(config, "m.keras")
    except UnsafeError:
        refused = True
    assert refused


@pytest.fixture(scope="module")
def code_model(tmp_path_factory) -> Path:
    """Three kinds of code in one config: Lambda bytecode, a registered class, a function reference."""
    keras = _keras()
    d = tmp_path_factory.mktemp("code")

    @keras.saving.register_keras_serializable(package="h13")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    @keras.saving.register_keras_serializable(package="h13")
    def identity(x):
        return x

    inp = keras.Input((3,))
    x = keras.layers.Lambda(lambda t: t + 1, name="lam")(inp)
    x = Twice(name="twice")(x)
    keras.Model(inp, keras.layers.Dense(2, activation=identity, name="d")(x)).save(d / "code.keras")
    return d / "code.keras"


def test_check_lists_every_reason_text_and_json(code_model):
    res = run_cli("inspect", code_model, "--check")
    assert res.exit_code == 5, res
    lines = res.stdout.splitlines()
    start = lines.index("graph needs-unsafe (3 reasons):")
    listed = lines[start + 1:start + 4]
    assert [line.split(":")[0] for line in listed] == ["  - layer `lam`", "  - layer `twice`", "  - layer `d`"]
    assert "h13>identity" in listed[2]
    doc = run_cli("inspect", code_model, "--check", "--json").json()
    assert doc["check"]["exit_code"] == 5 and len(doc["check"]["reasons"]) == 3
    assert "h13>identity" in doc["check"]["reasons"][2]


def test_inspect_header_says_the_graph_needs_code_without_tensorflow(code_model, tmp_path):
    from tests.test_no_tf_import import _probe

    res = run_cli("inspect", code_model)
    assert res.exit_code == 0, res
    header = [line for line in res.stdout.splitlines() if line.startswith("needs code")]
    assert len(header) == 1 and "`lam`" in header[0] and "(and 2 more)" in header[0] and "--unsafe" in header[0]
    doc = run_cli("inspect", code_model, "--json").json()
    assert [r.split(":")[0] for r in doc["needs_code"]] == ["layer `lam`", "layer `twice`", "layer `d`"]
    assert run_cli("inspect", SAMPLES / "mlp.keras", "--json").json()["needs_code"] == []
    probe = _probe(["inspect", str(code_model), "--json"], tmp_path)
    assert probe["code"] == 0 and probe["loaded"] == [], probe
