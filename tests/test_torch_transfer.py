"""`transfer SRC.safetensors TARGET --layout torch`: a PyTorch state dict described in numpy (no torch),
transferred into a Keras model, then `infer` checked against a numpy forward pass with PyTorch semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

RNG = np.random.default_rng(16)
EPS = 1e-5  # PyTorch BatchNorm's default; the Keras target uses the same


def _r(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------- PyTorch semantics in numpy


def conv2d(x, w, b, groups=1):
    """x (N, C, H, W), w (O, C/groups, kH, kW): cross-correlation, stride 1, no padding, as torch."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, wd - kw + 1), np.float64)
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                out[:, oc] += np.einsum("nchw,c->nhw", xs[:, :, i:i + out.shape[2], j:j + out.shape[3]], w[oc, :, i, j])
    return out + b[None, :, None, None]


def batchnorm(x, weight, bias, mean, var):
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) * weight.reshape(shape) + bias.reshape(shape)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.LSTM, batch_first, one layer, gates (i, f, g, o); all hidden states."""
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = np.split(gates, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, axis=1)


def gru(x, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRU, batch_first, one layer, gates (r, z, n); the last hidden state."""
    h = np.zeros((x.shape[0], w_hh.shape[1]))
    for t in range(x.shape[1]):
        gi = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        ir, iz, inn = np.split(gi, 3, axis=1)
        hr, hz, hn = np.split(gh, 3, axis=1)
        r, z = sigmoid(ir + hr), sigmoid(iz + hz)
        n = np.tanh(inn + r * hn)
        h = (1 - z) * n + z * h
    return h


def linear(x, w, b):
    return x @ w.T + b


