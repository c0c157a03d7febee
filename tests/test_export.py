"""`wtool export`: SavedModel and TFLite through Keras's model.export, run and compared with Keras."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES, run_cli


def test_saved_model_runs_like_keras(tmp_path):
    out = tmp_path / "sm"
    res = run_cli("export", SAMPLES / "nested.keras", out, "--format", "saved_model", "--atol", "1e-5", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["ok"] and doc["max_abs_diff"] <= 1e-5 and doc["inputs"][0]["shape"] == [None, 16]
    import tensorflow as tf

    from wtool.graph.model import load_model

    x = np.random.default_rng(5).standard_normal((7, 16)).astype(np.float32)
    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    name = next(iter(signature.structured_input_signature[1]))
    got = next(iter(signature(**{name: tf.constant(x)}).values())).numpy()
    want = np.asarray(load_model(SAMPLES / "nested.keras")(x, training=False))
    np.testing.assert_allclose(got, want, atol=1e-5)
    res = run_cli("export", SAMPLES / "nested.keras", out, "--format", "saved_model")
    assert res.exit_code == 2 and "exists" in res.stderr  # never over an existing directory


def test_tflite_and_atol(tmp_path, monkeypatch):
    out = tmp_path / "m.tflite"
    res = run_cli("export", SAMPLES / "cnn.keras", out, "--format", "tflite", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["max_abs_diff"] < 1e-4 and out.stat().st_size > 0
    from wtool.ops import export

    real = export._run_tflite
    monkeypatch.setattr(export, "_run_tflite", lambda *a: [o + 1.0 for o in real(*a)])  # a broken converter
    res = run_cli("export", SAMPLES / "cnn.keras", tmp_path / "b.tflite", "--format", "tflite", "--atol", "0.5",
                  "--json")
    assert res.exit_code == 1
    assert res.json()["ok"] is False and res.json()["max_abs_diff"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("args", "message"), [
    (["m.txt", "--format", "tflite"], "must end in .tflite"),
    (["m.onnx", "--format", "onnx"], "needs"),
    (["m.tflite", "--format", "tflite", "--batch", "0"], "--batch"),
])
def test_export_usage_errors(tmp_path, args, message):
    try:
        import onnxruntime  # noqa: F401
        if message == "needs":
            pytest.skip("the onnx extra is installed")
    except ImportError:
        pass
    res = run_cli("export", SAMPLES / "mlp.keras", tmp_path / args[0], *args[1:])
    assert res.exit_code == 2 and message in res.stderr
    assert not (tmp_path / args[0]).exists()
