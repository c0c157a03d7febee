"""Graph loading of old model files (wtool.graph.model.load_model / check_graph) on the real corpus.

Every corpus file whose graph needs no code loads with its saved input shape and exactly
the weights the weight store reads from the file (bitwise), runs on a random batch, and a
Keras 3 re-save opens in Keras's own load_model. Files that need code are refused with
exit 5 or 4 and the reason. Keras 1 files (no loadable one in the corpus: its only Keras 1
model has a Lambda) are written here in Keras 1's layout and checked against numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import CORPUS, run_cli
from wtool.errors import IncompatibleError, UnsafeError

pytestmark = [pytest.mark.tf, pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")]

# corpus file -> the input shapes it was saved with
LOADABLE = {
    "lyhue1991__keras_tutorial/boston_housing_model.h5": [(None, 13)],
    "fastmachinelearning__hls4ml/example-models__keras__KERAS_gru_model_weights.h5": [(None, 20, 6)],
    "fastmachinelearning__hls4ml/example-prjs__thresholded_relu__thresholded_relu.h5": [(None, 25)],
    "fastmachinelearning__hls4ml/experiments__hostpipe_parallel__keras_model.keras": [(None, 32, 3)],
    "gingerK309__simpleRnn_model/simple_rnn.h5": [(None, 1, 7)],
    "Dobiasd__frugally-deep/keras_export__lstm.h5": [(None, 17, 4), (None, 1, 10), (None, None, 4), (None, 12),
                                                     (None, 12)],
    "rsyamil__gan-hm/gan.h5": [(None, 100)],
    "oarriaga__face_classification/trained_models__emotion_models__fer2013_mini_XCEPTION.102-0.66.hdf5":
        [(None, 64, 64, 1)],
    "dawn0829__ecgclassification/模型_DNN_new.h5": [(None, 250)],
    "arjun612410__CineSense-Movie-Review-Sentiment-Analysis/simple_rnn.h5": [(32, 100)],
    "AdjoaPanyin__Stock_Price_RNN/model.keras": [(None, 10, 6)],
    "LucieSvc__PMD-IA_Nanotag/ae_model.keras": [(None, 480, 480, 3)],
}

# corpus file -> (exit code without --unsafe, with --unsafe, fragment of the reason)
REFUSED = {
    "fastmachinelearning__example-models/keras__garnet_3layer_weights.h5": (5, 4, "GarNetStack"),
    "AlgoDM-Fall2023-Team2__Visual-Search-Using-Variational-Autoencoders/model.keras": (5, 4, "VAE"),
    "mmoffatt2__smart_doorlock/siamese_model.keras": (5, 4, "calculate_difference"),
    "majianjia__nnom/examples__mnist-densenet__model__keras_mnist_model.h5__keras_mnist_model.h5": (4, 4, "bytecode"),
    "naokishibuya__car-behavioral-cloning/model.h5": (4, 4, "bytecode"),
}

SHORT = {name: name.split("/")[0].split("__")[0] + ":" + name.rsplit("/", 1)[-1][:24] for name in LOADABLE}


@pytest.fixture(scope="module")
def models():
    """Each corpus model loaded once for the whole module."""
    from wtool.graph.model import load_model

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(CORPUS / name)
        return cache[name]

    return get


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


def model_arrays(model) -> dict[str, np.ndarray]:
    from wtool.store.model_paths import weight_paths

    return {path: np.asarray(var.numpy()) for path, var in weight_paths(model)}


def assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def random_batch(model, batch: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for tensor in model.inputs:
        shape = [batch if i == 0 and d is None else (4 if d is None else d) for i, d in enumerate(tensor.shape)]
        if "int" in str(tensor.dtype):
            out.append(rng.integers(0, 10, size=shape).astype(str(tensor.dtype)))
        else:
            out.append(rng.standard_normal(shape).astype("float32"))
    return out


# --- corpus: loads, shapes, weights ---------------------------------------------------------


@pytest.mark.parametrize("name", list(LOADABLE), ids=[SHORT[n] for n in LOADABLE])
def test_corpus_model_loads_with_saved_shape_and_exact_weights(models, name):
    model = models(name)
    assert [tuple(t.shape) for t in model.inputs] == LOADABLE[name]
    assert_bitwise(model_arrays(model), store_arrays(CORPUS / name))
    inputs = random_batch(model, batch=LOADABLE[name][0][0] or 3)
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        arr = np.asarray(out)
        assert arr.shape[0] == inputs[0].shape[0]
        assert np.isfinite(arr).all()


def test_batch_input_shape_first_layer_computes_like_numpy(models):
    name = "lyhue1991__keras_tutorial/boston_housing_model.h5"
    model, w = models(name), store_arrays(CORPUS / name)
    x = np.random.default_rng(1).standard_normal((5, 13)).astype("float32")
    hidden = np.maximum(x @ w["dense_29/kernel"] + w["dense_29/bias"], 0)
    expected = hidden @ w["dense_30/kernel"] + w["dense_30/bias"]
    assert np.allclose(np.asarray(model(x)), expected, atol=1e-5)


def test_thresholded_relu_is_exact(models):
    model = models("fastmachinelearning__hls4ml/example-prjs__thresholded_relu__thresholded_relu.h5")
    x = np.array([[-3.0, 0.0, 1.99, 2.0, 2.01, 5.0] + [0.0] * 19], dtype="float32")
    y = np.asarray(model(x))
    assert y[0, :6].tolist() == [0.0, 0.0, 0.0, 0.0, np.float32(2.01), 5.0]  # x > theta, theta = 2


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_gru(x, kernel, recurrent, bias, act, rec_act):
    """Keras GRU with reset_after=False (Keras 2.1): gates z, r, h."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units), dtype="float64")
    for t in range(x.shape[1]):
        xt = x[:, t, :] @ kernel + bias
        z = rec_act(xt[:, :units] + h @ recurrent[:, :units])
        r = rec_act(xt[:, units:2 * units] + h @ recurrent[:, units:2 * units])
        hh = act(xt[:, 2 * units:] + (r * h) @ recurrent[:, 2 * units:])
        h = z * h + (1 - z) * hh
    return h