def _save(path, tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The Keras targets (fresh values) and the PyTorch-layout state dicts."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("torch")
    cnn = keras.Sequential([
        keras.Input((7, 7, 3)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.BatchNormalization(epsilon=EPS, name="bn"),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(2, depth_multiplier=2, name="dw"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5, activation="relu", name="fc1"),
        keras.layers.Dense(3, name="fc2"),
    ], name="cnn")
    cnn.save(d / "cnn.keras")
    rnn = keras.Sequential([
        keras.Input((5, 4)),
        keras.layers.LSTM(6, return_sequences=True, name="lstm"),
        keras.layers.GRU(3, name="gru"),
        keras.layers.Dense(2, name="head"),
    ], name="rnn")
    rnn.save(d / "rnn.keras")
    cnn_sd = {
        "model.features.0.weight": _r(4, 3, 3, 3), "model.features.0.bias": _r(4),
        "model.features.1.weight": _r(4) + 1, "model.features.1.bias": _r(4),
        "model.features.1.running_mean": _r(4), "model.features.1.running_var": np.abs(_r(4)) + 0.5,
        "model.features.1.num_batches_tracked": np.array(7, np.int64),
        "model.features.3.weight": _r(8, 1, 2, 2), "model.features.3.bias": _r(8),
        "model.fc1.weight": _r(5, 8), "model.fc1.bias": _r(5),
        "model.fc2.weight": _r(3, 5), "model.fc2.bias": _r(3),
    }
    rnn_sd = {
        "module.lstm.weight_ih_l0": _r(24, 4), "module.lstm.weight_hh_l0": _r(24, 6),
        "module.lstm.bias_ih_l0": _r(24), "module.lstm.bias_hh_l0": _r(24),
        "module.gru.weight_ih_l0": _r(9, 6), "module.gru.weight_hh_l0": _r(9, 3),
        "module.gru.bias_ih_l0": _r(9), "module.gru.bias_hh_l0": _r(9),
        "module.head.weight": _r(2, 3), "module.head.bias": _r(2),
    }
    return {"dir": d, "cnn": d / "cnn.keras", "rnn": d / "rnn.keras",
            "cnn_sd": cnn_sd, "cnn_st": _save(d / "cnn.safetensors", cnn_sd),
            "rnn_sd": rnn_sd, "rnn_st": _save(d / "rnn.safetensors", rnn_sd)}


def _infer(model, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    res = run_cli("infer", model, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    return np.load(tmp_path / "y.npy")


def test_cnn_from_pytorch_layout_matches_a_pytorch_forward_pass(models, tmp_path):
    out = tmp_path / "cnn_torch.keras"
    maps = tmp_path / "maps.txt"
    maps.write_text("# torch module = keras layer\nfeatures.0=conv\nfeatures.1=bn\n\nfeatures.3=dw\n")
    res = run_cli("transfer", models["cnn_st"], models["cnn"], "-o", out, "--layout", "torch", "--prefix", "auto",
                  "--map-file", maps, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["prefix"] == "model." and doc["counts"]["transferred"] == 12
    assert doc["ignored_from_source"] == ["model.features.1.num_batches_tracked"]
    assert doc["missing_in_source"] == [] and doc["unused_from_source"] == []
    conv = {p["target"]: p["conversion"] for p in doc["transferred"]}
    assert conv["conv/kernel"] == "transpose(2, 3, 1, 0)" and conv["fc1/kernel"] == "transpose(1, 0)"
    assert any("num_batches_tracked" in n for n in doc["notes"])

    sd = models["cnn_sd"]
    x = RNG.standard_normal((4, 7, 7, 3)).astype(np.float32)
    t = x.transpose(0, 3, 1, 2).astype(np.float64)  # NHWC -> NCHW for the PyTorch side
    t = conv2d(t, sd["model.features.0.weight"], sd["model.features.0.bias"])
    t = batchnorm(t, sd["model.features.1.weight"], sd["model.features.1.bias"],
                  sd["model.features.1.running_mean"], sd["model.features.1.running_var"])
    t = np.maximum(t, 0)
    t = conv2d(t, sd["model.features.3.weight"], sd["model.features.3.bias"], groups=4)
    t = t.mean(axis=(2, 3))
    t = np.maximum(linear(t, sd["model.fc1.weight"], sd["model.fc1.bias"]), 0)
    want = linear(t, sd["model.fc2.weight"], sd["model.fc2.bias"])
    got = _infer(out, x, tmp_path)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lstm_and_gru_gate_orders(models, tmp_path):
    out = tmp_path / "rnn_torch.keras"
    res = run_cli("transfer", models["rnn_st"], models["rnn"], "-o", out, "--layout", "torch", "--prefix",
                  "module.", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["counts"]["transferred"] == 8  # LSTM 3, GRU 3 (biases combined), Dense 2
    sources = {p["target"]: p["source"] for p in doc["transferred"]}
    assert sources["lstm/bias"] == "module.lstm.bias_ih_l0 + module.lstm.bias_hh_l0"
    conv = {p["target"]: p["conversion"] for p in doc["transferred"]}
    assert conv["gru/bias"] == "stack(bias_ih, bias_hh), gates (r, z, n) -> (z, r, h)"
    sd = models["rnn_sd"]
    x = RNG.standard_normal((3, 5, 4)).astype(np.float32)
    h = lstm(x.astype(np.float64), *(sd[f"module.lstm.{k}"] for k in ("weight_ih_l0", "weight_hh_l0",
                                                                      "bias_ih_l0", "bias_hh_l0")))
    h = gru(h, *(sd[f"module.gru.{k}"] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
    want = linear(h, sd["module.head.weight"], sd["module.head.bias"])
    np.testing.assert_allclose(_infer(out, x, tmp_path), want, rtol=1e-4, atol=1e-5)


def test_strict_by_default_and_the_report(models, tmp_path):
    sd = dict(models["cnn_sd"])
    sd["model.fc1.weight"] = _r(5, 9)  # wrong in-features
    sd["model.extra.weight"] = _r(2, 2)
    bad = _save(tmp_path / "bad.safetensors", sd)
    out = tmp_path / "o.keras"
    args = ["transfer", bad, models["cnn"], "-o", out, "--layout", "torch", "--prefix", "auto",
            "--map", "features.0=conv", "--map", "features.1=bn", "--map", "features.3=dw"]
    res = run_cli(*args, "--json")
    assert res.exit_code == 4 and not out.exists()
    doc = json.loads(res.stdout)
    assert [p["target"] for p in doc["mismatched"]] == ["fc1/kernel"]
    assert doc["mismatched"][0]["source_shape"] == [9, 5] and doc["mismatched"][0]["target_shape"] == [8, 5]
    assert doc["unused_from_source"] == ["model.extra.weight"]
    res = run_cli(*args, "--skip-mismatch", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["counts"]["transferred"] == 11 and doc["counts"]["skipped"] == 1
    from wtool.store import open_model

    with open_model(models["cnn"]) as before, open_model(out) as after:
        np.testing.assert_array_equal(after.read("fc1/kernel"), before.read("fc1/kernel"))  # kept as it was
        np.testing.assert_array_equal(after.read("fc2/kernel"), sd["model.fc2.weight"].T)


def test_keras_layout_safetensors_round_trip_and_usage_errors(models, tmp_path):
    """A wtool-written .safetensors (keys = wtool paths) transfers by name; --layout torch needs safetensors."""
    st = tmp_path / "cnn.safetensors"
    assert run_cli("inspect", models["cnn"], "--export", st).exit_code == 0
    out = tmp_path / "back.weights.h5"
    res = run_cli("transfer", st, models["cnn"], "-o", out)
    assert res.exit_code == 0, res
    assert run_cli("diff", models["cnn"], out).exit_code == 0
    res = run_cli("transfer", models["cnn"], models["cnn"], "-o", tmp_path / "x.keras", "--layout", "torch")
    assert res.exit_code == 2 and "--layout torch reads a .safetensors" in res.stderr


def test_attention_projections_reshaped_into_heads(models, tmp_path):
    """Linear q/k/v/out projections (E, E) into MultiHeadAttention's EinsumDense kernels (E, heads, dh)."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    e, heads, dh, t = 8, 2, 4, 3
    inp = keras.Input((t, e))
    attn = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=dh, name="mha")
    target = tmp_path / "attn.keras"
    keras.Model(inp, attn(inp, inp)).save(target)
    sd = {f"encoder.attn.{n}.{v}": (_r(e, e) if v == "weight" else _r(e))
          for n in ("query", "key", "value", "out") for v in ("weight", "bias")}
    src = _save(tmp_path / "attn.safetensors", sd)
    out = tmp_path / "attn_torch.keras"
    res = run_cli("transfer", src, target, "-o", out, "--layout", "torch", "--prefix", "encoder.",
                  "--map", r"re:attn\.(query|key|value)=mha/\1", "--map", "attn.out=mha/attention_output", "--json")
    assert res.exit_code == 0, res
    conv = {p["target"]: p["conversion"] for p in res.json()["transferred"]}
    assert conv["mha/query/kernel"] == "transpose(1, 0), reshape (8, 2, 4)"
    assert conv["mha/attention_output/kernel"] == "transpose(1, 0), reshape (2, 4, 8)"
    x = RNG.standard_normal((2, t, e)).astype(np.float32)

    def proj(name, a):
        return linear(a.astype(np.float64), sd[f"encoder.attn.{name}.weight"], sd[f"encoder.attn.{name}.bias"])

    q, k, v = (proj(n, x).reshape(2, t, heads, dh).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = (weights @ v).transpose(0, 2, 1, 3).reshape(2, t, e)
    want = proj("out", context)
    np.testing.assert_allclose(_infer(out, x, tmp_path), want, rtol=1e-4, atol=1e-5)
