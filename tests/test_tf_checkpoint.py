"""TensorFlow checkpoints read without TensorFlow: inspect / diff / --export on tf.train.Checkpoint,
`wtool train --checkpoint-dir` and tf.keras 2 `save_weights` prefixes, every value checked against
TensorFlow's own reader; damaged and hostile bundles are one line, exit 3.

The TF-free part (the committed tf.keras 2 samples and the crafted bundles) runs without TensorFlow;
the differential tests import it to write checkpoints and to read them back.
"""

from __future__ import annotations

import random
import shutil
import struct

import numpy as np
import pytest
from conftest import SAMPLES, run_cli

from wtool.store import tf_bundle

K2 = SAMPLES / "tf_keras2"


def _tf():
    import tensorflow as tf

    return tf


def _wtool_values(path):
    from wtool.store import open_model

    with open_model(path) as mf:
        return mf, {w.path: (mf.key_of(w.path), mf.read(w.path)) for w in mf.weights}


def _assert_equal_to_tf(path, prefix):
    """Every variable wtool lists equals TensorFlow's value under the same key, bit for bit, and every key
    TensorFlow lists is either a wtool weight or counted as optimizer/other state."""
    tf = _tf()
    reader = tf.train.load_checkpoint(str(prefix))
    mf, got = _wtool_values(path)
    assert got
    for wpath, (key, value) in got.items():
        want = reader.get_tensor(key)
        assert value.dtype == want.dtype and value.shape == want.shape, wpath
        assert np.array_equal(value, want, equal_nan=True), wpath
    res = run_cli("inspect", path, "--weights", "--json")  # what the user sees: paths and their keys
    assert res.exit_code == 0, res
    assert [(w["path"], w["checkpoint_key"]) for w in res.json()["weights"]] == [(p, k) for p, (k, _) in got.items()]
    listed = {key for key, _ in got.values()}
    every = set(reader.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert listed <= every
    return mf, got, every - listed


# ------------------------------------------------------------------------- made by TensorFlow


@pytest.fixture(scope="module")
def keras_checkpoint(tmp_path_factory):
    """A Keras 3 Sequential and its Adam optimizer after one fit, kept by a CheckpointManager (two saves),
    and the same model saved as .keras."""
    tf = _tf()
    import keras

    root = tmp_path_factory.mktemp("kc")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3, name="out")],
                             name="seq")
    model.compile(keras.optimizers.Adam(), "mse")
    model.save(root / "untrained.keras")
    x, y = np.random.rand(16, 5).astype("float32"), np.random.rand(16, 3).astype("float32")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                         str(root / "ck"), max_to_keep=3)
    model.fit(x, y, epochs=1, verbose=0)
    manager.save()
    model.fit(x, y, epochs=1, verbose=0)
    latest = manager.save()
    model.save(root / "model.keras")
    return root, latest


@pytest.fixture(scope="module")
def train_checkpoint(tmp_path_factory):
    """`wtool train --checkpoint-dir` on the nested sample (a Sequential inside a Functional)."""
    root = tmp_path_factory.mktemp("tc")
    res = run_cli("train", SAMPLES / "nested.keras", "--data", SAMPLES / "nested.npz", "-o", root / "out.keras",
                  "--epochs", "2", "--seed", "1", "--checkpoint-dir", root / "ck", "-q")
    assert res.exit_code == 0, res
    return root


@pytest.mark.tf
def test_keras_checkpoint_values_equal_tensorflow(keras_checkpoint):
    root, latest = keras_checkpoint
    mf, got, rest = _assert_equal_to_tf(root / "ck", latest)
    assert str(mf.path) == latest  # the folder resolves to the latest of the manager's two saves
    assert list(got) == ["d1/kernel", "d1/bias", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
                         "out/kernel", "out/bias"]
    assert {w.path for w in mf.weights if not w.trainable} == {"bn/moving_mean", "bn/moving_variance"}
    assert all(k.startswith("optimizer/") or k.startswith("save_counter") for k in rest)
    assert mf.optimizer_weights == sum(1 for k in rest if k.startswith("optimizer/"))