def test_gru_without_reset_after_computes_like_keras21(models):
    name = "fastmachinelearning__hls4ml/example-models__keras__KERAS_gru_model_weights.h5"
    model, w = models(name), store_arrays(CORPUS / name)
    x = np.random.default_rng(2).standard_normal((4, 20, 6)).astype("float32")
    h = numpy_gru(x, w["gru_selu/kernel"], w["gru_selu/recurrent_kernel"], w["gru_selu/bias"],
                  lambda v: np.maximum(v, 0), _sigmoid)
    d = np.maximum(h @ w["dense_relu/kernel"] + w["dense_relu/bias"], 0)
    logits = d @ w["rnn_densef/kernel"] + w["rnn_densef/bias"]
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert np.allclose(np.asarray(model(x, training=False)), expected, atol=1e-5)


def test_initial_state_inputs_are_connected(models):
    model = models("Dobiasd__frugally-deep/keras_export__lstm.h5")
    inputs = random_batch(model, batch=2)
    before = [np.asarray(o) for o in model(inputs)]
    inputs[3] = inputs[3] + 1.0  # the initial h of lstm_15
    after = [np.asarray(o) for o in model(inputs)]
    names = [t.name for t in model.outputs]
    changed = [n for n, a, b in zip(names, before, after, strict=True) if not np.array_equal(a, b)]
    assert len(changed) == 3  # exactly lstm_15's three outputs depend on its initial state
    assert len(before) == 17


def test_nested_models_keep_their_structure(models):
    model = models("rsyamil__gan-hm/gan.h5")
    assert [layer.name for layer in model.layers] == ["input_3", "model_1", "model_2"]
    assert tuple(model.outputs[0].shape) == (None, 1)


