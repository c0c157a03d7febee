"""Issue 13: graph commands give exactly what Keras gives on the same file (differential tests).

Each model is built once per module, saved by Keras, then run through the real CLI and compared with
`keras.models.load_model(path)(x, training=False)` (or the in-memory model where Keras cannot load it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLES, run_cli

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands

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


def _keras2_lstm(name: str, units: int, **extra: object) -> dict:
    return {"class_name": "LSTM", "config": {
        "name": name, "trainable": True, "return_sequences": False, "return_state": False, "go_backwards": False,
        "stateful": True, "unroll": False, "units": units, "activation": "tanh", "recurrent_activation": "sigmoid",
        "use_bias": True, "kernel_initializer": {"class_name": "VarianceScaling", "config": {
            "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
        "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "unit_forget_bias": True,
        "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
        "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 1, **extra}}


@pytest.fixture(scope="module")
def keras2_stateful(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A Keras 2.2.5 file as frugally-deep's lstm_stateful.h5: stateful LSTM and Bidirectional(LSTM), batch 2.

    Written in Keras 2's HDF5 layout; the reference is the same network built in Keras 3 with the same
    weights, run by `model.predict(batch_size=2)` (states carried from batch to batch).
    """
    import h5py

    keras = _keras()
    d = tmp_path_factory.mktemp("stateful")
    batch, steps, features = 2, 5, 3
    reference = keras.Sequential([
        keras.Input(batch_shape=(batch, steps, features)),
        keras.layers.LSTM(4, stateful=True, return_sequences=True, name="lstm_1"),
        keras.layers.Bidirectional(keras.layers.LSTM(3, stateful=True, name="lstm_2"), name="bidirectional_1"),
        keras.layers.Dense(2, name="dense_1")])
    rng = np.random.default_rng(0)
    weights = {}
    for v in reference.weights:
        v.assign(rng.standard_normal(v.shape).astype("float32") * 0.5)
        weights[v.path.split("/", 1)[1].replace("/lstm_cell", "")] = np.asarray(v)
    dense = {"class_name": "Dense", "config": {"name": "dense_1", "trainable": True, "units": 2, "activation": "linear",
                                               "use_bias": True}}
    config = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": [
        _keras2_lstm("lstm_1", 4, return_sequences=True, batch_input_shape=[batch, steps, features], dtype="float32"),
        {"class_name": "Bidirectional", "config": {"name": "bidirectional_1", "trainable": True,
                                                   "layer": _keras2_lstm("lstm_2", 3), "merge_mode": "concat"}},
        dense]}}
    groups: dict[str, list[str]] = {}
    for path in weights:
        groups.setdefault(path.split("/")[0], []).append(path)
    with h5py.File(d / "lstm_stateful.h5", "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = b"2.2.5", b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([name.encode() for name in groups])
        for name, paths in groups.items():
            sub = g.create_group(name)
            sub.attrs["weight_names"] = np.array([f"{p}:0".encode() for p in paths])
            for p in paths:
                sub.create_dataset(f"{p}:0", data=weights[p])
    x = rng.standard_normal((6, steps, features)).astype("float32")
    np.save(d / "x.npy", x)
    np.save(d / "x7.npy", np.concatenate([x, x[:1]]))
    return d / "lstm_stateful.h5", d, np.asarray(reference.predict(x, batch_size=batch, verbose=0))


def test_keras2_stateful_rnn_runs_in_its_fixed_batch_size(keras2_stateful, tmp_path):
    model, d, expected = keras2_stateful
    got = _infer(model, d / "x.npy", out=tmp_path / "y.npy")
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    odd = run_cli("infer", model, d / "x7.npy", "-o", tmp_path / "z.npy")
    assert odd.exit_code == 4 and "exactly 2 rows" in odd.stderr and "7 rows" in odd.stderr, odd
    other = run_cli("infer", model, d / "x.npy", "--batch-size", "4", "-o", tmp_path / "z.npy")
    assert other.exit_code == 4 and "fixes the batch size at 2" in other.stderr, other
    assert not (tmp_path / "z.npy").exists()
    empty = _infer(model, d / "x.npy", "--shard", "1/7", out=tmp_path / "e.npy")  # rows 0..0 of 6
    assert empty.shape == (0, 2)


def _keras2_dense(name: str, units: int, activation: str = "relu") -> dict:
    return {"class_name": "Dense", "config": {"name": name, "trainable": True, "units": units,
                                              "activation": activation, "use_bias": True}}


def _write_keras2(path: Path, config: dict, groups: dict[str, dict[str, np.ndarray]], version: str = "2.2.4") -> None:
    """Keras 2's HDF5 layout: model_weights/GROUP with weight_names `layer/kernel:0`."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = version.encode(), b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([name.encode() for name in groups])
        for name, arrays in groups.items():
            sub = g.create_group(name)
            sub.attrs["weight_names"] = np.array([k.encode() for k in arrays])
            for k, a in arrays.items():
                sub.create_dataset(k, data=a)


def test_keras2_nested_sequentials_take_the_input_shape_from_the_first_kernel(tmp_path):
    rng = np.random.default_rng(0)
    w = {n: (rng.standard_normal(s).astype("float32"), rng.standard_normal(s[1]).astype("float32"))
         for n, s in (("dense_1", (3, 5)), ("dense_2", (5, 4)), ("dense_3", (4, 2)))}
    config = {"class_name": "Sequential", "config": {"name": "outer", "layers": [
        {"class_name": "Sequential", "config": {"name": "encoder", "layers": [_keras2_dense("dense_1", 5),
                                                                            _keras2_dense("dense_2", 4)]}},
        {"class_name": "Sequential", "config": {"name": "head", "layers": [_keras2_dense("dense_3", 2, "linear")]}}]}}
    groups = {g: {f"{n}/{k}:0": w[n][i] for n in names for i, k in enumerate(("kernel", "bias"))}
              for g, names in (("encoder", ["dense_1", "dense_2"]), ("head", ["dense_3"]))}
    _write_keras2(tmp_path / "nested.h5", config, groups)
    check = run_cli("inspect", tmp_path / "nested.h5", "--check", "--json")
    assert check.exit_code == 0, check
    assert any("(None, 3) of `outer` taken from the stored kernel of its first Dense `dense_1` (3, 5)" in c
               for c in check.json()["check"]["changes"])
    x = rng.standard_normal((4, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    res = run_cli("infer", tmp_path / "nested.h5", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    assert "note:" in res.stderr and "taken from the stored kernel" in res.stderr
    h = np.maximum(np.maximum(x @ w["dense_1"][0] + w["dense_1"][1], 0) @ w["dense_2"][0] + w["dense_2"][1], 0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), h @ w["dense_3"][0] + w["dense_3"][1], atol=TOL, rtol=1e-6)


def _conv_file(path, extra_layers):
    rng = np.random.default_rng(1)
    kernel, bias = rng.standard_normal((3, 3, 2, 4)).astype("float32"), rng.standard_normal(4).astype("float32")
    conv = {"class_name": "Conv2D", "config": {"name": "conv2d_1", "filters": 4, "kernel_size": [3, 3],
                                               "strides": [1, 1], "padding": "valid", "activation": "relu"}}
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [conv, *extra_layers]}}
    _write_keras2(path, config, {"conv2d_1": {"conv2d_1/kernel:0": kernel, "conv2d_1/bias:0": bias}})
    return kernel, bias


def test_a_first_convolution_without_input_shape_stays_exit_4_when_the_size_matters(tmp_path):
    _conv_file(tmp_path / "conv.h5", [{"class_name": "Flatten", "config": {"name": "flatten_1"}}])
    res = run_cli("inspect", tmp_path / "conv.h5", "--check")
    assert res.exit_code == 4 and "does not record the model's input shape" in res.stdout, res


def test_a_fully_convolutional_keras2_model_takes_its_channels_from_the_first_kernel(tmp_path):
    import keras

    pool = {"class_name": "GlobalAveragePooling2D", "config": {"name": "gap"}}
    kernel, bias = _conv_file(tmp_path / "fcn.h5", [pool])
    check = run_cli("inspect", tmp_path / "fcn.h5", "--check", "--json")
    assert check.exit_code == 0, check
    assert any("(None, None, None, 2) of `s` taken from the stored kernel of its first Conv2D" in c
               for c in check.json()["check"]["changes"]), check.json()["check"]
    for size in (5, 9):  # any spatial size runs, and equals the same convolution in Keras
        x = np.random.default_rng(size).standard_normal((3, size, size, 2)).astype("float32")
        np.save(tmp_path / "x.npy", x)
        res = run_cli("infer", tmp_path / "fcn.h5", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
        assert res.exit_code == 0, res
        conv = keras.layers.Conv2D(4, 3, activation="relu")
        conv.build((None, size, size, 2))
        conv.set_weights([kernel, bias])
        want = np.asarray(conv(x)).mean(axis=(1, 2))
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=TOL, rtol=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_bad_input_array_fails_before_tensorflow_loads(tmp_path, suffix):
    from tests.test_no_tf_import import _probe

    bad = tmp_path / f"bad{suffix}"
    rows = np.zeros((3, 5), "float32")
    np.save(bad, rows) if suffix == ".npy" else np.savez(bad, x=rows)
    probe = _probe(["infer", str(SAMPLES / "xor.keras"), str(bad), "-o", str(tmp_path / "y.npy")], tmp_path)
    assert probe["code"] == 4 and probe["loaded"] == [], probe
    res = run_cli("infer", SAMPLES / "xor.h5", bad, "-o", tmp_path / "y.npy")
    assert res.exit_code == 4 and "model expects (None, 2); input rows have shape (5,)" in res.stderr, res
    assert not (tmp_path / "y.npy").exists()


@pytest.fixture(scope="module")
def class_and_score(tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Two named outputs: a 3-class softmax head beside a one-unit sigmoid score."""
    keras = _keras()
    d = tmp_path_factory.mktemp("heads")
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(6, activation="tanh", name="h")(x)
    outputs = {"kind": keras.layers.Dense(3, activation="softmax", name="kind")(h),
               "score": keras.layers.Dense(1, activation="sigmoid", name="score")(h)}
    model = keras.Model(x, outputs)
    model.save(d / "m.keras")
    rows = np.random.RandomState(3).randn(9, 4).astype("float32")
    np.save(d / "x.npy", rows)
    want = {k: np.asarray(v) for k, v in keras.models.load_model(d / "m.keras")(rows, training=False).items()}
    return d / "m.keras", d / "x.npy", want


def test_argmax_and_top_k_apply_to_the_outputs_with_classes(class_and_score, tmp_path):
    """On a model with several outputs a decision goes to the outputs it fits; a one-unit output
    beside a class head is written as Keras gives it, with a note (not exit 4 for the whole run)."""
    model, x, want = class_and_score
    res = run_cli("infer", model, x, "-o", tmp_path / "a.npz", "--argmax")
    assert res.exit_code == 0, res
    with np.load(tmp_path / "a.npz") as z:
        assert sorted(z.files) == ["kind.class", "score"]
        np.testing.assert_array_equal(z["kind.class"], want["kind"].argmax(axis=1))
        np.testing.assert_allclose(z["score"].reshape(want["score"].shape), want["score"], atol=TOL, rtol=0)
    assert "note: --argmax applies to 'kind'; 'score' has a single unit" in res.stderr, res.stderr
    res = run_cli("infer", model, x, "-o", tmp_path / "k.npz", "--top-k", "2")
    assert res.exit_code == 0, res
    with np.load(tmp_path / "k.npz") as z:
        assert sorted(z.files) == ["kind.top_index", "kind.top_prob", "score"]
        np.testing.assert_array_equal(z["kind.top_index"], np.argsort(-want["kind"], axis=1)[:, :2])
        np.testing.assert_allclose(z["kind.top_prob"], -np.sort(-want["kind"], axis=1)[:, :2], atol=TOL, rtol=0)


def test_threshold_applies_to_the_one_unit_output(class_and_score, tmp_path):
    model, x, want = class_and_score
    res = run_cli("infer", model, x, "-o", tmp_path / "t.npz", "--threshold", "0.5")
    assert res.exit_code == 0, res
    with np.load(tmp_path / "t.npz") as z:
        assert sorted(z.files) == ["kind", "score.class"]
        np.testing.assert_array_equal(z["score.class"], (want["score"][:, 0] >= 0.5).astype(np.int64))
        np.testing.assert_allclose(z["kind"], want["kind"], atol=TOL, rtol=0)
    assert "'kind' has 3 units" in res.stderr, res.stderr


def test_a_decision_that_fits_no_output_is_still_exit_4(tmp_path):
    keras = _keras()
    x = keras.Input((3,), name="x")
    model = keras.Model(x, [keras.layers.Dense(1, name="a")(x), keras.layers.Dense(1, name="b")(x)])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.ones((2, 3), "float32"))
    res = run_cli("infer", tmp_path / "m.keras", tmp_path / "x.npy", "-o", tmp_path / "y.npz", "--argmax")
    assert res.exit_code == 4, res
    assert "single unit" in res.stderr and "--threshold" in res.stderr
    assert not (tmp_path / "y.npz").exists()
