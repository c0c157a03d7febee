"""Config translation (wtool.graph.legacy_config) and weight re-arrangement (wtool.graph.legacy_weights): no TensorFlow.

Each case reads the real `model_config` of the corpus file that shows it (h5py / zipfile only)
and checks the translated Keras 3 config by value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from wtool.graph import legacy_weights
from wtool.graph.legacy_config import SAFE_LAYERS, TranslationError, translate

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"

FILES = {
    "keras1_list": "naokishibuya__car-behavioral-cloning/model.h5",
    "boston": "lyhue1991__keras_tutorial/boston_housing_model.h5",
    "simple_rnn_time_major": "gingerK309__simpleRnn_model/simple_rnn.h5",
    "hdf5_as_keras": "fastmachinelearning__hls4ml/experiments__hostpipe_parallel__keras_model.keras",
    "gru_21": "fastmachinelearning__hls4ml/example-models__keras__KERAS_gru_model_weights.h5",
    "bidir": "Dobiasd__frugally-deep/keras_export__lstm.h5",
    "thresholded": "fastmachinelearning__hls4ml/example-prjs__thresholded_relu__thresholded_relu.h5",
    "gan": "rsyamil__gan-hm/gan.h5",
    "garnet": "fastmachinelearning__example-models/keras__garnet_3layer_weights.h5",
    "nnom_lambda": "majianjia__nnom/examples__mnist-densenet__model__keras_mnist_model.h5__keras_mnist_model.h5",
    "vae": "AlgoDM-Fall2023-Team2__Visual-Search-Using-Variational-Autoencoders/model.keras",
    "siamese": "mmoffatt2__smart_doorlock/siamese_model.keras",
    "k3_keras": "AdjoaPanyin__Stock_Price_RNN/model.keras",
}

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")


def _attr(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def saved_config(key: str) -> tuple[dict, str | None, str | None]:
    path = CORPUS / FILES[key]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("metadata.json"))
            return json.loads(zf.read("config.json")), meta.get("keras_version"), meta.get("backend")
    with h5py.File(path, "r") as f:
        return (json.loads(_attr(f.attrs["model_config"])), _attr(f.attrs.get("keras_version")),
                _attr(f.attrs.get("backend")))


def tr(key: str):
    config, version, backend = saved_config(key)
    return translate(config, version, backend)


def layers_of(config: dict) -> list[dict]:
    return config["config"]["layers"]


def by_name(config: dict, name: str) -> dict:
    for layer in layers_of(config):
        if layer["config"].get("name") == name or layer.get("name") == name:
            return layer
    raise KeyError(name)


def walk(obj):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


def test_list_style_sequential_keras1_classes_and_args():
    t = tr("keras1_list")
    cfg = t.config
    assert cfg["class_name"] == "Sequential" and cfg["module"] == "keras"
    layers = layers_of(cfg)
    assert layers[0]["class_name"] == "InputLayer"
    assert layers[0]["config"]["batch_shape"] == [None, 66, 200, 3]
    conv = by_name(cfg, "convolution2d_1")
    assert conv["class_name"] == "Conv2D"
    assert conv["config"]["filters"] == 24
    assert conv["config"]["kernel_size"] == [5, 5]
    assert conv["config"]["strides"] == [2, 2]
    assert conv["config"]["padding"] == "valid"
    assert conv["config"]["data_format"] == "channels_last"
    assert conv["config"]["kernel_initializer"] == "glorot_uniform"
    assert conv["config"]["use_bias"] is True
    assert conv["config"]["activation"] == "elu"
    for old in ("nb_filter", "nb_row", "nb_col", "border_mode", "subsample", "init", "W_regularizer", "bias"):
        assert old not in conv["config"]
    dense = by_name(cfg, "dense_1")
    assert dense["config"]["units"] == 100 and "output_dim" not in dense["config"]
    assert "input_dim" not in dense["config"]
    assert by_name(cfg, "dropout_1")["config"]["rate"] == 0.5
    assert any("list-style Sequential" in c for c in t.changes)
    # the Keras 1 Lambda holds old bytecode: not loadable, even with --unsafe
    [problem] = t.problems
    assert problem.layer == "lambda_1" and problem.kind == "incompatible"
    assert "bytecode" in problem.reason and "Keras 1.2.1" in problem.reason
    assert t.blocking(unsafe=True)


def test_batch_input_shape_on_first_layer_becomes_input_layer():
    t = tr("boston")
    layers = layers_of(t.config)
    assert [layer["class_name"] for layer in layers] == ["InputLayer", "Dense", "Dense"]
    assert layers[0]["config"]["batch_shape"] == [None, 13]  # not (None, None, 13)
    assert layers[0]["config"]["name"] == "dense_29_input"
    assert "batch_input_shape" not in layers[1]["config"]
    assert not t.problems


@pytest.mark.parametrize("key,layer", [("simple_rnn_time_major", "simple_rnn"), ("hdf5_as_keras", "gru")])
def test_time_major_false_is_dropped(key, layer):
    t = tr(key)
    cfg = by_name(t.config, layer)["config"]
    assert "time_major" not in cfg
    assert any("time_major" in c for c in t.changes)
    assert not t.problems


def test_time_major_true_is_refused():
    config, version, _ = saved_config("simple_rnn_time_major")
    config["config"]["layers"][1]["config"]["time_major"] = True
    t = translate(config, version)
    assert [p.kind for p in t.problems] == ["incompatible"]
    assert "time_major" in t.problems[0].reason


def test_gru_without_reset_after_gets_keras21_default():
    t = tr("gru_21")
    gru = by_name(t.config, "gru_selu")
    assert gru["class_name"] == "GRU"
    assert gru["config"]["reset_after"] is False
    # the regularizers are Keras objects with their module
    assert gru["config"]["recurrent_regularizer"]["module"] == "keras.regularizers"
    assert gru["config"]["recurrent_regularizer"]["config"]["l1"] == pytest.approx(0.001)


def test_gru_with_reset_after_keeps_it():
    t = tr("hdf5_as_keras")
    assert by_name(t.config, "gru")["config"]["reset_after"] is True


def test_bidirectional_inner_config_gets_module_and_initial_state_is_a_kwarg():
    t = tr("bidir")
    bidir = by_name(t.config, "bidirectional_1")
    inner = bidir["config"]["layer"]
    assert inner["module"] == "keras.layers" and inner["class_name"] == "LSTM"
    assert inner["config"]["kernel_initializer"]["module"] == "keras.initializers"
    lstm15 = by_name(t.config, "lstm_15")
    [node] = lstm15["inbound_nodes"]
    [arg] = node["args"]
    assert arg["config"]["keras_history"] == ["input_3", 0, 0]
    states = node["kwargs"]["initial_state"]
    assert [s["config"]["keras_history"] for s in states] == [["input_4", 0, 0], ["input_5", 0, 0]]


def test_initializer_dtype_argument_is_dropped():
    # tf.keras 1.x wrote initializers with a dtype: no corpus file has it, so add it to a real config
    config, version, _ = saved_config("boston")
    for layer in config["config"]["layers"]:
        for key in ("kernel_initializer", "bias_initializer"):
            layer["config"][key]["config"]["dtype"] = "float32"
    t = translate(config, version)
    for obj in walk(t.config):
        if obj.get("module") == "keras.initializers":
            assert "dtype" not in obj["config"]
    assert any("initializer dtype" in c for c in t.changes)
    assert not t.problems


def test_thresholded_relu_becomes_relu_with_threshold():
    t = tr("thresholded")
    layer = by_name(t.config, "thresholded_re_lu")
    assert layer["class_name"] == "ReLU"
    assert layer["config"]["threshold"] == 2.0
    assert layer["config"]["negative_slope"] == 0.0 and layer["config"]["max_value"] is None
    assert "theta" not in layer["config"]


def test_nested_models_node_indices_shift_by_one():
    t = tr("gan")
    outer = t.config
    assert outer["class_name"] == "Functional"
    model_1 = by_name(outer, "model_1")
    assert model_1["class_name"] == "Functional" and model_1["module"] == "keras.src.models.functional"
    model_2 = by_name(outer, "model_2")
    [node] = model_2["inbound_nodes"]
    # Keras 2 wrote ["model_1", 1, 0]: a Keras 3 model has no node of its own
    assert node["args"][0]["config"]["keras_history"] == ["model_1", 0, 0]
    # output_layers keep Keras's own convention (Keras 3 subtracts one for a Functional itself);
    # a single output is a bare reference, so the model returns a tensor, not a list of one
    assert outer["config"]["output_layers"] == ["model_2", 1, 0]


@pytest.mark.parametrize("key,kind,text", [
    ("garnet", "code", "custom class `GarNetStack`"),
    ("vae", "code", "custom class `VAE`"),
    ("siamese", "code", "calculate_difference"),
    ("nnom_lambda", "incompatible", "bytecode"),
])
def test_code_is_never_translated_away(key, kind, text):
    t = tr(key)
    assert t.problems
    assert {p.kind for p in t.problems} == {kind}
    assert any(text in str(p) for p in t.problems)
    assert t.blocking(unsafe=False)


def test_keras3_config_passes_unchanged_in_meaning():
    t = tr("k3_keras")
    assert not t.problems and not t.changes
    assert [layer["class_name"] for layer in layers_of(t.config)] == ["InputLayer", "LSTM", "Dropout", "LSTM", "Dense"]


def test_every_translated_class_is_on_the_allowlist():
    for key in ("keras1_list", "boston", "gru_21", "bidir", "thresholded", "gan", "hdf5_as_keras"):
        for obj in walk(tr(key).config):
            if obj.get("module") == "keras.layers":
                assert obj["class_name"] in SAFE_LAYERS or obj["class_name"] == "Lambda"


def _rnn_config(cell_class: str, registered: str | None = None) -> dict:
    """A Keras 3 Functional config with RNN(CELL): the generic RNN wrapper, as Keras writes it."""
    cell = {"module": "keras.layers" if registered is None else "my_cells", "class_name": cell_class,
            "config": {"name": "cell", "units": 4}, "registered_name": registered}
    rnn = {"module": "keras.layers", "class_name": "RNN", "name": "rnn",
           "config": {"name": "rnn", "cell": cell, "return_sequences": False},
           "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__",
                                        "config": {"shape": [None, 5, 3], "dtype": "float32",
                                                   "keras_history": ["x", 0, 0]}}], "kwargs": {}}]}
    x = {"module": "keras.layers", "class_name": "InputLayer", "name": "x",
         "config": {"batch_shape": [None, 5, 3], "dtype": "float32", "name": "x"}, "inbound_nodes": []}
    return {"module": "keras", "class_name": "Functional", "config": {
        "name": "m", "layers": [x, rnn], "input_layers": [["x", 0, 0]], "output_layers": [["rnn", 0, 0]]}}


@pytest.mark.parametrize("cell", ["GRUCell", "LSTMCell", "SimpleRNNCell"])
def test_generic_rnn_with_a_keras_cell_is_keras_own(cell):
    """keras.layers.RNN(keras.layers.GRUCell(...)) is Keras's own layer: no refusal (it was `RNN` custom)."""
    t = translate(_rnn_config(cell), "3.15.1")
    assert not t.problems
    assert by_name(t.config, "rnn")["config"]["cell"]["class_name"] == cell