# --- refused files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REFUSED), ids=[n.split("__")[0] for n in REFUSED])
def test_files_that_need_code_are_refused_with_reason(name):
    from wtool.graph.model import check_graph, load_model

    safe_code, unsafe_code, fragment = REFUSED[name]
    result = check_graph(CORPUS / name)
    assert result.exit_code == safe_code
    assert any(fragment in r for r in result.reasons)
    assert check_graph(CORPUS / name, unsafe=True).exit_code == unsafe_code
    expected = UnsafeError if safe_code == 5 else IncompatibleError
    with pytest.raises(expected, match=fragment):
        load_model(CORPUS / name)
    with pytest.raises(IncompatibleError, match=fragment):
        load_model(CORPUS / name, unsafe=True)


def test_check_ok_lists_translations():
    from wtool.graph.model import check_graph

    result = check_graph(CORPUS / "lyhue1991__keras_tutorial/boston_housing_model.h5")
    assert result.ok and result.exit_code == 0
    assert any("(None, 13)" in c for c in result.changes)
    assert result.to_dict()["translations"] == result.changes
    assert check_graph(CORPUS / "AdjoaPanyin__Stock_Price_RNN/model.keras").loader == "keras"


def test_weights_only_file_needs_arch():
    from wtool.graph.model import check_graph, load_model

    name = CORPUS / "lyhue1991__keras_tutorial/model_weights.h5"
    assert check_graph(name).status == "no-graph"
    with pytest.raises(IncompatibleError, match="weights-only") as info:
        load_model(name)
    assert "--arch" in info.value.hint


# --- re-save in Keras 3 -----------------------------------------------------------------------

RESAVE = [
    "lyhue1991__keras_tutorial/boston_housing_model.h5",
    "fastmachinelearning__hls4ml/example-models__keras__KERAS_gru_model_weights.h5",
    "fastmachinelearning__hls4ml/experiments__hostpipe_parallel__keras_model.keras",
    "Dobiasd__frugally-deep/keras_export__lstm.h5",
    "rsyamil__gan-hm/gan.h5",
    "fastmachinelearning__hls4ml/example-prjs__thresholded_relu__thresholded_relu.h5",
]


@pytest.mark.parametrize("name", RESAVE, ids=[SHORT[n] for n in RESAVE])
def test_keras3_resave_opens_in_keras_own_loader(models, name, tmp_path):
    import keras

    from wtool.graph.model import load_model, save_model

    model = models(name)
    out = tmp_path / "resaved.keras"
    save_model(model, out)
    again = keras.saving.load_model(out)  # Keras's own loader, safe mode
    assert [tuple(t.shape) for t in again.inputs] == LOADABLE[name]
    assert_bitwise(model_arrays(again), model_arrays(model))
    inputs = random_batch(model, seed=5)
    feed = inputs if len(inputs) > 1 else inputs[0]
    a, b = model(feed, training=False), again(feed, training=False)
    for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True):
        assert np.allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    # and wtool reads it back the same way
    assert_bitwise(model_arrays(load_model(out)), model_arrays(model))


def test_weights_only_resave_loads_with_arch(models, tmp_path):
    from wtool.graph.model import load_model, save_model

    name = "lyhue1991__keras_tutorial/boston_housing_model.h5"
    model = models(name)
    out = tmp_path / "boston.weights.h5"
    save_model(model, out)
    again = load_model(out, arch=CORPUS / name)
    assert_bitwise(model_arrays(again), model_arrays(model))


def test_weight_mismatch_names_both_sides(tmp_path):
    from wtool.graph.model import load_model

    bad = tmp_path / "bad.h5"
    shutil.copy(CORPUS / "lyhue1991__keras_tutorial/boston_housing_model.h5", bad)
    bad.chmod(0o644)
    with h5py.File(bad, "r+") as f:
        group = f["model_weights/dense_30/dense_30"]
        del group["kernel:0"]
        group.create_dataset("kernel:0", data=np.zeros((10, 2), dtype="float32"))
    with pytest.raises(IncompatibleError) as info:
        load_model(bad)
    text = info.value.message
    assert "dense_30/kernel" in text and "(10, 1)" in text and "(10, 2)" in text


