"""The weight store: formats, canonical paths, in-place .keras reading, safety, bad input."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from wtool.errors import IncompatibleError, InputError, UnsafeError, UsageError
from wtool.safety import guards as safety
from wtool.safety import limits
from wtool.store import open_model, select
from wtool.store.chunks import iter_blocks

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
NAMES = ["xor", "mlp", "cnn", "nested", "lstm"]
FORMATS = ["keras", "h5", "weights.h5"]


def sample(name: str, fmt: str) -> Path:
    return SAMPLES / f"{name}.{fmt}"


def snapshot(path: Path, **kw) -> dict[str, np.ndarray]:
    with open_model(path, **kw) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


# ---- formats and canonical paths (h5py only) --------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_paths_and_values_in_every_format(name):
    ref = snapshot(sample(name, "keras"))
    for fmt in ("h5", "weights.h5"):
        other = snapshot(sample(name, fmt))
        assert sorted(other) == sorted(ref), fmt
        for path, value in ref.items():
            assert np.array_equal(other[path], value), (fmt, path)


def test_nested_model_paths_and_metadata():
    with open_model(sample("nested", "keras")) as mf:
        assert mf.format == "keras" and mf.layout == "keras3" and mf.in_place
        assert mf.keras_version == "3.15.1"
        assert mf.config["class_name"] == "Functional"
        assert [w.path for w in mf.weights] == [
            "features/d1/kernel", "features/d1/bias", "features/bn/gamma", "features/bn/beta",
            "features/bn/moving_mean", "features/bn/moving_variance", "features/d2/kernel", "features/d2/bias",
            "classifier/kernel", "classifier/bias"]
        w = mf.weight("features/bn/moving_mean")
        assert (w.layer, w.name, w.shape, w.dtype, w.trainable) == ("features/bn", "moving_mean", (32,), "float32", False)
        assert w.h5_name == "layers/sequential/layers/batch_normalization/vars/2"
        layers = {layer.path: layer for layer in mf.layers}
        assert layers["features"].class_name == "Sequential" and layers["features/d1"].depth == 1
        assert layers["features/d1"].params == 16 * 32 + 32
        assert mf.total_params == 1268 and mf.non_trainable_params == 64
    with open_model(sample("nested", "h5")) as mf:
        assert (mf.format, mf.layout, mf.backend) == ("h5", "legacy", "tensorflow")
        assert mf.weight("features/d1/kernel").h5_name == "model_weights/features/features/d1/kernel"
        assert mf.has_training_config
    with open_model(sample("nested", "weights.h5")) as mf:
        assert (mf.format, mf.layout, mf.config) == ("weights.h5", "keras3", None)


def test_rnn_cell_level_is_not_in_the_path():
    for fmt in FORMATS:
        with open_model(sample("lstm", fmt)) as mf:
            assert [w.path for w in mf.weights if w.layer == "lstm"] == [
                "lstm/kernel", "lstm/recurrent_kernel", "lstm/bias"], fmt


def test_xor_has_no_biases():
    with open_model(sample("xor", "keras")) as mf:
        assert [(w.path, w.shape) for w in mf.weights] == [("hidden/kernel", (2, 3)), ("out/kernel", (3, 1))]


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    as_h5 = tmp_path / "really_a_zip.h5"
    shutil.copy(sample("mlp", "keras"), as_h5)
    as_keras = tmp_path / "really_hdf5.keras"
    shutil.copy(sample("mlp", "h5"), as_keras)
    with open_model(as_h5) as a, open_model(as_keras) as b:
        assert a.format == "keras" and b.format == "h5"
        assert [w.path for w in a.weights] == [w.path for w in b.weights]


def test_compressed_keras_archive_is_extracted_not_in_place(tmp_path):
    out = tmp_path / "deflated.keras"
    with zipfile.ZipFile(sample("cnn", "keras")) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with open_model(out) as mf:
        assert not mf.in_place
        got = {w.path: mf.read(w.path) for w in mf.weights}
    ref = snapshot(sample("cnn", "keras"))
    assert all(np.array_equal(got[p], ref[p]) for p in ref)


def test_iter_chunks_covers_the_array_in_order():
    with open_model(sample("mlp", "keras")) as mf:
        full = mf.read("hidden/kernel")
        chunks = list(mf.iter_chunks("hidden/kernel", max_elements=1000))
        assert len(chunks) > 10 and max(c.size for c in chunks) <= 1000
        assert np.array_equal(np.concatenate([c.ravel() for c in chunks]), full.ravel())


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4, 5), (1, 100000), (0, 4)])
def test_iter_blocks_bounded_and_complete(shape):
    a = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    blocks = list(iter_blocks(shape, 7))
    flat = np.concatenate([np.asarray(a[b]).ravel() for b in blocks]) if blocks else np.array([], dtype=np.int64)
    assert np.array_equal(flat, a.ravel())
    assert all(np.asarray(a[b]).size <= 7 for b in blocks)


def test_unknown_weight_path_is_incompatible():
    with open_model(sample("xor", "keras")) as mf, pytest.raises(IncompatibleError, match="no weight 'nope'"):
        mf.weight("nope")


def test_select_globs():
    paths = ["features/d1/kernel", "features/bn/gamma", "classifier/kernel"]
    assert select(paths, ["features/*"]) == paths[:2]
    assert select(paths, ["*/kernel"]) == [paths[0], paths[2]]
    assert select(paths, ["classifier"]) == [paths[2]]  # a layer name selects its weights
    assert select(paths, None) == paths
    with pytest.raises(UsageError, match="matches no weight"):
        select(paths, ["nothing*"])


# ---- hand-made legacy files ---------------------------------------------------------------


def _legacy_weights_file(path: Path, layers: dict[str, dict[str, np.ndarray]], chunked: bool = False) -> None:
    with h5py.File(path, "w") as f:
        names = [n.encode() for n in layers]
        if chunked:
            f.attrs["layer_names0"] = names[:1]
            f.attrs["layer_names1"] = names[1:]
        else:
            f.attrs["layer_names"] = names
        f.attrs["keras_version"] = b"2.2.4"
        for layer, weights in layers.items():
            g = f.create_group(layer)
            g.attrs["weight_names"] = [w.encode() for w in weights]
            for wname, value in weights.items():
                g.create_dataset(wname, data=value)


def test_legacy_names_are_cleaned(tmp_path):
    p = tmp_path / "old.h5"
    k = np.ones((3, 2), np.float32)
    _legacy_weights_file(p, {
        "dense_1": {"dense_1/kernel:0": k, "dense_1/bias:0": np.zeros(2, np.float32)},
        "dense_21": {"dense_21_3/kernel:0": k},
        "conv_k1": {"conv_k1_W": k, "conv_k1_b": np.zeros(2, np.float32)},
        "fire2/squeeze": {"uniform7": k, "fire2/squeeze_b": np.zeros(2, np.float32)},
        "lstm": {"lstm/lstm_cell/kernel:0": k},
        "bn": {"bn/moving_mean:0": np.zeros(2, np.float32)},
    }, chunked=True)
    with open_model(p) as mf:
        assert (mf.format, mf.layout, mf.keras_version) == ("weights.h5", "legacy", "2.2.4")
        assert [w.path for w in mf.weights] == [
            "dense_1/kernel", "dense_1/bias", "dense_21/kernel", "conv_k1/kernel", "conv_k1/bias",
            "fire2/squeeze/kernel", "fire2/squeeze/bias", "lstm/kernel", "bn/moving_mean"]
        assert not mf.weight("bn/moving_mean").trainable
        assert np.array_equal(mf.read("fire2/squeeze/kernel"), k)


def test_missing_layer_groups_are_reported_not_fatal(tmp_path):
    p = tmp_path / "theano.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"embedding_1", b"lstm_1"]
        f.create_group("embedding_1")
    with open_model(p) as mf:
        assert mf.weights == []
        assert [layer.missing for layer in mf.layers] == [False, True]
        assert "lstm_1" in mf.warnings[0]


# ---- bad input ------------------------------------------------------------------------------


def _truncated(tmp_path: Path) -> Path:
    p = tmp_path / "cut.h5"
    p.write_bytes(sample("mlp", "h5").read_bytes()[:4000])
    return p


def _zip_without_weights(tmp_path: Path) -> Path:
    p = tmp_path / "noweights.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
    return p


def _write(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name
    return make


BAD_INPUTS = {
    "missing": (lambda t: t / "nope.keras", "no such file"),
    "directory": (lambda t: t, "is a directory"),
    "empty": (_write("e.h5", b""), "empty file"),
    "text": (_write("t.h5", b"hello\n"), "text file"),
    "lfs": (_write("m.h5", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"), "Git LFS pointer"),
    "truncated": (_truncated, "truncated"),
    "zip-without-weights": (_zip_without_weights, "no model.weights.h5"),
    "binary": (_write("b.h5", b"\x00\x01\x02" * 100), "not a Keras model file"),
    "truncated-zip": (lambda t: _write("z.keras", sample("mlp", "keras").read_bytes()[:5000])(t), "zip"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_input_error(tmp_path, case):
    make, fragment = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        open_model(path).close()
    assert fragment in info.value.message
    assert "\n" not in info.value.message and info.value.exit_code == 3


def test_hdf5_without_keras_content(tmp_path):
    p = tmp_path / "data.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(InputError, match="not a Keras model or weights file"):
        open_model(p)


# ---- safety -----------------------------------------------------------------------------------


def _copy_h5(tmp_path: Path) -> Path:
    p = tmp_path / "m.h5"
    shutil.copy(sample("mlp", "h5"), p)
    return p


@pytest.mark.parametrize("kind", ["soft", "external"])
def test_links_are_refused(tmp_path, kind):
    p = _copy_h5(tmp_path)
    with h5py.File(p, "a") as f:
        g = f["model_weights/hidden/mlp/hidden"]
        del g["bias"]
        g["bias"] = h5py.SoftLink("/model_weights/out/mlp/out/bias") if kind == "soft" \
            else h5py.ExternalLink("/etc/passwd", "/x")
    with pytest.raises(UnsafeError, match=f"{kind} link"):
        open_model(p)


def test_external_dataset_is_refused(tmp_path):
    p = _copy_h5(tmp_path)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(64, np.float32).tobytes())
    with h5py.File(p, "a") as f:
        g = f["model_weights/hidden/mlp/hidden"]
        del g["bias"]
        g.create_dataset("bias", shape=(64,), dtype="f4", external=[(str(raw), 0, 256)])
    with pytest.raises(UnsafeError, match="external files"):
        open_model(p)


def test_virtual_dataset_is_refused(tmp_path):
    p = _copy_h5(tmp_path)
    with h5py.File(p, "a") as f:
        layout = h5py.VirtualLayout(shape=(64,), dtype="f4")
        layout[:] = h5py.VirtualSource(".", "model_weights/hidden/mlp/hidden/kernel", shape=(784, 64))[0, :]
        g = f["model_weights/hidden/mlp/hidden"]
        del g["bias"]
        g.create_virtual_dataset("bias", layout)
    with pytest.raises(UnsafeError, match="virtual"):
        open_model(p)


def test_plugin_filter_is_refused(tmp_path):
    p = _copy_h5(tmp_path)
    with h5py.File(p, "a") as f:
        g = f["model_weights/out/mlp/out"]
        values = g["bias"][()]
        del g["bias"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(values.shape)
        dcpl.set_filter(32008, h5py.h5z.FLAG_OPTIONAL, (0, 0))  # bitshuffle: HDF5 would look for a plugin
        dsid = h5py.h5d.create(g.id, b"bias", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple(values.shape), dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, values)
        dsid.close()
    with pytest.raises(UnsafeError, match="filter 32008"):
        open_model(p)


@pytest.mark.parametrize("mutate", ["flip", "string"])
def test_damaged_hdf5_is_input_error_not_a_crash(tmp_path, mutate):
    p = _copy_h5(tmp_path)
    if mutate == "string":
        with h5py.File(p, "a") as f:
            g = f["model_weights/out/mlp/out"]
            del g["bias"]
            g["bias"] = np.array([b"abcd"] * 10)
        fragment = "not numbers"
    else:
        data = bytearray(p.read_bytes())
        for offset in range(800, 4000, 97):  # object headers and B-trees of the first groups
            data[offset] ^= 0xFF
        p.write_bytes(bytes(data))
        fragment = ""
    with pytest.raises(InputError, match=fragment):
        with open_model(p) as mf:
            for w in mf.weights:
                mf.read(w.path)


def test_duplicate_legacy_weight_names_are_malformed(tmp_path):
    p = _copy_h5(tmp_path)
    with h5py.File(p, "a") as f:
        g = f["model_weights/out"]
        g.attrs["weight_names"] = [b"mlp/out/kernel", b"mlp/out/kernel"]
    with pytest.raises(InputError, match="more than once"):
        open_model(p)


def test_shape_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "H5_DATASET_BOMB_FLOOR_BYTES", 1024)
    p = _copy_h5(tmp_path)
    with h5py.File(p, "a") as f:
        g = f["model_weights/hidden/mlp/hidden"]
        del g["kernel"]
        g.create_dataset("kernel", shape=(4000, 4000), dtype="f4", chunks=(1000, 1000), compression="gzip")
    with pytest.raises(InputError, match="bomb"):
        open_model(p)


def test_zip_member_limits(tmp_path, monkeypatch):
    p = tmp_path / "deflated.keras"
    with zipfile.ZipFile(sample("mlp", "keras")) as src, zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with limits.override(max_bytes=1000), pytest.raises(InputError, match="limit"):
        open_model(p)
    monkeypatch.setattr(safety, "ZIP_MEMBER_BOMB_FLOOR_BYTES", 10)
    monkeypatch.setattr(safety, "ZIP_MEMBER_MAX_EXPANSION", 1)
    with pytest.raises(InputError, match="decompression bomb"):
        open_model(p)


def test_total_weight_bytes_follow_max_bytes():
    with limits.override(max_bytes=1000), pytest.raises(InputError, match="weights declare"):
        open_model(sample("mlp", "h5"))


def test_plugins_are_disabled():
    import os

    import wtool.store  # noqa: F401

    assert os.environ["HDF5_PLUGIN_PRELOAD"] == "::"


# ---- the same paths as a live Keras model (TensorFlow) ----------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A model with many built-in layer classes, saved in all three formats."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    layers = keras.layers
    keras.utils.set_random_seed(3)
    seq = keras.Input((6, 8))
    img = keras.Input((8, 8, 3))
    x = layers.LSTM(4, return_sequences=True, name="lstm")(seq)
    x = layers.GRU(4, return_sequences=True, name="gru")(x)
    x = layers.SimpleRNN(4, return_sequences=True, name="srnn")(x)
    x = layers.Bidirectional(layers.LSTM(3, return_sequences=True), name="bidir")(x)
    x = layers.TimeDistributed(layers.Dense(5), name="td")(x)
    x = layers.MultiHeadAttention(2, 3, name="mha")(x, x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.Conv1D(4, 2, name="c1d")(x)
    x = layers.PReLU(name="prelu")(x)
    x = layers.EinsumDense("abc,cd->abd", output_shape=(None, 3), bias_axes="d", name="ein")(x)
    x = layers.GlobalAveragePooling1D()(x)
    y = layers.Conv2D(4, 3, name="c2d")(img)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.BatchNormalization(name="bn_nc", center=False)(y)
    y = layers.DepthwiseConv2D(3, name="dw")(y)
    y = layers.SeparableConv2D(4, 1, name="sep")(y)
    y = layers.Conv2DTranspose(2, 2, name="ct")(y)
    y = layers.GroupNormalization(groups=2, name="gn")(y)
    y = layers.Flatten()(y)
    y = layers.Dense(3, use_bias=False, name="nob")(y)
    inner = keras.Sequential([keras.Input((3,)), layers.Dense(3, name="inner_d"),
                              layers.Embedding(5, 2, name="emb")], name="inner")
    z = layers.Concatenate()([x, y])
    z = layers.Dense(3, name="head")(z)
    model = keras.Model([seq, img], [z, inner(z)], name="zoo")
    model.get_layer("bn").trainable = False
    out = tmp_path_factory.mktemp("zoo")
    model.save(out / "zoo.keras")
    model.save(out / "zoo.h5")
    model.save_weights(out / "zoo.weights.h5")
    return model, out


@pytest.fixture(scope="module")
def zoo2(tmp_path_factory):
    """Wrappers around models, generic RNN cells, frozen nested models, shared layers, adapted state."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    layers = keras.layers
    keras.utils.set_random_seed(4)
    seq = keras.Input((5, 6))
    norm = layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).random((20, 5, 6)).astype("float32"))
    x = norm(seq)
    x = layers.RNN(layers.LSTMCell(3), return_sequences=True, name="rnn")(x)
    x = layers.Bidirectional(layers.GRU(2, return_sequences=True), name="bigru",
                             backward_layer=layers.GRU(2, return_sequences=True, go_backwards=True, name="bw"))(x)
    x = layers.LayerNormalization(center=False, name="ln")(x)
    x = layers.Attention(use_scale=True, score_mode="concat", name="att")([x, x])
    shared = layers.Dense(4, name="shared")
    x = shared(shared(x))
    inner = keras.Sequential([keras.Input((4,)), keras.Sequential([keras.Input((4,)), layers.Dense(2, name="deep")],
                                                                  name="lvl2")], name="lvl1")
    inner.trainable = False
    x = layers.TimeDistributed(inner, name="tdseq")(x)
    vol = keras.Input((4, 4, 4, 2))
    y = layers.Flatten()(layers.Conv3D(2, 2, name="c3")(vol))
    frames = keras.Input((3, 4, 4, 1))
    z = layers.Flatten()(layers.ConvLSTM2D(2, 2, name="convlstm")(frames))
    ids = keras.Input((3,), dtype="int32")
    e = layers.GlobalAveragePooling1D()(layers.Embedding(10, 3, mask_zero=True, name="emb")(ids))
    model = keras.Model([seq, vol, frames, ids], [x, y, z, e], name="zoo2")
    out = tmp_path_factory.mktemp("zoo2")
    model.save(out / "zoo2.keras")
    model.save(out / "zoo2.h5")
    return model, out


