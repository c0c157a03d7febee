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
    # preprocessing layers, as Keras's compute_output_shape gives them (sample_models/texts.keras was `out ?`)
    text = keras.Sequential([keras.Input((1,), dtype="string", name="text"),
                             layers.TextVectorization(max_tokens=20, output_sequence_length=6),
                             layers.Embedding(20, 3), layers.GlobalAveragePooling1D(), layers.Dense(2, name="out")],
                            name="text")
    s, n = keras.Input((3,), dtype="string", name="s"), keras.Input((2,), dtype="int64", name="n")
    coded = [layers.TextVectorization(max_tokens=9, output_mode="multi_hot", pad_to_max_tokens=True)(s),
             layers.TextVectorization(split=None)(s), layers.StringLookup(vocabulary=["a", "b"])(s),
             layers.StringLookup(vocabulary=["a"], output_mode="one_hot", max_tokens=4, pad_to_max_tokens=True)(s),
             layers.IntegerLookup(vocabulary=[1, 2])(n), layers.Hashing(5, output_mode="count")(s),
             layers.CategoryEncoding(6, output_mode="one_hot")(n), layers.Discretization([0.5])(n)]
    lookups = keras.Model([s, n], coded, name="lookups")
    return {"cnn": cnn, "seq": seq, "two": two, "text": text, "lookups": lookups}


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


def test_an_unknown_shape_says_where_it_stopped(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4, 2), name="x"), keras.layers.Permute((2, 1), name="swap"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    model.save(tmp_path / "p.keras")
    res = run_cli("inspect", tmp_path / "p.keras")
    assert "outputs         out ? (unknown from layer swap (Permute): wtool does not derive" in res.stdout, res
    doc = run_cli("inspect", tmp_path / "p.keras", "--json").json()
    assert doc["outputs"][0]["shape"] is None and doc["outputs"][0]["unknown"].startswith("layer swap (Permute)")
    res = run_cli("inspect", SAMPLES / "texts.keras")
    assert "outputs         out (None, 2)" in res.stdout


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
