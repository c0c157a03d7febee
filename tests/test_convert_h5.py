""".keras -> legacy .h5 at the HDF5 level, checked against Keras's own `save` and `load_model` of the same model.

Each converted file is compared with the .h5 Keras writes for the same model (attributes, name lists,
configs, every dataset's values), loaded by Keras and run on the original's inputs, and diffed by
wtool. Models whose mapping is not certain (nested models, attention) must take the Keras route
and say so. The other direction (Keras 3's legacy .h5 -> .keras) is checked the same way against
Keras's own .keras save.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import SAMPLES, run_cli

HDF5_SAMPLES = ["mlp", "cnn", "lstm", "xor", "two_inputs", "animals", "images"]


def _build_patterns(d):
    """Small models trained one step (the optimizer built, BatchNorm statistics moved)."""
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((8,), name="x")
    shared = keras.layers.Dense(8, activation="tanh", name="shared")
    h = keras.layers.BatchNormalization(name="bn")(shared(x))
    h = shared(h)  # the same layer twice
    h = keras.layers.Dense(8, name="frozen", trainable=False)(h)
    shared_bn = keras.Model(x, keras.layers.Dense(3, name="out")(h), name="shared_bn")
    shared_bn.compile(keras.optimizers.Adam(1e-2), loss=keras.losses.MeanSquaredError())

    rnn = keras.Sequential([keras.Input((5, 4), name="seq"), keras.layers.GRU(6, return_sequences=True, name="gru"),
                            keras.layers.SimpleRNN(3, name="srnn"), keras.layers.Dense(2, name="head")], name="rnn")
    rnn.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss=keras.losses.MeanSquaredError())

    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="d1"),
                              keras.layers.BatchNormalization(name="bn1")], name="inner_seq")
    fi = keras.Input((6,))
    inner_fn = keras.Model(fi, keras.layers.Dense(4, name="d2")(fi), name="inner_fn")
    nested = keras.Model(x, keras.layers.Dense(2, name="top")(inner_fn(inner(x))), name="nested")
    nested.compile("adam", loss=keras.losses.MeanSquaredError())

    q = keras.Input((4, 8), name="q")
    att = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(q, q)
    mha = keras.Model(q, keras.layers.Dense(2, name="o")(att), name="mha_model")
    mha.compile("adam", loss=keras.losses.MeanSquaredError())

    rng = np.random.default_rng(0)
    paths = {}
    for model in (shared_bn, rnn, nested, mha):
        shape = (16, *model.inputs[0].shape[1:])
        model.fit(rng.normal(size=shape).astype("float32"), rng.normal(size=(16, *model.outputs[0].shape[1:])),
                  epochs=1, batch_size=16, verbose=0)
        paths[model.name] = d / f"{model.name}.keras"
        model.save(paths[model.name])
    return paths


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return _build_patterns(tmp_path_factory.mktemp("patterns"))


def _inputs(model):
    rng = np.random.default_rng(1)
    arrays = []
    for t in model.inputs:
        shape = (3, *(d or 4 for d in t.shape[1:]))
        if "int" in str(t.dtype):
            arrays.append(rng.integers(0, 10, shape).astype(t.dtype))
        else:
            arrays.append(rng.uniform(0, 1, shape).astype(t.dtype))
    return arrays


def _h5_tree(path):
    """Everything a legacy .h5 holds: attributes (configs parsed) and every dataset's values."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: [str(x) for x in np.atleast_1d(v)] for k, v in obj.attrs.items()}
            out[name] = (attrs, np.asarray(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        f.visititems(visit)
        out["/"] = ({k: json.loads(v) if k.endswith("_config") else str(v) for k, v in f.attrs.items()}, None)
    return out


def _assert_same_tree(want, got, optimizer=True):
    if not optimizer:
        want = {k: v for k, v in want.items() if not k.startswith("optimizer_weights")}
        got = {k: v for k, v in got.items() if not k.startswith("optimizer_weights")}
    assert sorted(got) == sorted(want)
    for key, (attrs, value) in want.items():
        assert got[key][0] == attrs, key
        if value is not None:
            assert got[key][1].dtype == value.dtype and got[key][1].shape == value.shape, key
            np.testing.assert_array_equal(got[key][1], value, err_msg=key)


def _check_against_keras(src, out, tmp_path, optimizer=True):
    import keras

    original = keras.saving.load_model(src)
    reference = tmp_path / "keras_saved.h5"
    original.save(reference)
    _assert_same_tree(_h5_tree(reference), _h5_tree(out), optimizer)
    converted = keras.saving.load_model(out, compile=False)
    inputs = _inputs(original)
    for a, b in zip(keras.tree.flatten(original.predict(inputs, verbose=0)),
                    keras.tree.flatten(converted.predict(inputs, verbose=0)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert run_cli("diff", src, out).exit_code == 0


@pytest.mark.tf
@pytest.mark.parametrize("name", HDF5_SAMPLES)
def test_samples_convert_at_the_hdf5_level(name, tmp_path):
    """The samples' optimizers were never stepped: Keras writes fresh zero slots, wtool writes none (noted)."""
    out = tmp_path / f"{name}.h5"
    res = run_cli("convert", SAMPLES / f"{name}.keras", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["method"] == "hdf5" and doc["verified"] and "architecture" in doc["kept"]
    built = name == "xor"  # the one sample saved after training
    assert ("optimizer state" in doc["kept"]) == built
    _check_against_keras(SAMPLES / f"{name}.keras", out, tmp_path, optimizer=built)


@pytest.mark.tf
def test_shared_batchnorm_frozen_keep_the_optimizer(patterns, tmp_path):
    import keras

    src, out = patterns["shared_bn"], tmp_path / "shared_bn.h5"
    res = run_cli("convert", src, out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["method"] == "hdf5" and doc["dropped"] == [] and "optimizer state" in doc["kept"]
    _check_against_keras(src, out, tmp_path)  # optimizer_weights included: the .keras's slots, Keras's names
    with h5py.File(out) as f:
        assert len(f["optimizer_weights"].attrs["weight_names"]) == 2 + 2 * 6  # Adam: 2 slots x 6 trainable (frozen excluded)
    # Keras's own loader treats wtool's file as it treats the one Keras wrote
    converted, own = keras.saving.load_model(out), keras.saving.load_model(tmp_path / "keras_saved.h5")
    assert converted.get_layer("frozen").trainable is False
    assert [v.path for v in converted.optimizer.variables] == [v.path for v in own.optimizer.variables]
    for a, b in zip(own.optimizer.variables, converted.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.tf
def test_rnn_cells_and_sgd_momentum(patterns, tmp_path):
    src, out = patterns["rnn"], tmp_path / "rnn.h5"
    res = run_cli("convert", src, out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["method"] == "hdf5" and "optimizer state" in res.json()["kept"]
    _check_against_keras(src, out, tmp_path)


@pytest.mark.tf
@pytest.mark.parametrize(("name", "reason"), [("nested", "inner_seq (Sequential) holds sublayers"),
                                             ("mha_model", "mha (MultiHeadAttention) holds sublayers")])
def test_uncertain_mappings_go_through_keras(patterns, tmp_path, name, reason):
    src, out = patterns[name], tmp_path / f"{name}.h5"
    res = run_cli("convert", src, out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["method"] == "keras"
    assert any(n.startswith("through Keras (TensorFlow)") and reason in n for n in doc["notes"]), doc["notes"]
    _check_against_keras(src, out, tmp_path, optimizer=False)  # a fresh Keras save of a loaded model


def _archive_tree(path):
    import zipfile

    out = {}
    with zipfile.ZipFile(path) as zf, zf.open("model.weights.h5") as fh, h5py.File(fh, "r") as f:
        def visit(name, obj):
            out[name] = ({k: str(v) for k, v in obj.attrs.items()},
                         np.asarray(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        f.visititems(visit)
    return out


def _check_keras_against_keras(src_h5, out, tmp_path):
    """OUT (.keras from a legacy .h5) against Keras's own .keras save of the model it loads from the .h5."""
    import keras

    original = keras.saving.load_model(src_h5, compile=False)
    reference = tmp_path / "keras_saved.keras"
    original.save(reference)
    want = {k: v for k, v in _archive_tree(reference).items() if not k.startswith("optimizer")}
    _assert_same_tree(want, {k: v for k, v in _archive_tree(out).items() if not k.startswith("optimizer")})
    converted = keras.saving.load_model(out)
    inputs = _inputs(original)
    for a, b in zip(keras.tree.flatten(original.predict(inputs, verbose=0)),
                    keras.tree.flatten(converted.predict(inputs, verbose=0)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert run_cli("diff", src_h5, out).exit_code == 0
    return converted


@pytest.mark.tf
@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "xor"])
def test_sample_h5_to_keras_at_the_hdf5_level(name, tmp_path):
    out = tmp_path / f"{name}.keras"
    res = run_cli("convert", SAMPLES / f"{name}.h5", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["method"] == "hdf5" and doc["dropped"] == [] and "optimizer state" in doc["kept"]
    _check_keras_against_keras(SAMPLES / f"{name}.h5", out, tmp_path)


@pytest.mark.tf
@pytest.mark.parametrize("name", ["shared_bn", "rnn"])
def test_round_trip_keeps_the_optimizer_state(patterns, tmp_path, name):
    """.keras -> .h5 -> .keras, both at the HDF5 level: Keras restores the same optimizer state from the result."""
    import keras

    h5, back = tmp_path / f"{name}.h5", tmp_path / f"{name}.keras"
    assert run_cli("convert", patterns[name], h5).exit_code == 0
    res = run_cli("convert", h5, back, "--json")
    assert res.exit_code == 0 and res.json()["method"] == "hdf5", res
    converted = _check_keras_against_keras(h5, back, tmp_path)
    original = keras.saving.load_model(patterns[name])
    assert len(converted.optimizer.variables) == len(original.optimizer.variables) > 2
    for a, b in zip(original.optimizer.variables, converted.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.tf
def test_nested_h5_to_keras_goes_through_keras(tmp_path):
    res = run_cli("convert", SAMPLES / "nested.h5", tmp_path / "n.keras", "--json")
    assert res.exit_code == 0, res
    assert res.json()["method"] == "keras"
    assert "through Keras (TensorFlow): layer features is a nested model" in res.json()["notes"]


@pytest.mark.tf
def test_hdf5_level_conversions_do_not_import_tensorflow(patterns, tmp_path):
    jobs = [(str(SAMPLES / f"{n}.keras"), str(tmp_path / f"{n}.h5")) for n in HDF5_SAMPLES]
    jobs += [(str(patterns[n]), str(tmp_path / f"{n}.h5")) for n in ("shared_bn", "rnn")]
    jobs += [(str(SAMPLES / f"{n}.h5"), str(tmp_path / f"{n}-from-h5.keras")) for n in ("mlp", "cnn", "lstm", "xor")]
    jobs += [(str(SAMPLES / "nested.keras"), str(tmp_path / "n.weights.h5")),
             (str(SAMPLES / "nested.keras"), str(tmp_path / "n.weights.json"))]
    code = ("import json, sys\nfrom wtool.cli import cli\n"
            "for src, out in json.loads(sys.argv[1]):\n"
            "    cli(['convert', src, out, '-q'], standalone_mode=False)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert all((tmp_path / out.rsplit("/", 1)[-1]).is_file() for _, out in jobs)


def test_truncated_archive_exit_3_nothing_written(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes((SAMPLES / "mlp.keras").read_bytes()[:5000])
    res = run_cli("convert", bad, tmp_path / "o.h5")
    assert res.exit_code == 3, res
    assert res.stderr.startswith("error: ") and res.stderr.count("error:") == 1 and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.keras"]


def test_failure_while_copying_leaves_nothing(tmp_path, monkeypatch):
    from wtool.store import write as store_write

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_write, "copy_bytes", broken)
    res = run_cli("convert", SAMPLES / "mlp.keras", tmp_path / "o.h5")
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res  # ENOSPC: exit 2, as every writer maps it
    assert [x for x in res.stderr.splitlines() if x.startswith("error:")] == ["error: cannot write: No space left on device"]
    assert list(tmp_path.iterdir()) == []


def test_compressed_archive_converts_through_hdf5_copies(tmp_path):
    """A .keras whose weights member is deflated (not Keras's way, but valid): no byte ranges to copy."""
    import zipfile

    src = tmp_path / "deflated.keras"
    with zipfile.ZipFile(SAMPLES / "cnn.keras") as zin, zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    out = tmp_path / "o.h5"
    res = run_cli("convert", src, out, "--json")
    assert res.exit_code == 0 and res.json()["method"] == "hdf5", res
    assert run_cli("diff", SAMPLES / "cnn.keras", out).exit_code == 0
    with h5py.File(out) as f, h5py.File(SAMPLES / "cnn.h5") as ref:
        assert list(f["model_weights"].attrs["layer_names"]) == list(ref["model_weights"].attrs["layer_names"])
