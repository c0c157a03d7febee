"""Sharded Keras weights (`X.weights.json` + `X_00000.weights.h5`, ...): read as one model, checked, written.

Every artifact is written by Keras 3's own `save_weights(..., max_shard_size=)`, and every value
wtool reads is compared with what Keras's `load_weights` gives for the same files.
"""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands

# Bytes per shard: d1's kernel (8x16 float32 = 512 B) fits, its bias then overflows into the next
# shard, so the group /layers/dense/vars is split over two shards.
SHARD_BYTES = 520


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import keras

    from wtool.store.model_paths import variables_by_path

    d = tmp_path_factory.mktemp("sharded")
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, name="d1", bias_initializer="random_normal")(inputs)
    x = keras.layers.BatchNormalization(name="bn", moving_mean_initializer="random_normal")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    outputs = keras.layers.Dense(4, name="d2", bias_initializer="random_normal")(x)
    model = keras.Model(inputs, outputs, name="net")
    model.save(d / "m.keras")
    model.save_weights(d / "m.weights.h5")
    model.save_weights(d / "s.weights.json", max_shard_size=SHARD_BYTES / 1024**3)
    fresh = keras.models.clone_model(model)  # new random values, then Keras loads the shards
    fresh.load_weights(d / "s.weights.json")
    keras_values = {p: np.asarray(v.numpy()) for p, v in variables_by_path(fresh).items()}
    x_in = np.random.RandomState(0).randn(6, 8).astype("float32")
    np.save(d / "x.npy", x_in)
    np.save(d / "keras_y.npy", np.asarray(fresh(x_in, training=False)))
    return {"dir": d, "keras": keras_values}


def _copy_set(made, tmp_path):
    for p in made["dir"].iterdir():
        if p.name.startswith("s") and p.is_file():
            shutil.copy(p, tmp_path / p.name)
    return tmp_path / "s.weights.json"


def _npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_keras_split_a_group_over_two_shards(made):
    doc = json.loads((made["dir"] / "s.weights.json").read_text())
    assert doc["weight_map"]["/layers/dense/vars"] == ["s_00000.weights.h5", "s_00001.weights.h5"]
    assert len({n for v in doc["weight_map"].values() for n in v}) >= 3


def test_inspect_reads_the_set_as_one_model(made):
    d = made["dir"]
    whole = run_cli("inspect", d / "s.weights.json", "--weights", "--json")
    plain = run_cli("inspect", d / "m.weights.h5", "--weights", "--json")
    assert whole.exit_code == 0 and plain.exit_code == 0, whole
    got, want = whole.json(), plain.json()
    assert got["format"] == "weights.json"
    assert got["shards"] == [f"s_{i:05}.weights.h5" for i in range(len(got["shards"]))] and len(got["shards"]) >= 3
    assert [(w["path"], w["shape"]) for w in got["weights"]] == [(w["path"], w["shape"]) for w in want["weights"]]
    assert got["weights"][0]["path"] == "d1/kernel" and len(got["weights"]) == 8
    assert got["total_params"] == want["total_params"] == 276 and got["weight_bytes"] == want["weight_bytes"]


def test_export_values_equal_keras_load_weights(made, tmp_path):
    out = tmp_path / "w.npz"
    res = run_cli("inspect", made["dir"] / "s.weights.json", "--export", out)
    assert res.exit_code == 0, res
    got = _npz(out)
    assert set(got) == set(made["keras"])
    for path, value in made["keras"].items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_diff_sharded_and_unsharded_equal(made):
    d = made["dir"]
    for other in ("m.weights.h5", "m.keras"):
        res = run_cli("diff", d / "s.weights.json", d / other)
        assert res.exit_code == 0 and "8 same" in res.stdout, res


def test_one_shard_says_it_is_one_shard(made):
    res = run_cli("inspect", made["dir"] / "s_00001.weights.h5")
    assert res.exit_code == 0
    assert "shard 2 of" in res.stderr and "s.weights.json" in res.stderr


def test_set_weights_and_transfer_from_a_sharded_source(made, tmp_path):
    d = made["dir"]
    zero = tmp_path / "zero.npz"
    np.savez(zero, **{p: np.zeros_like(v) + 7 for p, v in made["keras"].items()})
    base = tmp_path / "base.keras"  # every value changed, so the tests see what comes from the shards
    assert run_cli("set-weights", d / "m.keras", "--npz", zero, "-o", base).exit_code == 0
    for cmd in (("set-weights", base, "--from-model", d / "s.weights.json", "-o", tmp_path / "a.keras"),
                ("transfer", d / "s.weights.json", base, "-o", tmp_path / "b.keras")):
        res = run_cli(*cmd)
        assert res.exit_code == 0, res
        out = cmd[-1]
        assert run_cli("inspect", out, "--export", tmp_path / "o.npz").exit_code == 0
        got = _npz(tmp_path / "o.npz")
        for path, value in made["keras"].items():
            np.testing.assert_array_equal(got[path], value, err_msg=f"{cmd[0]} {path}")