@pytest.mark.tf
def test_keras_checkpoint_diffs_equal_to_the_saved_model(keras_checkpoint):
    root, latest = keras_checkpoint
    for given in (root / "ck", latest, f"{latest}.index", f"{latest}.data-00000-of-00001"):
        res = run_cli("diff", given, root / "model.keras")
        assert res.exit_code == 0, res
        assert res.stdout.startswith("equal: 8 weights, 8 same"), res.stdout


@pytest.mark.tf
def test_wtool_train_checkpoint_values_paths_and_export(train_checkpoint, tmp_path):
    tf = _tf()
    ck = train_checkpoint / "ck"
    latest = tf.train.latest_checkpoint(str(ck))
    mf, got, _ = _assert_equal_to_tf(ck, latest)
    from wtool.store import open_model

    with open_model(train_checkpoint / "out.keras") as out:  # the run metadata names the nested paths
        assert list(got) == [w.path for w in out.weights]
    res = run_cli("diff", ck, train_checkpoint / "out.keras")
    assert res.exit_code == 0 and res.stdout.startswith("equal: 10 weights"), res
    hashes = [run_cli("inspect", f, "--hash", "--json").json()["hash"] for f in (ck, train_checkpoint / "out.keras")]
    assert hashes[0] == hashes[1]  # "is this the same model?": the checkpoint and OUT say yes
    res = run_cli("inspect", ck, "--check")
    assert res.exit_code == 4 and "holds variables, not an architecture" in res.stdout + res.stderr, res
    npz = tmp_path / "w.npz"
    res = run_cli("inspect", ck, "--export", npz)
    assert res.exit_code == 0, res
    with np.load(npz) as arrays:
        assert sorted(arrays.files) == sorted(got)
        reader = tf.train.load_checkpoint(latest)
        for wpath, (key, _) in got.items():
            assert np.array_equal(arrays[wpath], reader.get_tensor(key))


@pytest.mark.tf
@pytest.mark.parametrize("name", ["flat", "nested"])
def test_tf_keras2_save_weights_values_equal_tensorflow(name):
    mf, got, rest = _assert_equal_to_tf(K2 / name, K2 / name)
    if name == "flat":  # Keras names: unique, one level of layers
        assert list(got) == ["dense_a/kernel", "dense_a/bias", "dense_b/kernel", "dense_b/bias"]
    else:  # a nested model's Keras names lack the model's own name: the checkpoint's keys, readably
        assert list(got)[0] == "layer_with_weights-0/layer_with_weights-0/kernel"
        assert len(got) == 8 and all(k.startswith("optimizer/") for k in rest)


@pytest.mark.tf
def test_a_large_tensor_is_checksummed_and_damage_to_it_is_found(tmp_path):
    """A 360 KB variable (the numpy CRC path) reads equal to TensorFlow; one flipped byte is exit 3."""
    tf = _tf()
    value = np.random.default_rng(0).standard_normal((300, 300)).astype("float32")
    prefix = tf.train.Checkpoint(big=tf.Variable(value)).write(str(tmp_path / "big"))
    _assert_equal_to_tf(tmp_path / "big", prefix)
    data = tmp_path / "big.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    _refused(tmp_path / "big", words=("CRC-32C",))


# ------------------------------------------------------------------------- set-weights --from-checkpoint