def test_generic_rnn_with_a_custom_cell_names_the_cell():
    t = translate(_rnn_config("MinimalRNNCell", registered="my_cells>MinimalRNNCell"), "3.15.1")
    assert [p.kind for p in t.problems] == ["code"]
    assert "MinimalRNNCell" in str(t.problems[0])


def test_translation_does_not_modify_its_input():
    config, version, _ = saved_config("keras1_list")
    before = json.dumps(config, sort_keys=True)
    translate(config, version)
    assert json.dumps(config, sort_keys=True) == before


def test_keras1_functional_merge_modes():
    config = {"class_name": "Model", "config": {
        "name": "m", "input_layers": [["a", 0, 0], ["b", 0, 0]], "output_layers": [["merge_1", 0, 0]],
        "layers": [
            {"class_name": "InputLayer", "name": "a", "inbound_nodes": [],
             "config": {"batch_input_shape": [None, 3], "input_dtype": "float32", "sparse": False, "name": "a"}},
            {"class_name": "InputLayer", "name": "b", "inbound_nodes": [],
             "config": {"batch_input_shape": [None, 3], "input_dtype": "float32", "sparse": False, "name": "b"}},
            {"class_name": "Merge", "name": "merge_1", "inbound_nodes": [[["a", 0, 0], ["b", 0, 0]]],
             "config": {"name": "merge_1", "mode": "concat", "concat_axis": -1, "mode_type": "raw",
                        "dot_axes": -1, "output_shape": None, "output_shape_type": "raw", "arguments": {}}},
        ]}}
    t = translate(config, "1.2.2")
    merge = by_name(t.config, "merge_1")
    assert merge["class_name"] == "Concatenate" and merge["config"]["axis"] == -1
    a = by_name(t.config, "a")
    assert a["config"]["batch_shape"] == [None, 3] and a["config"]["dtype"] == "float32"
    config["config"]["layers"][2]["config"]["mode_type"] = "lambda"
    assert translate(config, "1.2.2").problems[0].kind == "code"


