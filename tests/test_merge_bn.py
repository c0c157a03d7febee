"""`wtool merge --recompute-bn --data`: BatchNorm statistics re-estimated on data, against a numpy forward pass."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from conftest import stored_weights as _weights

pytestmark = pytest.mark.tf

EPS = 1e-3  # Keras BatchNormalization's default epsilon


@pytest.fixture(scope="module")
def soup_inputs(tmp_path_factory):
    """Two models of one architecture (Dense -> BN -> Dense -> frozen BN -> Dense), and 80 input rows."""
    import keras

    d = tmp_path_factory.mktemp("merge_bn")
    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((5,), name="x")
        h = keras.layers.Dense(8, name="d1")(inp)
        h = keras.layers.BatchNormalization(name="bn1")(h)
        h = keras.layers.Dense(4, name="d2")(h)
        bn2 = keras.layers.BatchNormalization(name="bn2")
        h = bn2(h)
        out = keras.layers.Dense(1, name="head")(h)
        model = keras.Model(inp, out)
        bn2.trainable = False
        for layer in (model.get_layer("bn1"), bn2):  # averaged statistics that the data will replace
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0 * seed, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 5.0 * seed, "float32"))
            layer.gamma.assign(np.linspace(0.5, 1.5, layer.gamma.shape[0]).astype("float32") * seed)
            layer.beta.assign(np.linspace(-0.2, 0.2, layer.beta.shape[0]).astype("float32"))
        path = d / f"m{seed}.keras"
        model.save(path)
        paths.append(path)
    x = np.random.default_rng(0).normal(size=(80, 5)).astype("float32") * 2 + 1
    np.save(d / "x.npy", x)
    return d, paths, x


def _expected_stats(w, x, batch):
    """update_bn semantics in numpy: batch statistics of each BN's input in training mode, averaged by rows."""
    sums = {k: 0.0 for k in ("m1", "v1", "m2", "v2")}
    for lo in range(0, len(x), batch):
        xb = x[lo:lo + batch].astype(np.float64)
        h1 = xb @ w["d1/kernel"] + w["d1/bias"]
        m1, v1 = h1.mean(0), h1.var(0)
        y1 = (h1 - m1) / np.sqrt(v1 + EPS) * w["bn1/gamma"] + w["bn1/beta"]
        h2 = y1 @ w["d2/kernel"] + w["d2/bias"]
        n = len(xb)
        sums["m1"] = sums["m1"] + n * m1
        sums["v1"] = sums["v1"] + n * v1
        sums["m2"] = sums["m2"] + n * h2.mean(0)
        sums["v2"] = sums["v2"] + n * h2.var(0)
    return {k: v / len(x) for k, v in sums.items()}