@pytest.mark.tf
def test_from_checkpoint_into_the_untrained_file_gives_the_trained_weights(train_checkpoint, tmp_path):
    """wtool train's checkpoint into the untrained nested sample: equal to the trained model, and to what
    tf.train.Checkpoint(model=...).restore(...).expect_partial() gives the same Keras model."""
    tf = _tf()
    from conftest import stored_weights

    from wtool.graph.model import load_model
    from wtool.store.model_paths import weight_paths

    out = tmp_path / "restored.keras"
    res = run_cli("set-weights", SAMPLES / "nested.keras", "--from-checkpoint", train_checkpoint / "ck", "-o", out,
                  "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["counts"] == {"assigned": 10, "kept": 0, "total": 10, "problems": 0}
    assert any("optimizer variable(s) of the checkpoint ignored" in n for n in doc["notes"])
    got, trained = stored_weights(out), stored_weights(train_checkpoint / "out.keras")
    assert got.keys() == trained.keys() and all(np.array_equal(got[k], trained[k]) for k in got)
    reference = load_model(SAMPLES / "nested.keras")
    tf.train.Checkpoint(model=reference).restore(tf.train.latest_checkpoint(str(train_checkpoint / "ck"))) \
        .expect_partial()
    for path, var in weight_paths(reference):
        assert np.array_equal(got[path], np.asarray(var)), path


@pytest.mark.tf
def test_from_checkpoint_reports_what_it_does_not_hold_and_refuses_wrong_shapes(keras_checkpoint, tmp_path):
    import keras

    root, latest = keras_checkpoint
    res = run_cli("set-weights", root / "untrained.keras", "--from-checkpoint", latest, "-o", tmp_path / "a.keras")
    assert res.exit_code == 0, res
    assert run_cli("diff", tmp_path / "a.keras", root / "model.keras").exit_code == 0
    wider = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3, name="out"),
                              keras.layers.Dense(2, name="extra")], name="seq")
    wider.save(tmp_path / "wider.keras")
    res = run_cli("set-weights", tmp_path / "wider.keras", "--from-checkpoint", root / "ck", "-o",
                  tmp_path / "w.keras", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["counts"]["assigned"] == 8 and doc["counts"]["kept"] == 2
    assert any("not in the checkpoint, kept as they were: extra/kernel, extra/bias" in n for n in doc["notes"])
    narrow = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, name="d1"),
                               keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3, name="out")])
    narrow.save(tmp_path / "narrow.keras")
    res = run_cli("set-weights", tmp_path / "narrow.keras", "--from-checkpoint", root / "ck", "-o",
                  tmp_path / "n.keras")
    assert res.exit_code == 4 and "d1/kernel" in res.stderr and not (tmp_path / "n.keras").exists(), res


@pytest.mark.tf
def test_a_model_under_another_name_is_found(keras_checkpoint, tmp_path):
    """tf.train.Checkpoint(net=model): the root's only child is the model, for inspect and --from-checkpoint."""
    tf = _tf()
    import keras

    root, _ = keras_checkpoint
    prefix = tf.train.Checkpoint(net=keras.saving.load_model(root / "model.keras")).write(str(tmp_path / "net"))
    _assert_equal_to_tf(prefix, prefix)
    assert run_cli("diff", prefix, root / "model.keras").exit_code == 0
    res = run_cli("set-weights", root / "untrained.keras", "--from-checkpoint", prefix, "-o", tmp_path / "n.keras")
    assert res.exit_code == 0, res
    assert run_cli("diff", tmp_path / "n.keras", root / "model.keras").exit_code == 0


@pytest.mark.tf
def test_from_checkpoint_refusals(keras_checkpoint, tmp_path):
    root, _ = keras_checkpoint
    res = run_cli("set-weights", root / "untrained.keras", "--from-checkpoint", K2, "-o", tmp_path / "x.keras")
    assert res.exit_code == 4 and "none of its variables matches" in res.stderr, res  # tf.keras 2 vs Keras 3
    for f in K2.glob("nested.*"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "nested.data-00000-of-00001").unlink()
    res = run_cli("set-weights", root / "untrained.keras", "--from-checkpoint", tmp_path / "nested", "-o",
                  tmp_path / "y.keras")
    assert res.exit_code == 3 and "missing" in res.stderr and "Traceback" not in res.stderr, res
    assert not (tmp_path / "x.keras").exists() and not (tmp_path / "y.keras").exists()


# ------------------------------------------------------------------------- without TensorFlow