@pytest.mark.parametrize("bad", [{}, {"class_name": "Sequential", "config": 3}, []])
def test_not_a_model_config(bad):
    with pytest.raises(TranslationError):
        translate(bad)


def test_legacy_modules_do_not_import_tensorflow():
    code = ("import sys, wtool.graph.legacy_config, wtool.graph.legacy_weights, wtool.graph.model; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --- weight re-arrangement -----------------------------------------------------------------


def _gates(units: int, inp: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out += [rng.standard_normal((inp, units)).astype("float32"),
                rng.standard_normal((units, units)).astype("float32"),
                rng.standard_normal((units,)).astype("float32")]
    return out


def test_keras1_lstm_gates_are_fused_in_i_f_c_o_order():
    # Keras 1 order: W_i U_i b_i, W_c U_c b_c, W_f U_f b_f, W_o U_o b_o
    arrays = _gates(units=2, inp=3, n=4, seed=0)
    kernel, recurrent, bias = legacy_weights.convert("LSTM", arrays, [(3, 8), (2, 8), (8,)])
    i, c, f, o = arrays[0:3], arrays[3:6], arrays[6:9], arrays[9:12]
    for j, fused in enumerate((kernel, recurrent, bias)):
        assert np.array_equal(fused[..., 0:2], i[j])
        assert np.array_equal(fused[..., 2:4], f[j])
        assert np.array_equal(fused[..., 4:6], c[j])
        assert np.array_equal(fused[..., 6:8], o[j])


def test_keras1_gru_gates_are_fused_in_z_r_h_order():
    arrays = _gates(units=2, inp=3, n=3, seed=1)
    kernel, recurrent, bias = legacy_weights.convert("GRU", arrays, [(3, 6), (2, 6), (6,)])
    assert np.array_equal(kernel, np.concatenate([arrays[0], arrays[3], arrays[6]], axis=-1))
    assert np.array_equal(recurrent, np.concatenate([arrays[1], arrays[4], arrays[7]], axis=-1))
    assert np.array_equal(bias, np.concatenate([arrays[2], arrays[5], arrays[8]], axis=-1))


def test_channels_first_keras1_conv_kernel_is_transposed_and_theano_flipped():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((4, 2, 3, 5)).astype("float32")  # (filters, in, rows, cols)
    bias = rng.standard_normal(4).astype("float32")
    new_kernel, new_bias = legacy_weights.convert("Conv2D", [kernel, bias], [(3, 5, 2, 4), (4,)],
                                                  {"keras1": True}, {"data_format": "channels_first"})
    assert np.array_equal(new_kernel, np.transpose(kernel, (2, 3, 1, 0)))
    assert new_bias is bias or np.array_equal(new_bias, bias)
    flipped, _ = legacy_weights.convert("Conv2D", [kernel, bias], [(3, 5, 2, 4), (4,)],
                                        {"keras1": True, "theano_kernel": True}, {"data_format": "channels_first"})
    assert np.array_equal(flipped, np.transpose(kernel, (2, 3, 1, 0))[::-1, ::-1, :, :])


def test_cudnn_lstm_bias_halves_are_summed():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((3, 8)).astype("float32"), rng.standard_normal((2, 8)).astype("float32"),
              rng.standard_normal(16).astype("float32")]
    _k, _r, bias = legacy_weights.convert("LSTM", arrays, [(3, 8), (2, 8), (8,)], {"cudnn": "lstm"})
    assert np.allclose(bias, arrays[2][:8] + arrays[2][8:])


def test_conversion_mismatch_names_both_shapes():
    with pytest.raises(legacy_weights.WeightConversionError, match=r"\(3, 8\).*\(4, 8\)"):
        legacy_weights.convert("LSTM", _gates(2, 3, 4, 0), [(4, 8), (2, 8), (8,)])


# --- `wtool inspect MODEL --check` (no TensorFlow) ----------------------------------------------

CHECKS = {
    # file: (exit without --unsafe, exit with --unsafe, status, fragment of the reason)
    "boston": (0, 0, "ok", None),
    "gan": (0, 0, "ok", None),
    "k3_keras": (0, 0, "ok", None),
    "garnet": (5, 4, "needs-unsafe", "GarNetStack"),
    "vae": (5, 4, "needs-unsafe", "VAE"),
    "siamese": (5, 4, "needs-unsafe", "calculate_difference"),
    "nnom_lambda": (4, 4, "incompatible", "bytecode"),
    "keras1_list": (4, 4, "incompatible", "bytecode"),
}


@pytest.mark.parametrize("key", list(CHECKS))
def test_inspect_check_exit_codes_and_reasons(key):
    from tests.conftest import run_cli

    safe, unsafe, status, fragment = CHECKS[key]
    res = run_cli("inspect", CORPUS / FILES[key], "--check", "--json")
    assert res.exit_code == safe, res
    check = res.json()["check"]
    assert check["status"] == status and check["exit_code"] == safe
    if fragment:
        assert any(fragment in r for r in check["reasons"])
    else:
        assert check["reasons"] == []
    assert run_cli("inspect", CORPUS / FILES[key], "--check", "--unsafe").exit_code == unsafe


def test_inspect_check_groups_repeated_reasons():
    from tests.conftest import run_cli

    res = run_cli("inspect", CORPUS / FILES["nnom_lambda"], "--check")
    assert res.exit_code == 4
    line = [x for x in res.stdout.splitlines() if x.startswith("graph")][0]
    assert "`lambda_1`, `lambda_2`, `lambda_3` and 10 more" in line
    assert line.count("holds Python bytecode") == 1


def test_inspect_check_weights_only_file():
    from tests.conftest import run_cli

    res = run_cli("inspect", CORPUS / "lyhue1991__keras_tutorial/model_weights.h5", "--check", "--json")
    assert res.exit_code == 4
    assert res.json()["check"]["status"] == "no-graph"
    assert "--arch" in res.json()["check"]["reasons"][0]