# --- Keras 1 files, written here in Keras 1's layout -----------------------------------------


def write_keras1_h5(path: Path, config: dict, layers: list[tuple[str, list[tuple[str, np.ndarray]]]],
                    backend: str | None = None) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        if backend:
            f.attrs["backend"] = backend.encode()
        f.attrs["model_config"] = json.dumps(config).encode()
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        for name, weights in layers:
            sub = group.create_group(name)
            sub.attrs["weight_names"] = np.array([w.encode() for w, _ in weights])
            for w, array in weights:
                sub.create_dataset(w, data=array)


def _k1_rnn(name: str, cls: str, units: int, **extra):
    return {"class_name": cls, "config": {
        "name": name, "output_dim": units, "init": "glorot_uniform", "inner_init": "orthogonal",
        "activation": "tanh", "inner_activation": "sigmoid", "W_regularizer": None, "U_regularizer": None,
        "b_regularizer": None, "dropout_W": 0.0, "dropout_U": 0.0, "go_backwards": False, "stateful": False,
        "unroll": False, "consume_less": "cpu", "trainable": True, **extra}}


@pytest.fixture(scope="module")
def keras1_rnn(tmp_path_factory):
    """Keras 1.2 Sequential (list config): Convolution1D -> LSTM (12 per-gate arrays) -> GRU (9) -> Dense."""
    rng = np.random.default_rng(7)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.5).astype("float32")

    conv = [("conv_W", r(2, 1, 3, 3)), ("conv_b", r(3))]
    lstm = [(f"lstm_1_{k}_{g}", r(*shape)) for g in "icfo" for k, shape in (("W", (3, 4)), ("U", (4, 4)),
                                                                              ("b", (4,)))]
    gru = [(f"gru_1_{k}_{g}", r(*shape)) for g in "zrh" for k, shape in (("W", (4, 3)), ("U", (3, 3)), ("b", (3,)))]
    dense = [("dense_1_W", r(3, 2)), ("dense_1_b", r(2))]
    config = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution1D", "config": {
            "name": "conv", "nb_filter": 3, "filter_length": 2, "init": "uniform", "activation": "linear",
            "border_mode": "valid", "subsample_length": 1, "W_regularizer": None, "b_regularizer": None,
            "activity_regularizer": None, "W_constraint": None, "b_constraint": None, "bias": True,
            "input_dim": 3, "input_length": 6, "batch_input_shape": [None, 6, 3], "input_dtype": "float32",
            "trainable": True}},
        _k1_rnn("lstm_1", "LSTM", 4, return_sequences=True, forget_bias_init="one"),
        _k1_rnn("gru_1", "GRU", 3, return_sequences=False),
        {"class_name": "Dense", "config": {
            "name": "dense_1", "output_dim": 2, "init": "glorot_uniform", "activation": "linear",
            "W_regularizer": None, "b_regularizer": None, "activity_regularizer": None, "W_constraint": None,
            "b_constraint": None, "bias": True, "input_dim": 3, "trainable": True}},
    ]}
    path = tmp_path_factory.mktemp("k1") / "keras1_rnn.h5"
    write_keras1_h5(path, config, [("conv", conv), ("lstm_1", lstm), ("gru_1", gru), ("dense_1", dense)])
    return path, dict(conv + lstm + gru + dense)