def test_inspect_tf_keras2_folder_names_the_latest():
    res = run_cli("inspect", K2, "--weights", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["file"].endswith("flat") and doc["format"] == "tf-checkpoint" and doc["total_params"] == 21
    res = run_cli("inspect", K2, "--weights")
    assert "dense_a/kernel" in res.stdout and "(3, 4)" in res.stdout
    assert "TensorFlow checkpoint (.index + .data-*)" in res.stdout


def test_sample_and_stats_read_values():
    res = run_cli("inspect", K2 / "flat.index", "--sample", "2", "--layer", "dense_a/kernel")
    assert res.exit_code == 0, res
    from wtool.store import open_model

    with open_model(K2 / "flat") as mf:
        kernel = mf.read("dense_a/kernel")
    assert f"{kernel[0, 0]:.4g}"[:5] in res.stdout


def test_a_checkpoint_is_still_refused_where_a_model_file_is_needed(tmp_path):
    res = run_cli("set-weights", K2 / "flat", "--init", "*=zeros", "-o", tmp_path / "x.keras")
    assert res.exit_code == 3 and "a TensorFlow checkpoint" in res.stderr and "--from-checkpoint" in res.stderr


# ------------------------------------------------------------------------- damaged and hostile bundles


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, value: int | bytes) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(int(value))  # type: ignore[arg-type]
    if wire == 5:
        return tag + struct.pack("<I", value)
    return tag + _varint(len(value)) + value  # type: ignore[arg-type]


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]], kind: int = 0) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<II", 0, 1)  # one restart point, at 0
    return body + bytes([kind]) + struct.pack("<I", _mask(tf_bundle.crc32c(body + bytes([kind]))))


def _bundle(tmp_path, entries, *, shards=1, data=b"", kind=0, magic=tf_bundle.MAGIC):
    """A checkpoint `tmp_path/ck` with a crafted index: header, then (key, BundleEntryProto bytes)."""
    header = _field(1, 0, shards) + _field(2, 0, 0)
    data_block = _block([(b"", header)] + sorted((k.encode(), v) for k, v in entries), kind)
    index_block = _block([(b"\xff", _varint(0) + _varint(len(data_block) - 5))])
    footer = _varint(0) + _varint(0) + _varint(len(data_block)) + _varint(len(index_block) - 5)
    footer = footer.ljust(40, b"\0") + struct.pack("<Q", magic)
    (tmp_path / "ck.index").write_bytes(data_block + index_block + footer)
    for i in range(min(shards, 1)):
        (tmp_path / f"ck.data-{i:05d}-of-{shards:05d}").write_bytes(data)
    return tmp_path / "ck"


def _entry(dtype=1, shape=(2,), offset=0, size=8, crc=None, shard=0) -> bytes:
    dims = b"".join(_field(2, 2, _field(1, 0, d)) for d in shape)
    out = _field(1, 0, dtype) + _field(2, 2, dims) + _field(3, 0, shard) + _field(4, 0, offset) + _field(5, 0, size)
    return out + (_field(6, 5, crc) if crc is not None else b"")