@pytest.mark.tf
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_zoo2_paths_equal_weight_paths(zoo2, fmt):
    model, out = zoo2
    _assert_store_matches_model(out / f"zoo2.{fmt}", model)
    with open_model(out / f"zoo2.{fmt}") as mf:
        paths = [w.path for w in mf.weights]
    assert {"tdseq/lvl2/deep/kernel", "bigru/bw/kernel", "rnn/kernel", "norm/mean", "att/scale",
            "convlstm/recurrent_kernel"} <= set(paths)


def _assert_store_matches_model(path: Path, model, **kw):
    from wtool.store.model_paths import weight_paths

    live = weight_paths(model)
    expected = {p: v for p, v in live}
    assert len(expected) == len(live), "weight_paths must be unique"
    with open_model(path, **kw) as mf:
        got = {w.path: w for w in mf.weights}
        assert sorted(got) == sorted(expected)
        for p, var in expected.items():
            assert np.array_equal(mf.read(p), np.asarray(var.numpy())), p
            assert got[p].trainable == bool(var.trainable), p


@pytest.mark.tf
@pytest.mark.parametrize("fmt", FORMATS)
def test_zoo_paths_equal_weight_paths(zoo, fmt):
    model, out = zoo
    kw = {}
    if fmt == "weights.h5":  # a weights-only file names BatchNormalization(center=False) from the architecture
        kw["arch_config"] = json.loads(zipfile.ZipFile(out / "zoo.keras").read("config.json"))
    _assert_store_matches_model(out / f"zoo.{fmt}", model, **kw)


