"""`inspect` shows input and output shapes from the config alone, checked against Keras's own
`model.inputs` / `model.outputs` on the same files (.keras and legacy .h5)."""

from __future__ import annotations

import pytest

from tests.conftest import SAMPLES, run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("inspect_shapes")]


def _models(keras):
    layers = keras.layers
    cnn = keras.Sequential([keras.Input((17, 15, 3), name="img"), layers.Conv2D(4, 3, strides=2, name="c1"),
                            layers.Conv2D(5, (3, 2), padding="same", strides=(2, 1), name="c2"),
                            layers.MaxPooling2D(name="p"), layers.BatchNormalization(), layers.Flatten(),
                            layers.Dropout(0.1), layers.Dense(6, name="out")], name="cnn")
    seq = keras.Sequential([keras.Input((9,), dtype="int32", name="tok"), layers.Embedding(50, 4),
                            layers.Conv1D(3, 3, padding="causal", dilation_rate=2), layers.AveragePooling1D(2),
                            layers.Bidirectional(layers.LSTM(5, return_sequences=True)), layers.GRU(3),
                            layers.Reshape((3, 1))], name="seq")
    a, b = keras.Input((8,), name="a"), keras.Input((4, 4, 2), name="b")
    hb = layers.GlobalAveragePooling2D()(layers.Conv2D(3, 1)(b))
    joined = layers.Concatenate(name="cat")([layers.Dense(5)(a), hb])
    two = keras.Model([a, b], [layers.Dense(2, name="p")(joined), layers.Add(name="q")([hb, hb])], name="two")
    return {"cnn": cnn, "seq": seq, "two": two}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("shapes")
    out = {}
    for name, model in _models(keras).items():
        for ext in ("keras", "h5"):
            path = d / f"{name}.{ext}"
            model.save(path)
            out[path] = model
    return out


def _as_list(shape):
    return [None if s is None else int(s) for s in shape]


def test_shapes_equal_keras(saved):
    for path, model in saved.items():
        res = run_cli("inspect", path, "--json")
        assert res.exit_code == 0, res
        doc = res.json()
        assert [i["shape"] for i in doc["inputs"]] == [_as_list(t.shape) for t in model.inputs], path
        assert [i["dtype"] for i in doc["inputs"]] == [t.dtype for t in model.inputs], path
        assert [o["shape"] for o in doc["outputs"]] == [_as_list(t.shape) for t in model.outputs], path


def test_text_output_and_weights_only():
    res = run_cli("inspect", SAMPLES / "cnn.keras")
    assert "inputs          image (None, 28, 28, 1) float32" in res.stdout
    assert "outputs         out (None, 10)" in res.stdout
    res = run_cli("inspect", SAMPLES / "cnn.weights.h5", "--json")
    doc = res.json()
    assert doc["inputs"] is None and doc["outputs"] is None


def test_a_deep_functional_model_needs_no_deep_stack(tmp_path):
    """Shapes are worked out in config order, not by recursion: EfficientNetB7-deep chains (and hostile
    configs) must not end in RecursionError (exit 70). Checked with a stack far shorter than the model."""
    import subprocess
    import sys

    import keras

    x = inp = keras.Input((3,), name="x")
    for i in range(300):
        x = keras.layers.Activation("relu", name=f"a{i}")(x)
    keras.Model(inp, x).save(tmp_path / "deep.keras")
    code = ("import sys; sys.setrecursionlimit(200)\n"
            "from wtool.cli import cli\n"
            f"cli(['inspect', {str(tmp_path / 'deep.keras')!r}, '--json'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(proc.stdout)["outputs"][0]["shape"] == [None, 3]
