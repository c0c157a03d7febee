"""bfloat16 and float16 weights as Keras 3 writes them (bfloat16: 2-byte opaque data + attribute dtype="bfloat16").

Every value is compared with what Keras itself loads from the same file.
"""

from __future__ import annotations

import shutil

import h5py
import ml_dtypes
import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands

DTYPES = {"d1/kernel": "bfloat16", "d1/bias": "bfloat16", "d2/kernel": "float16", "d2/bias": "float16",
          "d3/kernel": "float32", "d3/bias": "float32"}


def _layers(keras, dtypes):
    return [keras.Input((8,)), keras.layers.Dense(16, name="d1", dtype=dtypes[0], bias_initializer="random_normal"),
            keras.layers.Dense(4, name="d2", dtype=dtypes[1]), keras.layers.Dense(2, name="d3", dtype=dtypes[2])]


def _values(model):
    from wtool.store.model_paths import variables_by_path

    return {p: np.asarray(v.numpy()) for p, v in variables_by_path(model).items()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("lowp")
    keras.utils.set_random_seed(3)
    low = keras.Sequential(_layers(keras, ("bfloat16", "float16", "float32")), name="low")
    full = keras.Sequential(_layers(keras, ("float32", "float32", "float32")), name="full")
    low.save(d / "low.keras")
    low.save_weights(d / "low.weights.h5")
    low.save_weights(d / "low.weights.json", max_shard_size=700 / 1024**3)
    full.save(d / "full.keras")
    kernel = np.random.RandomState(0).randn(8, 16).astype("float32")
    np.save(d / "k.npy", kernel)
    return {"dir": d, "low": _values(keras.models.load_model(d / "low.keras")),
            "full": _values(keras.models.load_model(d / "full.keras")), "kernel": kernel}


def _load(path):
    import keras

    return _values(keras.models.load_model(path))


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32)


@pytest.mark.parametrize("name", ["low.keras", "low.weights.h5", "low.weights.json"])
def test_inspect_shows_the_real_dtype_and_stats(made, name):
    res = run_cli("inspect", made["dir"] / name, "--stats", "--json")
    assert res.exit_code == 0, res
    rows = {w["path"]: w for w in res.json()["weights"]}
    assert {p: w["dtype"] for p, w in rows.items()} == DTYPES
    for path, value in made["low"].items():
        wide = value.astype(np.float64)
        assert rows[path]["stats"]["max"] == wide.max() and rows[path]["stats"]["min"] == wide.min(), path
    assert res.json()["weight_bytes"] == 16 * 9 * 2 + 4 * 17 * 2 + 2 * 5 * 4


def test_export_keeps_bfloat16_bits_in_safetensors(made, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "w.safetensors"
    assert run_cli("inspect", made["dir"] / "low.keras", "--export", out).exit_code == 0
    with safe_open(str(out), framework="numpy") as f:
        assert f.get_slice("d1/kernel").get_dtype() == "BF16"
        for path, value in made["low"].items():
            np.testing.assert_array_equal(_bits(f.get_tensor(path)), _bits(value), err_msg=path)
    res = run_cli("inspect", made["dir"] / "low.keras", "--export", tmp_path / "w.npz")
    assert res.exit_code == 0 and "as float32 (exact" in res.stderr and ".safetensors" in res.stderr, res
    with np.load(tmp_path / "w.npz") as npz:  # numpy has no bfloat16: widened, value for value
        for path, value in made["low"].items():
            assert npz[path].dtype == (np.float32 if value.dtype.name == "bfloat16" else value.dtype), path
            np.testing.assert_array_equal(npz[path], value.astype(npz[path].dtype), err_msg=path)
    res = run_cli("convert", made["dir"] / "low.keras", tmp_path / "c.npz")
    assert res.exit_code == 0 and "as float32 (exact" in res.stderr, res
    with np.load(tmp_path / "c.npz") as npz, np.load(tmp_path / "w.npz") as exported:
        assert {k: npz[k].tobytes() for k in npz} == {k: exported[k].tobytes() for k in exported}


def test_diff_sees_equal_and_dtype_changes(made):
    d = made["dir"]
    for other in ("low.weights.h5", "low.weights.json"):
        assert run_cli("diff", d / "low.keras", d / other).exit_code == 0
    res = run_cli("diff", d / "low.keras", d / "full.keras", "--json")
    assert res.exit_code == 1
    status = {w["path"]: w["status"] for w in res.json()["weights"]}
    assert status["d1/kernel"] in ("changed", "dtype differs") and status["d3/kernel"] == "changed"


def test_set_weights_rounds_float32_into_bfloat16_and_says_so(made, tmp_path):
    out = tmp_path / "s.keras"
    res = run_cli("set-weights", made["dir"] / "low.keras", "--weight", f"d1/kernel={made['dir'] / 'k.npy'}",
                  "-o", out)
    assert res.exit_code == 0, res
    assert "d1/kernel: float32 values rounded to bfloat16 (largest change" in res.stderr
    got = _load(out)
    assert got["d1/kernel"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(_bits(got["d1/kernel"]), _bits(made["kernel"].astype(ml_dtypes.bfloat16)))
    np.testing.assert_array_equal(_bits(got["d2/kernel"]), _bits(made["low"]["d2/kernel"]))


def test_transfer_between_precisions_equals_keras_casts(made, tmp_path):
    d = made["dir"]
    down, up = tmp_path / "down.keras", tmp_path / "up.keras"
    res = run_cli("transfer", d / "full.keras", d / "low.keras", "-o", down)
    assert res.exit_code == 4 and "float32 does not fit float16" in res.stderr  # float16 can overflow: refused
    assert run_cli("transfer", d / "full.keras", d / "low.keras", "--skip-mismatch", "-o", down).exit_code == 0
    assert run_cli("transfer", d / "low.keras", d / "full.keras", "-o", up).exit_code == 0
    got_down, got_up = _load(down), _load(up)
    for path, dtype in DTYPES.items():
        if dtype == "float16":  # skipped: the target's own values stay
            want = made["low"][path]
        else:
            want = made["full"][path].astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        np.testing.assert_array_equal(_bits(got_down[path]), _bits(want), err_msg=path)
        np.testing.assert_array_equal(got_up[path], made["low"][path].astype(np.float32), err_msg=path)


def test_opaque_data_without_the_bfloat16_mark_is_refused(made, tmp_path):
    bad = tmp_path / "bad.weights.h5"
    shutil.copy(made["dir"] / "low.weights.h5", bad)
    with h5py.File(bad, "a") as h5:
        del h5["layers/dense/vars/0"].attrs["dtype"]
    res = run_cli("inspect", bad)
    assert res.exit_code == 3 and "holds |V2 data, not numbers" in res.stderr and "Traceback" not in res.stderr