@pytest.mark.tf
def test_zoo_weight_order_is_the_same_in_every_format(zoo):
    """Sub-layers in `layer.weights` order (query before key, forward before backward) whatever the format."""
    _, out = zoo
    orders = {}
    for fmt in ("keras", "h5"):
        with open_model(out / f"zoo.{fmt}") as mf:
            orders[fmt] = [w.path for w in mf.weights if w.path.startswith(("mha/", "bidir/"))]
    assert orders["keras"] == orders["h5"]
    assert orders["keras"].index("mha/query/kernel") < orders["keras"].index("mha/key/kernel")
    assert orders["keras"].index("bidir/forward_lstm/kernel") < orders["keras"].index("bidir/backward_lstm/kernel")


@pytest.mark.tf
def test_zoo_weights_only_without_architecture(zoo):
    _, out = zoo
    with open_model(out / "zoo.weights.h5") as mf:
        paths = {w.path for w in mf.weights}
    assert {"mha/query/kernel", "bidir/forward_lstm/kernel", "td/kernel", "lstm/recurrent_kernel",
            "sep/pointwise_kernel", "inner/emb/embeddings"} <= paths
    assert {"bn_nc/vars/0", "bn_nc/vars/1", "bn_nc/vars/2"} <= paths  # ambiguous without the config


@pytest.mark.tf
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_samples_paths_equal_weight_paths(name, fmt):
    from wtool.graph.model import import_keras

    keras = import_keras()
    model = keras.saving.load_model(sample(name, "keras"), compile=False)
    _assert_store_matches_model(sample(name, fmt), model)