def test_infer_with_arch_equals_keras(made, tmp_path):
    d = made["dir"]
    res = run_cli("infer", d / "s.weights.json", d / "x.npy", "--arch", d / "m.keras", "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(d / "keras_y.npy"), atol=1e-5)


# --------------------------------------------------------------------------- bad maps and shards


def _edit_map(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _absolute(path):
    _edit_map(path, lambda doc: doc["weight_map"].__setitem__("/layers/dense_1/vars", [str(path.parent / "s_00002.weights.h5")]))


def _dotdot(path):
    _edit_map(path, lambda doc: doc["weight_map"].__setitem__("/layers/dense_1/vars", ["../s_00002.weights.h5"]))


def _symlink_out(path):
    outside = path.parent / "elsewhere"
    outside.mkdir()
    shard = path.parent / "s_00002.weights.h5"
    shutil.move(shard, outside / shard.name)
    os.symlink(outside / shard.name, shard)


def _missing(path):
    (path.parent / "s_00002.weights.h5").unlink()


def _unnamed(path):
    shutil.copy(path.parent / "s_00000.weights.h5", path.parent / "s_00009.weights.h5")


def _group_absent(path):
    def change(doc):
        doc["weight_map"]["/layers/dense_9/vars"] = ["s_00000.weights.h5"]
    _edit_map(path, change)


def _conflict(path):
    # The same shard named for a second group whose variables another shard also holds.
    def change(doc):
        doc["weight_map"]["/layers/dense/vars"] = ["s_00000.weights.h5", "s_00001.weights.h5"]
    with h5py.File(path.parent / "s_00000.weights.h5", "a") as h5:
        h5["layers/dense/vars/1"] = np.zeros(16, "float32")
    _edit_map(path, change)


def _total_size(path):
    _edit_map(path, lambda doc: doc["metadata"].__setitem__("total_size", 10**9))


def _not_a_group_key(path):
    _edit_map(path, lambda doc: doc["weight_map"].__setitem__("dense", ["s_00000.weights.h5"]))


BAD = {
    "absolute": (_absolute, "refused shard name"),
    "dotdot": (_dotdot, "refused shard name"),
    "symlink": (_symlink_out, "symbolic link out of the map's folder"),
    "missing": (_missing, "shard s_00002.weights.h5 is missing"),
    "unnamed": (_unnamed, "s_00009.weights.h5 lies beside the map but no map entry names it"),
    "group_absent": (_group_absent, "map entry /layers/dense_9/vars names shard s_00000.weights.h5, which has no group"),
    "conflict": (_conflict, "is in two shards, s_00000.weights.h5 and s_00001.weights.h5"),
    "total_size": (_total_size, "total_size declares 1,000,000,000 bytes"),
    "bad_key": (_not_a_group_key, "bad map entry 'dense'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sharded_sets_exit_3_with_one_line(made, tmp_path, case):
    target = _copy_set(made, tmp_path)
    doc = json.loads(target.read_text())
    assert "s_00002.weights.h5" in {n for v in doc["weight_map"].values() for n in v}
    breaker, message = BAD[case]
    breaker(target)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for args in (("inspect", target), ("diff", target, made["dir"] / "m.weights.h5"),
                 ("set-weights", made["dir"] / "m.keras", "--from-model", target, "-o", tmp_path / "o.keras")):
        res = run_cli(*args)
        assert res.exit_code == 3, (case, args, res)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (case, res.stderr)
        assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


# --------------------------------------------------------------------------- writing sharded sets


def _keras_values(made, weights_path):
    import keras

    from wtool.store.model_paths import variables_by_path

    model = keras.models.load_model(made["dir"] / "m.keras")
    model.load_weights(weights_path)
    return {p: np.asarray(v.numpy()) for p, v in variables_by_path(model).items()}


def test_convert_to_sharded_splits_as_keras_does(made, tmp_path):
    out = tmp_path / "c.weights.json"
    res = run_cli("convert", made["dir"] / "m.keras", out, "--max-shard-size", str(SHARD_BYTES), "--json")
    assert res.exit_code == 0, res
    ours = json.loads(out.read_text())
    keras_map = json.loads((made["dir"] / "s.weights.json").read_text())
    rename = {k: [n.replace("s_", "c_") for n in v] for k, v in keras_map["weight_map"].items()}
    assert ours["weight_map"] == rename
    assert ours["metadata"]["total_size"] == keras_map["metadata"]["total_size"]
    got = _keras_values(made, out)  # Keras itself loads what wtool wrote
    for path, value in made["keras"].items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    back = tmp_path / "back.weights.h5"
    assert run_cli("convert", out, back).exit_code == 0
    assert run_cli("diff", back, made["dir"] / "m.weights.h5").exit_code == 0


def test_set_weights_on_a_sharded_model_keeps_its_split(made, tmp_path):
    src = _copy_set(made, tmp_path)
    out = tmp_path / "e.weights.json"
    res = run_cli("set-weights", src, "--init", "d2/kernel=zeros", "-o", out)
    assert res.exit_code == 0, res
    want = json.loads(src.read_text())["weight_map"]
    assert json.loads(out.read_text())["weight_map"] == {k: [n.replace("s_", "e_") for n in v]
                                                         for k, v in want.items()}
    got = _keras_values(made, out)
    for path, value in made["keras"].items():
        expect = np.zeros_like(value) if path == "d2/kernel" else value
        np.testing.assert_array_equal(got[path], expect, err_msg=path)
    res = run_cli("set-weights", out, "--init", "d2/kernel=ones", "--in-place", "--max-shard-size", "10k")
    assert res.exit_code == 0, res
    assert sorted(p.name for p in tmp_path.glob("e*")) == ["e.weights.json", "e_00000.weights.h5"]
    assert np.all(_keras_values(made, out)["d2/kernel"] == 1)


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("fail_at", [1, 2, 4, 5])  # the transit map, the first and last shard, the map
def test_a_failed_write_over_a_set_puts_the_old_set_back(made, tmp_path, monkeypatch, fail_at):
    import wtool.store.sharded_write as sharded_write

    target = _copy_set(made, tmp_path)
    before = _files(tmp_path)
    assert sum(n.startswith("s_") for n in before) == 3  # renames: transit map, 3 shards, the map
    real = os.replace
    calls = []

    def dying(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(sharded_write.os, "replace", dying)
    res = run_cli("set-weights", target, "--init", "d1/kernel=zeros", "--in-place")
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder removed"
    assert _files(tmp_path) == before  # the same files, byte for byte: the old set, under its own names
    got = _keras_values(made, target)
    for path, value in made["keras"].items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_over_a_set_where_links_are_refused_old_shards_are_copied(made, tmp_path, monkeypatch):
    import wtool.store.sharded_write as sharded_write

    target = _copy_set(made, tmp_path)

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(sharded_write.os, "link", no_links)
    res = run_cli("set-weights", target, "--init", "d1/kernel=zeros", "--in-place")
    assert res.exit_code == 0, res
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["s.weights.json", *(f"s_{i:05}.weights.h5" for i in range(3))])
    assert np.all(_keras_values(made, target)["d1/kernel"] == 0)


def test_a_foreign_shard_beside_a_transit_map_is_still_refused(made, tmp_path):
    target = _copy_set(made, tmp_path)
    _edit_map(target, lambda doc: doc["metadata"].__setitem__("wtool_in_transit", ["s_00003.weights.h5"]))
    shutil.copy(tmp_path / "s_00000.weights.h5", tmp_path / "s_00003.weights.h5")
    assert run_cli("inspect", target).exit_code == 0  # listed as in transit: let pass
    shutil.copy(tmp_path / "s_00000.weights.h5", tmp_path / "s_00004.weights.h5")
    res = run_cli("inspect", target)
    assert res.exit_code == 3 and "s_00004.weights.h5 lies beside the map but no map entry names it" in res.stderr


def test_max_shard_size_bad_values(made, tmp_path):
    m = made["dir"] / "m.keras"
    for args, code, message in (
            ((m, tmp_path / "a.weights.json", "--max-shard-size", "lots"), 2, "--max-shard-size: expected"),
            ((m, tmp_path / "b.weights.json", "--max-shard-size", "100"), 2, "more than a shard of 100 bytes"),
            ((m, tmp_path / "c.weights.h5", "--max-shard-size", "1M"), 2, "name the output X.weights.json"),
            ((made["dir"] / "s.weights.json", tmp_path / "d.keras"), 4, "no architecture")):
        res = run_cli("convert", *args)
        assert res.exit_code == code and message in res.stderr, (args, res)
    assert list(tmp_path.iterdir()) == []