def _refused(path, *extra, words=()):
    res = run_cli("inspect", path, "--stats", *extra)
    assert res.exit_code == 3, res
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_crc32c_known_value_and_the_numpy_path_agree_with_the_bytewise_one():
    assert tf_bundle.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = random.Random(3)
    for n in (0, 1, tf_bundle.VECTOR_MIN - 1, tf_bundle.VECTOR_MIN,  # and more than one chunk of lanes:
              tf_bundle.LANE_BYTES * (tf_bundle.CHUNK_LANES + 3) + 17):
        data = rng.randbytes(n)
        assert tf_bundle.crc32c(data) == tf_bundle._crc_scalar(0xFFFFFFFF, data) ^ 0xFFFFFFFF, n
        assert tf_bundle.crc32c(data[n // 3:], tf_bundle.crc32c(data[: n // 3])) == tf_bundle.crc32c(data), n


def test_a_crafted_bundle_reads_and_its_checksum_is_checked(tmp_path):
    data = np.array([1.5, -2.0], "<f4").tobytes()
    good = _bundle(tmp_path, [("v/.ATTRIBUTES/VARIABLE_VALUE", _entry(crc=_mask(tf_bundle.crc32c(data))))],
                   data=data)
    res = run_cli("inspect", good, "--sample", "2")
    assert res.exit_code == 0 and "-2" in res.stdout, res
    bad = _bundle(tmp_path, [("v/.ATTRIBUTES/VARIABLE_VALUE", _entry(crc=_mask(tf_bundle.crc32c(data)) ^ 1))],
                  data=data)
    _refused(bad, words=("CRC-32C",))


@pytest.mark.parametrize("case", ["truncated", "magic", "past_eof", "huge", "missing_shard", "shard_id",
                                  "compressed", "string", "variant", "size_mismatch", "empty"])
def test_damaged_bundles_are_one_line_exit_3(tmp_path, case):
    data = bytes(8)
    entry = _entry()
    kw: dict = {}
    words: tuple[str, ...] = ()
    if case == "past_eof":
        entry, words = _entry(offset=4), ("past the end",)
    elif case == "huge":
        entry, words = _entry(shape=(1 << 40, 1 << 20), size=1 << 62), ("past the end",)
    elif case == "missing_shard":
        kw, words = {"shards": 2}, ("missing",)
    elif case == "shard_id":
        entry, words = _entry(shard=5), ("shard 5",)
    elif case == "compressed":
        kw, words = {"kind": 1}, ("compressed",)
    elif case == "string":
        entry, words = _entry(dtype=7, shape=(3,), size=8), ("string",)
    elif case == "variant":
        entry, words = _entry(dtype=21, shape=(), size=8), ("variant",)
    elif case == "size_mismatch":
        entry, words = _entry(shape=(3,), size=8), ("needs 12 bytes",)
    elif case == "magic":
        kw, words = {"magic": 0x1234}, ("magic",)
    path = _bundle(tmp_path, [("v/.ATTRIBUTES/VARIABLE_VALUE", entry)], data=data, **kw)
    if case == "truncated":
        raw = (tmp_path / "ck.index").read_bytes()
        (tmp_path / "ck.index").write_bytes(raw[:-10])
        words = ("magic",)
    if case == "empty":
        (tmp_path / "ck.index").write_bytes(b"\0" * 20)
        words = ("footer",)
    if case in ("string", "variant"):  # listed as not readable; reading its values is refused
        res = run_cli("inspect", path, "--weights")
        assert res.exit_code == 0 and "not read" in res.stderr, res
        return
    _refused(path, words=words)


def test_random_damage_to_a_real_index_never_leaks_a_traceback(tmp_path):
    """Flip bytes, cut and splice the nested tf.keras 2 sample: exit 0 (harmless damage) or 3, one line."""
    rng = random.Random(7)
    original = (K2 / "nested.index").read_bytes()
    shutil.copy(K2 / "nested.data-00000-of-00001", tmp_path / "nested.data-00000-of-00001")
    for trial in range(60):
        raw = bytearray(original)
        if trial % 3 == 0:
            raw = raw[: rng.randrange(len(raw))]
        else:
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        (tmp_path / "nested.index").write_bytes(bytes(raw))
        res = run_cli("inspect", tmp_path / "nested", "--stats")
        assert res.exit_code in (0, 3), (trial, res)
        assert "Traceback" not in res.stderr and res.exception is None or isinstance(res.exception, SystemExit)
        if res.exit_code == 3:
            assert len([x for x in res.stderr.splitlines() if x.startswith("error:")]) == 1


def test_a_truncated_data_file_is_refused(tmp_path):
    for f in K2.glob("nested.*"):
        shutil.copy(f, tmp_path / f.name)
    data = tmp_path / "nested.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    _refused(tmp_path / "nested", words=("past the end",))


def test_state_files_and_prefixes_that_name_nothing(tmp_path):
    for f in K2.glob("flat.*"):
        shutil.copy(f, tmp_path / f.name)
    state = tmp_path / "checkpoint"
    for text, words in (('model_checkpoint_path: "../elsewhere/ckpt-1"', ("refused checkpoint name",)),
                        ('model_checkpoint_path: "ckpt-9"', ("names the checkpoint ckpt-9",)),
                        ('all_model_checkpoint_paths: "flat"', ("not a checkpoint state file",))):
        state.write_text(text + "\n")
        _refused(tmp_path, words=words)
    state.write_text('model_checkpoint_path: "/where/it/was/trained/flat"\n')  # absolute: its name, here
    assert run_cli("inspect", tmp_path).exit_code == 0
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--from-checkpoint", SAMPLES / "mlp.keras", "-o",
                  tmp_path / "o.keras")
    assert res.exit_code == 3 and "not a TensorFlow checkpoint" in res.stderr and not (tmp_path / "o.keras").exists()


def _string_tensor(raw: bytes) -> tuple[bytes, int]:
    """A scalar string as TensorFlow writes it (length, length checksum, bytes) and its entry CRC."""
    length = struct.pack("<I", len(raw))
    check = struct.pack("<I", _mask(tf_bundle.crc32c(length)))
    crc = tf_bundle.crc32c(raw, tf_bundle.crc32c(check, tf_bundle.crc32c(length)))
    return _varint(len(raw)) + check + raw, _mask(crc)


def _node(children=(), key=None, full_name="") -> bytes:
    out = b"".join(_field(1, 2, _field(1, 0, c) + _field(2, 2, n.encode())) for c, n in children)
    if key is not None:
        out += _field(2, 2, _field(1, 2, b"VARIABLE_VALUE") + _field(2, 2, full_name.encode())
                      + _field(3, 2, key.encode()))
    return _field(1, 2, out)


@pytest.mark.parametrize("case", ["absent_key", "meta_absent_key", "cycle", "bad_child", "empty_graph"])
def test_hostile_object_graphs(tmp_path, case):
    """Graphs naming keys the index lacks, cycles, references past the node list: never a traceback."""
    key = "model/d/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    nodes = [_node([(1, "model")]), _node([(2, "d")]), _node([(3, "kernel")]), _node(key=key, full_name="d/kernel")]
    extra: list = []
    if case == "meta_absent_key":  # wtool train's run metadata names a `weights` entry the index lacks
        nodes[0] = _node([(1, "model"), (4, "weights")])
        nodes += [_node([(3, "0"), (5, "1")]), _node(key="weights/1/.ATTRIBUTES/VARIABLE_VALUE")]
        meta, meta_crc = _string_tensor(b'{"weight_paths": ["d/kernel", "ghost/v"]}')
        extra = [("meta/.ATTRIBUTES/VARIABLE_VALUE", meta, meta_crc)]
    if case == "absent_key":
        nodes[1] = _node([(2, "d"), (4, "ghost")])
        nodes.append(_node(key="model/ghost/.ATTRIBUTES/VARIABLE_VALUE", full_name="ghost/v"))
    elif case == "cycle":
        nodes[2] = _node([(3, "kernel"), (0, "back"), (1, "up")])
    elif case == "bad_child":
        nodes[2] = _node([(3, "kernel"), (99, "nowhere")])
    elif case == "empty_graph":  # no nodes at all: nothing is the model's
        nodes = []
    values = np.array([1.0, 2.0], "<f4").tobytes()
    graph, graph_crc = _string_tensor(b"".join(nodes))
    entries = [("_CHECKPOINTABLE_OBJECT_GRAPH", _entry(dtype=7, shape=(), offset=8, size=len(graph), crc=graph_crc)),
               (key, _entry(crc=_mask(tf_bundle.crc32c(values))))]
    data = values + graph
    for name, raw, crc in extra:
        entries.append((name, _entry(dtype=7, shape=(), offset=len(data), size=len(raw), crc=crc)))
        data += raw
    path = _bundle(tmp_path, entries, data=data)
    if case == "bad_child":
        _refused(path, words=("node 99",))
        return
    res = run_cli("inspect", path, "--weights", "--json")
    assert res.exit_code == 0, res
    assert [w["path"] for w in res.json()["weights"]] == ([] if case == "empty_graph" else ["d/kernel"])