def numpy_keras1_rnn(x, w):
    # Convolution1D, valid, TensorFlow correlation; kernel (length, 1, in, filters)
    k = w["conv_W"][:, 0]
    seq = np.stack([sum(x[:, t + j] @ k[j] for j in range(2)) for t in range(x.shape[1] - 1)], axis=1) + w["conv_b"]
    h = np.zeros((x.shape[0], 4))
    c = np.zeros((x.shape[0], 4))
    outs = []
    for t in range(seq.shape[1]):
        xt = seq[:, t]

        def gate(g, xt=xt, h=h):
            return xt @ w[f"lstm_1_W_{g}"] + h @ w[f"lstm_1_U_{g}"] + w[f"lstm_1_b_{g}"]
        i, f, o = _sigmoid(gate("i")), _sigmoid(gate("f")), _sigmoid(gate("o"))
        c = f * c + i * np.tanh(gate("c"))
        h = o * np.tanh(c)
        outs.append(h)
    hg = np.zeros((x.shape[0], 3))
    for xt in outs:
        z = _sigmoid(xt @ w["gru_1_W_z"] + hg @ w["gru_1_U_z"] + w["gru_1_b_z"])
        rr = _sigmoid(xt @ w["gru_1_W_r"] + hg @ w["gru_1_U_r"] + w["gru_1_b_r"])
        hh = np.tanh(xt @ w["gru_1_W_h"] + (rr * hg) @ w["gru_1_U_h"] + w["gru_1_b_h"])
        hg = z * hg + (1 - z) * hh
    return hg @ w["dense_1_W"] + w["dense_1_b"]


def test_keras1_rnn_file_loads_and_computes_like_keras1(keras1_rnn):
    from wtool.graph.model import load_model

    path, w = keras1_rnn
    model = load_model(path)
    assert [tuple(t.shape) for t in model.inputs] == [(None, 6, 3)]
    x = np.random.default_rng(3).standard_normal((5, 6, 3)).astype("float32")
    assert np.allclose(np.asarray(model(x)), numpy_keras1_rnn(x, w), atol=1e-5)
    weights = model_arrays(model)
    # the per-gate arrays are fused bitwise, in Keras's gate order i, f, c, o
    fused = np.concatenate([w["lstm_1_W_i"], w["lstm_1_W_f"], w["lstm_1_W_c"], w["lstm_1_W_o"]], axis=-1)
    assert weights["lstm_1/kernel"].tobytes() == fused.tobytes()
    assert weights["dense_1/kernel"].tobytes() == w["dense_1_W"].tobytes()


def test_keras1_theano_channels_first_conv_computes_like_theano(tmp_path):
    """Convolution2D(dim_ordering='th') trained with Theano (true convolution) -> MaxPooling2D -> Flatten -> Dense.

    4 filters on a 4-wide output: the case where Keras 3's TensorFlow `add` puts a channels-first
    bias on the wrong axis, which the translation avoids by running the convolution channels-last.
    """
    from wtool.graph.model import load_model

    rng = np.random.default_rng(11)
    kernel = rng.standard_normal((4, 2, 3, 2)).astype("float32")  # (filters, in, rows, cols)
    bias = rng.standard_normal(4).astype("float32")
    dense_w = rng.standard_normal((4 * 2 * 2, 2)).astype("float32")
    dense_b = rng.standard_normal(2).astype("float32")
    config = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution2D", "config": {
            "name": "conv", "nb_filter": 4, "nb_row": 3, "nb_col": 2, "init": "glorot_uniform",
            "activation": "linear", "border_mode": "valid", "subsample": [1, 1], "dim_ordering": "th",
            "W_regularizer": None, "b_regularizer": None, "activity_regularizer": None, "W_constraint": None,
            "b_constraint": None, "bias": True, "batch_input_shape": [None, 2, 6, 5], "input_dtype": "float32",
            "trainable": True}},
        {"class_name": "MaxPooling2D", "config": {"name": "pool", "pool_size": [2, 2], "strides": [2, 2],
                                                  "border_mode": "valid", "dim_ordering": "th", "trainable": True}},
        {"class_name": "Flatten", "config": {"name": "flatten", "trainable": True}},
        {"class_name": "Dense", "config": {"name": "dense", "output_dim": 2, "init": "glorot_uniform",
                                           "activation": "linear", "bias": True, "input_dim": 16}},
    ]}
    path = tmp_path / "theano.h5"
    write_keras1_h5(path, config, [("conv", [("conv_W", kernel), ("conv_b", bias)]), ("pool", []), ("flatten", []),
                                   ("dense", [("dense_W", dense_w), ("dense_b", dense_b)])], backend="theano")
    model = load_model(path)
    assert [tuple(t.shape) for t in model.inputs] == [(None, 2, 6, 5)]
    assert model_arrays(model)["conv/kernel"].shape == (3, 2, 2, 4)  # weight paths unchanged
    x = rng.standard_normal((3, 2, 6, 5)).astype("float32")
    flipped = kernel[:, :, ::-1, ::-1]  # convolution = correlation with the flipped kernel
    conv = np.zeros((3, 4, 4, 4))
    for y in range(4):
        for xx in range(4):
            conv[:, :, y, xx] = np.einsum("ncij,fcij->nf", x[:, :, y:y + 3, xx:xx + 2], flipped)
    conv += bias[None, :, None, None]
    pooled = conv.reshape(3, 4, 2, 2, 2, 2).max(axis=(3, 5))
    expected = pooled.reshape(3, -1) @ dense_w + dense_b
    assert np.allclose(np.asarray(model(x)), expected, atol=1e-4)


