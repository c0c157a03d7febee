"""Issue 13: graph commands give exactly what Keras gives on the same file (differential tests).

Each model is built once per module, saved by Keras, then run through the real CLI and compared with
`keras.models.load_model(path)(x, training=False)` (or the in-memory model where Keras cannot load it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

TOL = 1e-5


def _keras():
    from wtool.graph.model import import_keras

    return import_keras()


def _infer(model: Path, x: Path, out: Path, *extra: str) -> np.ndarray:
    res = run_cli("infer", model, x, "-o", out, *extra)
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
    got = _infer(model_path, x_path, tmp_path / "y.npy")
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
    got = _infer(d / "e.h5", d / "x.npy", d / "y.npy")
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
