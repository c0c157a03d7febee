"""`wtool new`: the compact layer spec, --config, determinism with --seed, bad specs (exit 2)."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.conftest import SAMPLES, run_cli
from wtool.errors import UsageError
from wtool.graph.spec import KINDS, parse_layers, parse_shape


def keras_weights(path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    model = keras.saving.load_model(path, compile=False)
    return model, [w.numpy() for w in model.weights]


# ------------------------------------------------------------------ parsing (no TensorFlow)


def test_parse_xor_spec():
    specs = parse_layers("dense:3:sigmoid:nobias,dense:1:sigmoid:nobias")
    assert [s.kind for s in specs] == ["dense", "dense"]
    assert specs[0].values == {"units": 3, "activation": "sigmoid", "nobias": True}
    assert specs[1].values["units"] == 1


def test_parse_every_kind_and_options():
    specs = parse_layers("conv2d:8:3x3:relu:stride=2:padding=same:name=c1,maxpool:2,avgpool,globalavgpool,"
                         "globalmaxpool,flatten,dropout:0.25,batchnorm:momentum=0.9,layernorm,embedding:100:16:mask,"
                         "lstm:12:seq,gru:8:tanh:nobias,simplernn:4,conv1d:4:5,activation:relu,reshape:4x4,dense:2")
    kinds = {s.kind for s in specs}
    assert kinds == set(KINDS)
    assert specs[0].name == "c1"
    assert specs[0].values["kernel_size"] == (3, 3) and specs[0].values["stride"] == (2,)
    assert specs[9].values == {"input_dim": 100, "output_dim": 16, "mask": True}
    assert specs[10].values["seq"] is True


@pytest.mark.parametrize("shape, expected", [("2", (2,)), ("28,28,1", (28, 28, 1)), ("28x28x1", (28, 28, 1)),
                                             ("None,8", (None, 8))])
def test_parse_shape(shape, expected):
    assert parse_shape(shape) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("dense:3:sigmod", "'sigmod'"),
    ("dense:3:sigmod", "did you mean 'sigmoid'"),
    ("dense", "missing units"),
    ("dense:x", "'x'"),
    ("dense:0", "positive number of units"),
    ("dens:3", "unknown layer kind 'dens'"),
    ("dense:3,,dense:1", "empty layer"),
    ("dropout:1.5", "rate in [0, 1)"),
    ("conv2d:8:3:relu:padding=full", "padding"),
    ("conv2d:8:3:relu:colour=red", "unknown option 'colour'"),
    ("dense:3:name=a,dense:1:name=a", "used twice"),
    ("dense:3:relu:relu", "unexpected field"),
    ("flatten:3", "unexpected field"),
])
def test_bad_spec_names_the_token(spec, fragment):
    with pytest.raises(UsageError) as info:
        parse_layers(spec)
    assert fragment in info.value.message


@pytest.mark.parametrize("args, fragment", [
    (["--input-shape", "2", "--layers", "dense:3:sigmod"], "'sigmod'"),
    (["--input-shape", "2x0", "--layers", "dense:3"], "--input-shape"),
    (["--layers", "dense:3"], "needs --input-shape"),
    ([], "nothing to build"),
    (["--input-shape", "2", "--layers", "dense:1", "--optimizer", "sgd"], "need --loss"),
])
def test_bad_spec_exit_2_without_output(wtool, tmp_path, args, fragment):
    out = tmp_path / "m.keras"
    res = wtool("new", out, *args)
    assert res.exit_code == 2, res
    assert fragment in res.stderr
    assert res.stderr.startswith("error: ")
    assert not out.exists()


@pytest.mark.parametrize("name", ["m.npz", "m.txt", "m.weights.h5"])
def test_bad_output_suffix(wtool, tmp_path, name):
    res = wtool("new", tmp_path / name, "--input-shape", "2", "--layers", "dense:1")
    assert res.exit_code == 2 and "must end in .keras or .h5" in res.stderr
    assert not (tmp_path / name).exists()


# ------------------------------------------------------------------ building (TensorFlow)


@pytest.mark.tf
def test_new_xor_is_the_classic_network_and_seeded(wtool, tmp_path):
    a, b, c = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "c.keras"
    spec = ["--input-shape", "2", "--layers", "dense:3:sigmoid:nobias,dense:1:sigmoid:nobias"]
    for path, seed in ((a, "0"), (b, "0"), (c, "1")):
        res = wtool("new", path, *spec, "--seed", seed)
        assert res.exit_code == 0, res
    model, wa = keras_weights(a)
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "Dense"]
    assert [w.shape for w in wa] == [(2, 3), (3, 1)]  # no biases
    assert [layer.activation.__name__ for layer in model.layers] == ["sigmoid", "sigmoid"]
    _, wb = keras_weights(b)
    _, wc = keras_weights(c)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(wa, wb, strict=True))
    assert any(x.tobytes() != y.tobytes() for x, y in zip(wa, wc, strict=True))


@pytest.mark.tf
def test_new_prints_summary_and_json(wtool, tmp_path):
    out = tmp_path / "cnn.keras"
    res = wtool("new", out, "--input-shape", "28,28,1", "--layers",
                "conv2d:8:3:relu,batchnorm,maxpool,conv2d:16:3x3:relu:padding=same,globalavgpool,dropout:0.25,"
                "dense:10:softmax:name=out", "--seed", "3", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    names = [layer["name"] for layer in doc["model"]["layers"]]
    assert names == ["conv2d", "batchnorm", "maxpool", "conv2d_1", "globalavgpool", "dropout", "out"]
    assert doc["model"]["layers"][0]["output_shape"] == [None, 26, 26, 8]
    assert doc["model"]["layers"][3]["output_shape"] == [None, 13, 13, 16]
    assert doc["model"]["params"] == {"total": 80 + 32 + 1168 + 170, "trainable": 80 + 16 + 1168 + 170,
                                      "non_trainable": 16}
    human = wtool("new", tmp_path / "x.keras", "--input-shape", "2", "--layers", "dense:3:sigmoid:nobias,dense:1")
    assert human.exit_code == 0
    assert "dense_1" in human.stdout and "total 10 params" in human.stdout


@pytest.mark.tf
def test_new_rnn_and_1d_kinds_build(wtool, tmp_path):
    res = wtool("new", tmp_path / "t.keras", "--input-shape", "20", "--layers",
                "embedding:100:16:mask,lstm:12:seq,gru:8:seq,conv1d:4:3:relu,maxpool,simplernn:4,dense:1:sigmoid",
                "--json")
    assert res.exit_code == 0, res
    layers = res.json()["model"]["layers"]
    assert [layer["class"] for layer in layers] == ["Embedding", "LSTM", "GRU", "Conv1D", "MaxPooling1D",
                                                     "SimpleRNN", "Dense"]
    assert res.json()["model"]["input_shape"] == [None, 20]


@pytest.mark.tf
def test_layer_that_does_not_fit_its_input_is_exit_2(wtool, tmp_path):
    res = wtool("new", tmp_path / "m.keras", "--input-shape", "2", "--layers", "dense:4,conv2d:3:3")
    assert res.exit_code == 2, res
    assert "layer 2 'conv2d:3:3'" in res.stderr and "rank-1" in res.stderr
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.tf
def test_new_compiled_model_is_trainable_with_its_defaults(wtool, tmp_path, samples):
    m = tmp_path / "m.keras"
    res = wtool("new", m, "--input-shape", "16", "--layers", "dense:8:relu,dense:4:softmax",
                "--loss", "sparse_categorical_crossentropy", "--optimizer", "sgd", "--lr", "0.05",
                "--metric", "accuracy", "--seed", "0")
    assert res.exit_code == 0, res
    with zipfile.ZipFile(m) as zf:
        cc = json.loads(zf.read("config.json"))["compile_config"]
    assert cc["loss"] == "sparse_categorical_crossentropy"
    assert cc["optimizer"]["class_name"] == "SGD"
    assert abs(cc["optimizer"]["config"]["learning_rate"] - 0.05) < 1e-9
    trained = wtool("train", m, "--data", samples / "nested.npz", "-o", tmp_path / "t.keras", "--epochs", "1",
                    "--seed", "0", "--json", "-q")
    assert trained.exit_code == 0, trained
    doc = trained.json()
    assert doc["optimizer"].startswith("sgd (lr 0.05")
    assert doc["loss"] == "sparse_categorical_crossentropy"
    assert "accuracy" in doc["final"]


@pytest.mark.tf
def test_new_from_config(wtool, tmp_path, samples):
    from wtool.graph.model import import_keras

    keras = import_keras()
    res = wtool("new", tmp_path / "n.keras", "--config", samples / "nested.keras", "--seed", "1", "--json")
    assert res.exit_code == 0, res
    assert [layer["name"] for layer in res.json()["model"]["layers"]] == ["features", "classifier"]
    original, w0 = keras_weights(samples / "nested.keras")
    fresh, w1 = keras_weights(tmp_path / "n.keras")
    assert [w.shape for w in w0] == [w.shape for w in w1]
    assert any(a.tobytes() != b.tobytes() for a, b in zip(w0, w1, strict=True))  # freshly initialized
    # model.to_json() output works too
    cfg = tmp_path / "mlp.json"
    cfg.write_text(keras.saving.load_model(samples / "mlp.keras", compile=False).to_json())
    res = wtool("new", tmp_path / "m.keras", "--config", cfg, "--json")
    assert res.exit_code == 0, res
    assert res.json()["model"]["params"]["total"] == 784 * 64 + 64 + 64 * 10 + 10


@pytest.mark.tf
def test_config_that_needs_code_is_refused(wtool, tmp_path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2.0)])
    cfg = tmp_path / "lambda.json"
    cfg.write_text(model.to_json())
    res = wtool("new", tmp_path / "m.keras", "--config", cfg)
    assert res.exit_code == 5, res
    assert res.stderr.startswith("error: ") and "refused: layer " in res.stderr
    assert "a Lambda layer runs Python code" in res.stderr and "--unsafe" in res.stderr
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("content, code", [(b"", 3), (b"not json", 3), (b'{"a": 1}', 3)])
def test_bad_config_file(wtool, tmp_path, content, code):
    cfg = tmp_path / "c.json"
    cfg.write_bytes(content)
    res = wtool("new", tmp_path / "m.keras", "--config", cfg)
    assert res.exit_code == code, res
    assert res.stderr.startswith("error: ")



@pytest.mark.tf
@pytest.mark.parametrize("args,fragment", [
    (["--input-shape", "65536", "--layers", "dense:65536"], "more than 1,000,000,000 parameters"),  # 4.3e9: no OOM
    (["--input-shape", "300", "--layers", "dense:3", "--max-params", "100"], "more than 100 parameters"),
    (["--input-shape", "3", "--layers", "dense:3,dense:3,dense:1", "--max-layers", "1"], "3 layers (limit 1)"),
])
def test_layers_spec_keeps_the_size_limits(tmp_path, args, fragment):
    res = run_cli("new", tmp_path / "m.keras", *args)
    assert res.exit_code == 3, res
    assert fragment in res.stderr.splitlines()[0] and "--max-" in res.stderr, res.stderr
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.tf
@pytest.mark.parametrize("extra,compiled", [([], "adam, loss sparse_categorical_crossentropy"), (["--no-compile"], None)])
def test_config_with_compile_settings_reports_them(tmp_path, extra, compiled):
    res = run_cli("new", tmp_path / "m.keras", "--config", SAMPLES / "nested.keras", "--json", *extra)
    assert res.exit_code == 0, res
    assert res.json()["compiled"] == compiled


def test_config_given_an_npz_says_what_it_is(tmp_path):
    res = run_cli("new", tmp_path / "m.keras", "--config", SAMPLES / "mlp.npz")
    assert res.exit_code == 3 and "a numpy .npz archive" in res.stderr.splitlines()[0], res