def test_channels_first_functional_convolutions_keep_their_wiring(tmp_path):
    """tf.keras channels_first Conv2D -> Conv2D (both outputs used): rebuilt channels-last inside Permutes."""
    import keras

    from wtool.graph.model import load_model

    rng = np.random.default_rng(12)
    inp = keras.Input((3, 5, 4), name="x")
    c1 = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="c1")
    c2 = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="c2")
    a = c1(inp)
    b = c2(a)
    reference = keras.Model(inp, [a, keras.layers.Add(name="add")([a, b])])
    for v in reference.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype("float32"))
    path = tmp_path / "cf.h5"
    reference.save(path)  # Keras 3's own legacy .h5: loaded through the translation by wtool
    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = "2.15.0"  # as tf.keras 2.15 would have written it
    model = load_model(path)
    x = rng.standard_normal((2, 3, 5, 4)).astype("float32")

    def correct(t):  # channels-last computation of the same layers, as a reference
        out = []
        h = np.transpose(t, (0, 2, 3, 1))
        for layer in (c1, c2):
            ref = keras.layers.Conv2D(4, 3, padding="same")
            ref.build(h.shape)
            ref.set_weights(layer.get_weights())
            h = np.asarray(ref(h))
            out.append(np.transpose(h, (0, 3, 1, 2)))
        return out[0], out[0] + out[1]

    want_a, want_sum = correct(x)
    got_a, got_sum = (np.asarray(t) for t in model(x))
    assert np.allclose(got_a, want_a, atol=1e-4) and np.allclose(got_sum, want_sum, atol=1e-4)
    assert_bitwise(model_arrays(model), model_arrays(reference))