def test_recompute_bn_matches_numpy_update_bn(soup_inputs):
    d, paths, x = soup_inputs
    w1, w2 = _weights(paths[0]), _weights(paths[1])
    out = d / "soup.keras"
    res = run_cli("merge", *paths, "--recompute-bn", "--data", d / "x.npy", "--batch-size", "32", "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["counts"]["recomputed"] == 4 and doc["batch_norm"]["rows"] == 80
    assert doc["batch_norm"]["batches"] == 3 and sorted(doc["batch_norm"]["layers"]) == ["bn1", "bn2"]
    got = _weights(out)
    averaged = {k: (w1[k].astype(np.float64) + w2[k]) / 2 for k in w1}
    for k in got:  # everything but the moving statistics is the plain soup
        if "moving" not in k:
            np.testing.assert_allclose(got[k], averaged[k], rtol=1e-6, atol=1e-7)
    want = _expected_stats(averaged, x, 32)
    np.testing.assert_allclose(got["bn1/moving_mean"], want["m1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["bn1/moving_variance"], want["v1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["bn2/moving_mean"], want["m2"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["bn2/moving_variance"], want["v2"], rtol=1e-4, atol=1e-5)
    rows = {w["path"]: w for w in doc["weights"]}
    assert rows["bn2/moving_mean"]["status"] == "recomputed" and len(rows["bn2/moving_mean"]["distances"]) == 2

    import keras  # the result loads in Keras, bn2 still frozen, and predicts with the new statistics

    model = keras.models.load_model(out, compile=False)
    assert model.get_layer("bn2").trainable is False
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(), want["m1"], rtol=1e-4, atol=1e-5)
    assert not list(d.glob(".soup.keras.*")), "staging folder left behind"


def test_recompute_bn_text_report_and_h5_output(soup_inputs, tmp_path):
    d, paths, _ = soup_inputs
    out = tmp_path / "soup.h5"  # a format change goes through Keras once, then the statistics are spliced in
    res = run_cli("merge", *paths, "--recompute-bn", "--data", d / "x.npy", "-o", out)
    assert res.exit_code == 0, res
    assert "4 BatchNorm statistics re-estimated" in res.stdout
    assert "re-estimated on 80 rows" in res.stderr
    w1, w2 = _weights(paths[0]), _weights(paths[1])
    averaged = {k: (w1[k].astype(np.float64) + w2[k]) / 2 for k in w1}
    want = _expected_stats(averaged, soup_inputs[2], 128)  # the default batch size: one batch of 80 rows
    got = _weights(out)
    np.testing.assert_allclose(got["bn2/moving_variance"], want["v2"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["d1/kernel"], averaged["d1/kernel"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--recompute-bn"], 2, "needs --data"),
    (["--data", "{x}"], 2, "goes with --recompute-bn"),
    (["--recompute-bn", "--data", "{x}", "--batch-size", "1"], 2, "--batch-size"),
])
def test_recompute_bn_usage(soup_inputs, tmp_path, extra, code, message):
    d, paths, _ = soup_inputs
    out = tmp_path / "o.keras"
    res = run_cli("merge", *paths, *[e.format(x=d / "x.npy") for e in extra], "-o", out)
    assert res.exit_code == code, res
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_recompute_bn_refusals_write_nothing(soup_inputs, tmp_path):
    from conftest import SAMPLES

    d, paths, _ = soup_inputs
    out = tmp_path / "o.keras"
    np.save(tmp_path / "bad.npy", np.zeros((4, 7), "float32"))
    res = run_cli("merge", *paths, "--recompute-bn", "--data", tmp_path / "bad.npy", "-o", out)
    assert res.exit_code == 4 and "do not fit the model input" in res.stderr, res
    assert not out.exists() and not list(tmp_path.glob(".o.keras.*"))
    mlp = SAMPLES / "mlp.keras"
    res = run_cli("set-weights", mlp, "--init", "*=random_normal", "--seed", "3", "-o", tmp_path / "m2.keras", "-q")
    assert res.exit_code == 0, res
    np.save(tmp_path / "mx.npy", np.zeros((4, 4), "float32"))
    res = run_cli("merge", mlp, tmp_path / "m2.keras", "--recompute-bn", "--data", tmp_path / "mx.npy", "-o", out)
    assert res.exit_code == 4 and "no BatchNormalization layer" in res.stderr, res
    assert not out.exists()


def test_recompute_bn_reads_the_named_npz_array(soup_inputs, tmp_path):
    d, paths, x = soup_inputs
    np.savez(tmp_path / "rows.npz", other=np.zeros((3, 9), "float32"), rows=x)
    res = run_cli("merge", *paths, "--recompute-bn", "--data", tmp_path / "rows.npz", "--x-key", "rows",
                  "-o", tmp_path / "o.keras", "--json")
    assert res.exit_code == 0, res
    assert res.json()["batch_norm"]["rows"] == 80
    res = run_cli("merge", *paths, "--x-key", "rows", "-o", tmp_path / "p.keras")
    assert res.exit_code == 2 and "--x-key goes with --recompute-bn" in res.stderr, res