def test_keras1_functional_merge_loads(tmp_path):
    from wtool.graph.model import load_model

    rng = np.random.default_rng(5)
    wa, wb = rng.standard_normal((3, 2)).astype("float32"), rng.standard_normal((4, 2)).astype("float32")
    wo = rng.standard_normal((4, 1)).astype("float32")

    def inp(name, n):
        return {"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                "config": {"batch_input_shape": [None, n], "input_dtype": "float32", "sparse": False, "name": name}}

    def dense(name, units, src):
        return {"class_name": "Dense", "name": name, "inbound_nodes": [[[src, 0, 0]]],
                "config": {"name": name, "output_dim": units, "init": "glorot_uniform", "activation": "linear",
                           "bias": False, "W_regularizer": None, "b_regularizer": None, "W_constraint": None,
                           "b_constraint": None, "activity_regularizer": None}}

    config = {"class_name": "Model", "config": {
        "name": "model_1", "input_layers": [["a", 0, 0], ["b", 0, 0]], "output_layers": [["out", 0, 0]],
        "layers": [inp("a", 3), inp("b", 4), dense("da", 2, "a"), dense("db", 2, "b"),
                   {"class_name": "Merge", "name": "merge_1", "inbound_nodes": [[["da", 0, 0], ["db", 0, 0]]],
                    "config": {"name": "merge_1", "mode": "concat", "concat_axis": -1, "mode_type": "raw",
                               "output_shape_type": "raw", "output_shape": None, "dot_axes": -1, "arguments": {}}},
                   dense("out", 1, "merge_1")]}}
    path = tmp_path / "merge.h5"
    write_keras1_h5(path, config, [("a", []), ("b", []), ("da", [("da_W", wa)]), ("db", [("db_W", wb)]),
                                   ("merge_1", []), ("out", [("out_W", wo)])])
    model = load_model(path)
    xa, xb = rng.standard_normal((2, 3)).astype("float32"), rng.standard_normal((2, 4)).astype("float32")
    expected = np.concatenate([xa @ wa, xb @ wb], axis=-1) @ wo
    assert np.allclose(np.asarray(model([xa, xb])), expected, atol=1e-5)


# --- the CLI ---------------------------------------------------------------------------------

INFER_FILES = [
    "lyhue1991__keras_tutorial/boston_housing_model.h5",
    "fastmachinelearning__hls4ml/experiments__hostpipe_parallel__keras_model.keras",
    "fastmachinelearning__hls4ml/example-models__keras__KERAS_gru_model_weights.h5",
    "rsyamil__gan-hm/gan.h5",
]


@pytest.mark.parametrize("name", INFER_FILES, ids=[SHORT[n] for n in INFER_FILES])
def test_infer_runs_on_old_files(models, name, tmp_path):
    model = models(name)
    [x] = random_batch(model, batch=4, seed=9)
    np.save(tmp_path / "x.npy", x)
    res = run_cli("infer", CORPUS / name, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    y = np.load(tmp_path / "y.npy")
    assert np.allclose(y, np.asarray(model(x, training=False)), atol=1e-5)


@pytest.mark.parametrize("name", list(REFUSED), ids=[n.split("__")[0] for n in REFUSED])
def test_infer_refuses_files_that_need_code(name, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3), dtype="float32"))
    res = run_cli("infer", CORPUS / name, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert res.exit_code == REFUSED[name][0], res
    assert res.stderr.startswith("error: ") and REFUSED[name][2] in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "y.npy").exists()


# --- compile settings and bare configs -------------------------------------------------------


def test_old_training_config_compiles_when_asked():
    from wtool.graph.model import load_model

    model = load_model(CORPUS / "rsyamil__gan-hm/gan.h5", compile=True)
    assert model.compiled and type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.0002)
    assert float(model.optimizer.beta_1) == pytest.approx(0.5)
    assert model.loss == "binary_crossentropy"


def test_old_json_config_builds_a_model():
    """`model.to_json()` of Keras 2 (what `wtool new --config` is given) goes through the translation."""
    from wtool.graph.model import config_to_model

    with h5py.File(CORPUS / "lyhue1991__keras_tutorial/boston_housing_model.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
    config["keras_version"], config["backend"] = "2.2.4", "tensorflow"
    model = config_to_model(config, source="boston.json")
    assert [tuple(t.shape) for t in model.inputs] == [(None, 13)]
    assert [tuple(v.shape) for v in model.weights] == [(13, 10), (10,), (10, 1), (1,)]
    assert np.asarray(model.weights[0].numpy()).any()  # a fresh model: initialised, not zeros


def _to_cudnn(kind: str, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
    """Keras 2's own LSTM/GRU -> CuDNN conversion (the inverse of what loading does)."""
    n = 4 if kind == "lstm" else 3

    def per_gate(k, fn):
        return np.hstack([fn(g) for g in np.hsplit(k, n)])

    kernel = per_gate(kernel, lambda g: g.T.reshape(g.shape, order="C"))
    recurrent = per_gate(recurrent, lambda g: g.T)
    bias = np.tile(0.5 * bias, 2) if kind == "lstm" else bias.reshape(-1)
    return [kernel, recurrent, bias]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_layers_load_as_plain_rnns(kind, tmp_path):
    import keras

    from wtool.graph.model import load_model

    rng = np.random.default_rng(13)
    units, features = 3, 2
    layer = keras.layers.LSTM(units) if kind == "lstm" else keras.layers.GRU(units, reset_after=True)
    reference = keras.Sequential([keras.Input((5, features)), layer])
    for var in reference.weights:
        var.assign(rng.standard_normal(tuple(var.shape)).astype("float32") * 0.5)
    kernel, recurrent, bias = (np.asarray(v.numpy()) for v in reference.weights)
    cls = "CuDNNLSTM" if kind == "lstm" else "CuDNNGRU"
    name = f"cu_dnn{kind}_1"
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": cls, "config": {"name": name, "trainable": True, "batch_input_shape": [None, 5, features],
                                       "dtype": "float32", "units": units, "return_sequences": False,
                                       "return_state": False, "stateful": False, "go_backwards": False,
                                       "kernel_initializer": {"class_name": "VarianceScaling", "config": {}},
                                       "recurrent_initializer": {"class_name": "Orthogonal", "config": {}},
                                       "bias_initializer": {"class_name": "Zeros", "config": {}}}}]}}
    arrays = _to_cudnn(kind, kernel, recurrent, bias)
    path = tmp_path / "cudnn.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = b"2.2.4", b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([name.encode()])
        sub = g.create_group(name)
        names = [f"{name}/{w}:0" for w in ("kernel", "recurrent_kernel", "bias")]
        sub.attrs["weight_names"] = np.array([n.encode() for n in names])
        for n, a in zip(names, arrays, strict=True):
            sub.create_dataset(n, data=a)
    model = load_model(path)
    x = rng.standard_normal((4, 5, features)).astype("float32")
    assert np.allclose(np.asarray(model(x)), np.asarray(reference(x)), atol=1e-5)


RESAVE_CLI = [
    "lyhue1991__keras_tutorial/boston_housing_model.h5",
    "fastmachinelearning__hls4ml/example-models__keras__KERAS_gru_model_weights.h5",
    "rsyamil__gan-hm/gan.h5",
]


@pytest.mark.parametrize("name", RESAVE_CLI, ids=[SHORT[n] for n in RESAVE_CLI])
def test_cli_resave_of_old_file_opens_in_keras(models, name, tmp_path):
    """`transfer OLD.h5 --replace-head` and `set-weights OLD.h5 -o NEW.keras` write plain Keras 3 files."""
    import keras

    old = model_arrays(models(name))
    if "gan" not in name:  # gan.h5's last layer is a nested model: not a head transfer can replace
        head = tmp_path / "head.keras"
        res = run_cli("transfer", CORPUS / name, "--replace-head", "3", "-o", head)
        assert res.exit_code == 0, res
        model = keras.saving.load_model(head)
        assert [tuple(t.shape) for t in model.inputs] == LOADABLE[name]
        assert model.outputs[0].shape[-1] == 3
        new = model_arrays(model)
        kept = [p for p in old if p in new and old[p].shape == new[p].shape]
        assert len(kept) >= len(old) - 2  # everything but the replaced head, bitwise
        assert sum(old[p].tobytes() == new[p].tobytes() for p in kept) >= len(old) - 2

    edited = tmp_path / "edited.keras"
    res = run_cli("set-weights", CORPUS / name, "--init", "*/bias=zeros", "-o", edited)
    assert res.exit_code == 0, res
    again = keras.saving.load_model(edited)
    assert [tuple(t.shape) for t in again.inputs] == LOADABLE[name]
    for path, value in model_arrays(again).items():
        if path.endswith("/bias"):
            assert not value.any()
        else:
            assert value.tobytes() == old[path].tobytes()
