"""`wtool set-weights`: direct assignment at the HDF5 level, every problem found before writing."""

from __future__ import annotations

import io
import math
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import SAMPLES, run_cli

FORMATS = ["keras", "h5", "weights.h5"]


# --------------------------------------------------------------------------- helpers


def weights_of(path) -> dict[str, np.ndarray]:
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


def optimizer_state(path) -> dict[str, np.ndarray]:
    """Every optimizer dataset, read with h5py (.keras: from the archive's weights file)."""
    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as zf:
            h5 = h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r")
    else:
        h5 = h5py.File(path, "r")
    found: dict[str, np.ndarray] = {}
    with h5:
        for group in ("optimizer", "optimizer_weights"):
            if group in h5:
                h5[group].visititems(lambda name, obj, g=group: found.__setitem__(
                    f"{g}/{name}", np.asarray(obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return found


def changed(a, b) -> set[str]:
    wa, wb = weights_of(a), weights_of(b)
    assert wa.keys() == wb.keys()
    return {k for k in wa if not np.array_equal(wa[k], wb[k])}


@pytest.fixture
def copies(tmp_path):
    """Copies of the sample mlp in every format, safe to change in place."""
    made = {}
    for fmt in FORMATS:
        dst = tmp_path / f"mlp.{fmt}"
        shutil.copy(SAMPLES / f"mlp.{fmt}", dst)
        made[fmt] = dst
    return made


@pytest.fixture
def other_mlp(tmp_path):
    """Another mlp (.keras) with different values everywhere, made by set-weights --init itself."""
    out = tmp_path / "other.keras"
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "*=glorot_normal", "--seed", "7", "-o", out)
    assert res.exit_code == 0, res
    return out


# --------------------------------------------------------------------------- every source, every format


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", ["npz", "npy", "model", "init"])
def test_changes_exactly_the_named_weights(tmp_path, fmt, source, other_mlp):
    model = SAMPLES / f"mlp.{fmt}"
    out = tmp_path / f"out.{fmt}"
    rng = np.random.default_rng(0)
    if source == "npz":
        kernel = rng.normal(size=(64, 10)).astype("float32")
        np.savez(tmp_path / "w.npz", **{"out/kernel": kernel})
        args = ["--npz", tmp_path / "w.npz"]
        expect = {"out/kernel": kernel}
    elif source == "npy":
        bias = rng.normal(size=(64,)).astype("float32")
        np.save(tmp_path / "b.npy", bias)
        args = ["--weight", f"hidden/bias={tmp_path / 'b.npy'}"]
        expect = {"hidden/bias": bias}
    elif source == "model":
        args = ["--from-model", other_mlp, "--layer", "out"]
        other = weights_of(other_mlp)
        expect = {"out/kernel": other["out/kernel"], "out/bias": other["out/bias"]}
    else:
        args = ["--init", "hidden/kernel=ones", "--init", "out/bias=constant:0.25"]
        expect = {"hidden/kernel": np.ones((784, 64), "float32"), "out/bias": np.full(10, 0.25, "float32")}

    res = run_cli("set-weights", model, *args, "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert sorted(a["path"] for a in doc["assigned"]) == sorted(expect)
    assert doc["verified"] is True and doc["ok"] is True
    assert doc["counts"] == {"assigned": len(expect), "kept": 4 - len(expect), "total": 4, "problems": 0}

    assert changed(model, out) == set(expect)
    got = weights_of(out)
    for path, value in expect.items():
        np.testing.assert_array_equal(got[path], value)
    # the optimizer state is kept byte for byte
    before, after = optimizer_state(model), optimizer_state(out)
    assert before and before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert doc["optimizer"] == "kept"
    # mlp's optimizer never stepped (iterations 0, no per-weight slots): nothing of it belongs to old values
    assert "moments belong to the old values" not in res.stderr
    if fmt == "keras":
        with zipfile.ZipFile(out) as zf, zipfile.ZipFile(model) as zin:
            assert zf.testzip() is None  # CRC patched correctly
            assert zf.read("config.json") == zin.read("config.json")
            assert zf.read("metadata.json") == zin.read("metadata.json")


def test_wtool_diff_shows_only_the_assigned_weights(tmp_path):
    out = tmp_path / "out.keras"
    assert run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "conv2/kernel=he_normal", "--seed", "3",
                   "-o", out).exit_code == 0
    res = run_cli("diff", SAMPLES / "cnn.keras", out, "--json")
    assert res.exit_code == 1, res
    status = {w["path"]: w["status"] for w in res.json()["weights"]}
    assert status.pop("conv2/kernel") == "changed"
    assert status and set(status.values()) == {"same"}, status
    assert set(status) == set(weights_of(SAMPLES / "cnn.keras")) - {"conv2/kernel"}


def test_nested_paths_and_layer_globs(tmp_path):
    out = tmp_path / "n.h5"
    res = run_cli("set-weights", SAMPLES / "nested.h5", "--init", "features/bn=zeros", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert [a["path"] for a in res.json()["assigned"]] == [
        "features/bn/gamma", "features/bn/beta", "features/bn/moving_mean", "features/bn/moving_variance"]
    assert changed(SAMPLES / "nested.h5", out) == {"features/bn/gamma", "features/bn/moving_variance"}


# --------------------------------------------------------------------------- round trip through inspect --export


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_round_trip_export_edit_set(tmp_path, fmt):
    model = SAMPLES / f"nested.{fmt}"
    exported = tmp_path / "w.npz"
    res = run_cli("inspect", model, "--export", exported)
    assert res.exit_code == 0, res
    with np.load(exported) as data:
        arrays = {k: data[k] for k in data.files}
    assert "features/d1/kernel" in arrays
    arrays["features/d1/kernel"] = arrays["features/d1/kernel"] * 2 + 1
    arrays["classifier/bias"] = np.arange(4, dtype="float32")
    np.savez(tmp_path / "edited.npz", **arrays)

    out = tmp_path / f"edited.{fmt}"
    res = run_cli("set-weights", model, "--npz", tmp_path / "edited.npz", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["counts"]["assigned"] == len(arrays)  # every exported key is a weight path
    got = weights_of(out)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value)
    assert changed(model, out) == {"features/d1/kernel", "classifier/bias"}


# --------------------------------------------------------------------------- problems: exit 4, all listed, nothing written


def _int_weight_model(tmp_path):
    """mlp.weights.h5 whose out/bias dataset is stored as int32 (for float -> int refusals)."""
    path = tmp_path / "int.weights.h5"
    shutil.copy(SAMPLES / "mlp.weights.h5", path)
    with h5py.File(path, "r+") as h5:
        del h5["layers/dense_1/vars/1"]
        h5["layers/dense_1/vars/1"] = np.arange(10, dtype="int32")
    return path


BAD_CASES = [
    # (id, extra files to make -> args, message fragments)
    ("unknown-path", lambda d: ["--weight", f"hiden/kernel={_npy(d, (784, 64))}"],
     ["hiden/kernel: no such weight", "closest: hidden/kernel"]),
    ("unknown-init-glob", lambda d: ["--init", "outt=zeros"], ["outt: no such weight", "closest:"]),
    ("shape", lambda d: ["--weight", f"out/kernel={_npy(d, (10, 64))}"],
     ["out/kernel: expected shape (64, 10), received (10, 64)"]),
    ("nonfinite", lambda d: ["--weight", f"out/bias={_npy(d, (10,), fill=math.nan)}"],
     ["out/bias: 10 NaN/Inf value(s)"]),
    ("inf-init", lambda d: ["--init", "out/bias=constant:inf"], ["out/bias: 10 NaN/Inf"]),
    ("duplicate", lambda d: ["--init", "out=zeros", "--weight", f"out/bias={_npy(d, (10,))}"],
     ["out/bias: assigned twice"]),
    ("npz-keys", lambda d: ["--npz", _npz(d, {"hidden/kernel": np.zeros((784, 64), "float32"),
                                              "nothere/bias": np.zeros(3, "float32")})],
     ["nothere/bias: no such weight"]),
]


def _npy(directory, shape, fill=0.5, dtype="float32"):
    path = directory / f"a{len(list(directory.glob('*.npy')))}.npy"
    np.save(path, np.full(shape, fill, dtype=dtype))
    return path


def _npz(directory, arrays):
    path = directory / "x.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize(("case", "make", "fragments"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_exit_4_nothing_written(tmp_path, fmt, case, make, fragments):
    out = tmp_path / f"out.{fmt}"
    res = run_cli("set-weights", SAMPLES / f"mlp.{fmt}", *make(tmp_path), "-o", out)
    assert res.exit_code == 4, res
    assert res.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))  # no temporary left behind


def test_all_problems_reported_together(tmp_path):
    out = tmp_path / "out.keras"
    nan = _npy(tmp_path, (64,), fill=math.nan)
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--weight", f"hidden/bias={nan}",
                  "--weight", f"out/kernel={_npy(tmp_path, (3, 3))}", "--init", "missing/kernel=zeros",
                  "--init", "out/bias=zeros", "-o", out, "--json")
    assert res.exit_code == 4
    assert res.stderr.startswith("error: 3 problems; nothing written:")
    for fragment in ("hidden/bias: 64 NaN/Inf", "out/kernel: expected shape (64, 10), received (3, 3)",
                     "missing/kernel: no such weight"):
        assert fragment in res.stderr
    doc = res.json()  # --json still gets the plan with its problems
    assert doc["ok"] is False
    assert sorted(p["kind"] for p in doc["problems"]) == ["nonfinite", "shape", "unknown_path"]
    assert not out.exists()


def test_allow_nonfinite(tmp_path):
    out = tmp_path / "out.h5"
    nan = _npy(tmp_path, (10,), fill=math.nan)
    res = run_cli("set-weights", SAMPLES / "mlp.h5", "--weight", f"out/bias={nan}", "--allow-nonfinite", "-o", out)
    assert res.exit_code == 0, res
    assert np.isnan(weights_of(out)["out/bias"]).all()


def test_dtype_rules(tmp_path):
    model = _int_weight_model(tmp_path)
    # float -> int refused
    res = run_cli("set-weights", model, "--weight", f"out/bias={_npy(tmp_path, (10,), fill=1.5)}",
                  "-o", tmp_path / "o1.weights.h5")
    assert res.exit_code == 4
    assert "out/bias: float values (float32) cannot go into an integer weight (int32)" in res.stderr
    assert not (tmp_path / "o1.weights.h5").exists()
    # int16 -> int32 widening, float64 -> float32 and int -> float accepted
    np.save(tmp_path / "i16.npy", np.arange(10, dtype="int16") * 3)
    np.save(tmp_path / "f64.npy", np.full((64,), 0.125, dtype="float64"))
    np.save(tmp_path / "i64.npy", np.ones((64, 10), dtype="int64"))
    res = run_cli("set-weights", model, "--weight", f"out/bias={tmp_path / 'i16.npy'}",
                  "--weight", f"hidden/bias={tmp_path / 'f64.npy'}", "--weight", f"out/kernel={tmp_path / 'i64.npy'}",
                  "-o", tmp_path / "o2.weights.h5")
    assert res.exit_code == 0, res
    got = weights_of(tmp_path / "o2.weights.h5")
    assert got["out/bias"].dtype == np.int32 and list(got["out/bias"]) == list(range(0, 30, 3))
    assert got["hidden/bias"].dtype == np.float32 and (got["hidden/bias"] == 0.125).all()
    assert (got["out/kernel"] == 1).all()
    # float32 -> float16 narrowing refused
    model16 = tmp_path / "f16.weights.h5"
    shutil.copy(SAMPLES / "mlp.weights.h5", model16)
    with h5py.File(model16, "r+") as h5:
        del h5["layers/dense_1/vars/1"]
        h5["layers/dense_1/vars/1"] = np.zeros(10, dtype="float16")
    res = run_cli("set-weights", model16, "--weight", f"out/bias={_npy(tmp_path, (10,))}", "-o", tmp_path / "o3.h5")
    assert res.exit_code == 4 and "float32 does not fit float16" in res.stderr


def test_usage_errors(tmp_path):
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "-o", tmp_path / "o.keras")
    assert res.exit_code == 2 and "nothing to assign" in res.stderr
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "out=zeros")
    assert res.exit_code == 2 and "no output file" in res.stderr
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "out=bogus", "-o", tmp_path / "o.keras")
    assert res.exit_code == 2 and "unknown initializer 'bogus'" in res.stderr and "glorot_uniform" in res.stderr
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "out=zeros", "-o", SAMPLES / "mlp.keras")
    assert res.exit_code == 2 and "inputs are never changed" in res.stderr
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "out=zeros", "-o", tmp_path / "o.txt")
    assert res.exit_code == 2
    res = run_cli("set-weights", tmp_path / "missing.keras", "--init", "out=zeros", "-o", tmp_path / "o.keras")
    assert res.exit_code == 3


# --------------------------------------------------------------------------- in place, dry run, optimizer


def test_in_place_is_atomic(tmp_path, copies):
    model = copies["keras"]
    before = model.read_bytes()
    res = run_cli("set-weights", model, "--init", "out/kernel=zeros", "--init", "nope=zeros", "--in-place")
    assert res.exit_code == 4
    assert model.read_bytes() == before  # a failed plan leaves the input untouched
    res = run_cli("set-weights", model, "--init", "out/kernel=zeros", "--in-place", "--json")
    assert res.exit_code == 0, res
    assert res.json()["output"] == str(model)
    assert (weights_of(model)["out/kernel"] == 0).all()
    assert not list(tmp_path.glob(".mlp*"))  # no temporary left behind


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "o.keras"
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "out=zeros", "-o", out, "--dry-run")
    assert res.exit_code == 0, res
    assert "dry run: nothing written" in res.stdout
    assert "out/kernel" in res.stdout and "out/bias" in res.stdout
    assert not out.exists()
    res = run_cli("set-weights", SAMPLES / "mlp.keras", "--init", "out=zeros", "--dry-run", "--json")
    assert res.exit_code == 0 and res.json()["dry_run"] is True and res.json()["output"] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_reset_optimizer(tmp_path, fmt):
    out = tmp_path / f"o.{fmt}"
    res = run_cli("set-weights", SAMPLES / f"mlp.{fmt}", "--init", "out/bias=ones", "--reset-optimizer", "-o", out,
                  "--json")
    assert res.exit_code == 0, res
    assert res.json()["optimizer"] == "dropped"
    assert optimizer_state(out) == {}
    assert changed(SAMPLES / f"mlp.{fmt}", out) == {"out/bias"}
    if fmt == "keras":
        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None
            assert [i.filename for i in zf.infolist()] == ["metadata.json", "config.json", "model.weights.h5"]


def test_human_report(tmp_path):
    res = run_cli("set-weights", SAMPLES / "mlp.h5", "--init", "out/bias=constant:2", "-o", tmp_path / "o.h5")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["weight", "shape", "from", "old", "mean±std", "[min,", "max]", "new", "mean±std",
                                "[min,", "max]"]
    assert "out/bias" in lines[1] and "(10,)" in lines[1] and "0±0 [0, 0]" in lines[1] and "2±0 [2, 2]" in lines[1]
    assert "1 assigned, 3 kept; optimizer state kept" in res.stdout


# --------------------------------------------------------------------------- initializers follow Keras's formulas


def test_initializer_distributions(tmp_path):
    out = tmp_path / "o.keras"
    res = run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "conv2/kernel=glorot_uniform",
                  "--init", "out/kernel=he_normal", "--init", "conv1/kernel=lecun_uniform", "--seed", "5", "-o", out)
    assert res.exit_code == 0, res
    w = weights_of(out)
    # conv2 kernel (3, 3, 8, 16): fan_in = 9*8 = 72, fan_out = 9*16 = 144
    limit = math.sqrt(6 / (72 + 144))
    k = w["conv2/kernel"]
    assert k.min() >= -limit and k.max() <= limit and k.max() > 0.9 * limit
    # out kernel (16, 10): he_normal = truncated normal with std sqrt(2/16), cut at 2 std before scaling
    o = w["out/kernel"]
    assert np.abs(o).max() <= 2 * math.sqrt(2 / 16) / 0.87962566103423978 + 1e-6
    # conv1 kernel (3, 3, 1, 8): lecun_uniform limit sqrt(3 / fan_in) with fan_in 9
    assert np.abs(w["conv1/kernel"]).max() <= math.sqrt(3 / 9)
    # same seed, same values; another seed, other values
    out2 = tmp_path / "o2.keras"
    assert run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "conv2/kernel=glorot_uniform",
                   "--init", "out/kernel=he_normal", "--init", "conv1/kernel=lecun_uniform", "--seed", "5",
                   "-o", out2).exit_code == 0
    assert changed(out, out2) == set()
    out3 = tmp_path / "o3.keras"
    assert run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "conv2/kernel=glorot_uniform", "--seed", "6",
                   "-o", out3).exit_code == 0
    assert not np.array_equal(weights_of(out3)["conv2/kernel"], k)


def test_large_std_statistics_match_keras_formula(tmp_path):
    out = tmp_path / "o.h5"
    assert run_cli("set-weights", SAMPLES / "mlp.h5", "--init", "hidden/kernel=he_normal", "--seed", "0",
                   "-o", out).exit_code == 0
    k = weights_of(out)["hidden/kernel"]
    assert abs(k.std() - math.sqrt(2 / 784)) < 0.05 * math.sqrt(2 / 784)
    out = tmp_path / "o2.h5"
    assert run_cli("set-weights", SAMPLES / "mlp.h5", "--init", "hidden/kernel=orthogonal", "--seed", "0",
                   "-o", out).exit_code == 0
    k = weights_of(out)["hidden/kernel"].astype("float64")
    np.testing.assert_allclose(k.T @ k, np.eye(64), atol=1e-5)


# --------------------------------------------------------------------------- Keras sees the values


@pytest.mark.tf
@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_loads_the_edited_model(tmp_path, fmt):
    from wtool.graph.model import import_keras

    keras = import_keras()
    out = tmp_path / f"o.{fmt}"
    assert run_cli("set-weights", SAMPLES / f"nested.{fmt}", "--init", "features/d2/kernel=constant:0.5",
                   "--init", "classifier/bias=ones", "-o", out).exit_code == 0
    model = keras.saving.load_model(out, compile=False)
    d2 = model.get_layer("features").get_layer("d2")
    assert (d2.kernel.numpy() == 0.5).all()
    assert (model.get_layer("classifier").bias.numpy() == 1).all()


# --------------------------------------------------------------------------- layouts that cannot be spliced


def test_chunked_compressed_datasets_go_through_h5py(tmp_path):
    model = tmp_path / "gz.h5"
    shutil.copy(SAMPLES / "mlp.h5", model)
    with h5py.File(model, "r+") as h5:
        name = "model_weights/hidden/mlp/hidden/kernel"
        value = np.asarray(h5[name])
        del h5[name]
        h5.create_dataset(name, data=value, chunks=(100, 64), compression="gzip")
    out = tmp_path / "o.h5"
    res = run_cli("set-weights", model, "--init", "hidden/kernel=constant:3", "--init", "out/bias=ones", "-o", out,
                  "--json")
    assert res.exit_code == 0, res
    assert res.json()["verified"] is True
    got = weights_of(out)
    assert (got["hidden/kernel"] == 3).all() and (got["out/bias"] == 1).all()
    with h5py.File(out, "r") as h5:
        assert h5["model_weights/hidden/mlp/hidden/kernel"].compression == "gzip"


def test_deflated_keras_archive_is_rewritten(tmp_path):
    model = tmp_path / "deflated.keras"
    with zipfile.ZipFile(SAMPLES / "mlp.keras") as zin, zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    out = tmp_path / "o.keras"
    res = run_cli("set-weights", model, "--init", "out/kernel=zeros", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["method"] == "rewrite"
    assert changed(model, out) == {"out/kernel"}
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    # a deflated SOURCE for transfer is read through the archive, not byte-copied
    out2 = tmp_path / "t.h5"
    res = run_cli("transfer", out, SAMPLES / "mlp.h5", "-o", out2)
    assert res.exit_code == 0, res
    assert (weights_of(out2)["out/kernel"] == 0).all()


def test_hdf5_user_block_offsets(tmp_path):
    """A file with a user block: dataset offsets are absolute, the splice must land on the data."""
    model = tmp_path / "ub.weights.h5"
    with h5py.File(SAMPLES / "mlp.weights.h5", "r") as src, h5py.File(model, "w", userblock_size=512) as dst:
        for key in src:
            src.copy(src[key], dst, name=key)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
    out = tmp_path / "o.weights.h5"
    res = run_cli("set-weights", model, "--init", "hidden/bias=constant:7", "-o", out)
    assert res.exit_code == 0, res
    assert (weights_of(out)["hidden/bias"] == 7).all()
    assert changed(model, out) == {"hidden/bias"}


# --------------------------------------------------------------------------- no TensorFlow at the HDF5 level


def test_surgery_does_not_import_tensorflow(tmp_path):
    """set-weights and same-format transfer run in a fresh interpreter without importing TF or Keras."""
    import subprocess
    import sys

    code = """
import sys
from wtool.cli import cli
for args in (["set-weights", "{m}", "--init", "out=zeros", "-o", "{d}/a.keras", "-q"],
             ["transfer", "{h}", "{m}", "-o", "{d}/b.keras", "-q"],
             ["transfer", "{h}", "{m}", "-o", "{d}/c.weights.h5", "-q"]):
    try:
        cli.main(args, standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, exc.code
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(bad)
assert not bad, bad
""".format(m=SAMPLES / "mlp.keras", h=SAMPLES / "mlp.h5", d=tmp_path)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "a.keras").exists() and (tmp_path / "c.weights.h5").exists()


@pytest.mark.tf
def test_output_in_another_format_goes_through_keras(tmp_path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    out = tmp_path / "o.keras"
    res = run_cli("set-weights", SAMPLES / "nested.h5", "--init", "classifier/bias=constant:0.5", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["method"] == "keras"
    model = keras.saving.load_model(out, compile=False)
    assert (model.get_layer("classifier").bias.numpy() == 0.5).all()
    want = weights_of(SAMPLES / "nested.h5")
    np.testing.assert_array_equal(model.get_layer("features").get_layer("d1").kernel.numpy(),
                                  want["features/d1/kernel"])


# --------------------------------------------------------------------------- format matrix

CONVERSIONS = [(s, o) for s in FORMATS for o in FORMATS]


@pytest.mark.tf
@pytest.mark.parametrize(("src", "dst"), CONVERSIONS, ids=[f"{s}-to-{o}" for s, o in CONVERSIONS])
def test_every_source_format_into_every_output_format(tmp_path, src, dst):
    """export -> edit -> set-weights works from every format into every format that can hold the result;
    a weights-only source into a full-model output is a clear exit 4, nothing written."""
    exported = tmp_path / "w.npz"
    assert run_cli("inspect", SAMPLES / f"nested.{src}", "--export", exported, "-q").exit_code == 0
    arrays = dict(np.load(exported))
    arrays["classifier/bias"] = np.full_like(arrays["classifier/bias"], 0.25)
    np.savez(exported, **arrays)
    out = tmp_path / f"edited.{dst}"
    res = run_cli("set-weights", SAMPLES / f"nested.{src}", "--npz", exported, "-o", out, "-q")
    if src == "weights.h5" and dst != "weights.h5":
        assert res.exit_code == 4, res
        assert "no architecture" in res.stderr and "internal error" not in res.stderr
        assert not out.exists() and list(tmp_path.iterdir()) == [exported]
        return
    assert res.exit_code == 0, res
    got = weights_of(out)
    want = weights_of(SAMPLES / f"nested.{src}")
    assert got.keys() == want.keys()
    for path, value in got.items():
        expect = arrays[path] if path == "classifier/bias" else want[path]
        np.testing.assert_array_equal(value, expect, err_msg=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([exported.name, out.name])  # no staging left


def test_initializer_that_cannot_fill_a_shape_names_the_weight(tmp_path):
    """--init identity on conv kernels: exit 4 naming each weight, listed with every other problem."""
    out = tmp_path / "o.keras"
    res = run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "*/kernel=identity", "--init",
                  "conv1/bias=orthogonal", "--init", "nope=zeros", "-o", out)
    assert res.exit_code == 4, res
    assert "error: 4 problems; nothing written:" in res.stderr
    assert ("conv1/kernel: identity needs a 2-D weight, not shape (3, 3, 1, 8) [from --init */kernel=identity]"
            in res.stderr)
    assert "conv2/kernel: identity needs a 2-D weight, not shape (3, 3, 8, 16)" in res.stderr
    assert "conv1/bias: orthogonal needs a weight of rank 2 or more, not shape (8,)" in res.stderr
    assert "nope: no such weight" in res.stderr
    assert not out.exists()
    doc = run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "*/kernel=identity", "--dry-run", "--json").json()
    assert {(p["kind"], p["path"]) for p in doc["problems"]} == {("shape", "conv1/kernel"), ("shape", "conv2/kernel")}
    res = run_cli("set-weights", SAMPLES / "cnn.keras", "--init", "out/kernel=identity", "-o", out)
    assert res.exit_code == 0, res
    np.testing.assert_array_equal(weights_of(out)["out/kernel"], np.eye(*weights_of(out)["out/kernel"].shape))


# --------------------------------------------------------------------------- help and table text


@pytest.mark.parametrize("command", ["set-weights", "transfer", "inspect", "diff"])
def test_help_examples_are_not_rewrapped(command):
    """Each example of the docstring is its own line in --help (click's \\b marker), at any width."""
    from wtool.cli.commands import diff, inspect, set_weights, transfer

    module = {"set-weights": set_weights, "transfer": transfer, "inspect": inspect, "diff": diff}[command]
    doc = module.command.callback.__doc__ if module.command.callback.__doc__ else ""
    examples = [line.strip() for line in doc.split("Examples:")[1].splitlines() if line.strip().startswith("wtool")]
    assert len(examples) >= 3
    res = run_cli(command, "--help")
    assert res.exit_code == 0
    lines = [line.strip() for line in res.stdout.splitlines()]
    for example in examples:
        assert example in lines, example


def test_help_lists_every_initializer():
    from wtool.ops.surgery import INITIALIZERS

    text = " ".join(run_cli("set-weights", "--help").stdout.split())
    for name in [*INITIALIZERS, "constant:V"]:
        assert name in text, name


def test_tables_have_no_trailing_spaces(tmp_path):
    np.save(tmp_path / "bias.npy", np.zeros(10, "float32"))
    res = run_cli("set-weights", SAMPLES / "mlp.h5", "--weight", f"out/bias={tmp_path / 'bias.npy'}",
                  "--init", "hidden/kernel=glorot_uniform", "-o", tmp_path / "o.h5")
    assert res.exit_code == 0, res
    res2 = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "cnn.keras", "--skip-mismatch", "--dry-run")
    for out in (res.stdout, res2.stdout):
        assert len(out.splitlines()) >= 3
        assert [line for line in out.splitlines() if line != line.rstrip()] == []


def test_a_stdout_that_is_not_utf8_gets_an_ascii_table(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONIOENCODING="ascii")
    proc = subprocess.run([sys.executable, "-m", "wtool", "set-weights", str(SAMPLES / "xor.keras"), "--init",
                           "out/*=zeros", "-o", str(tmp_path / "z.keras")], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode("ascii")
    assert "old mean+-std [min, max]" in text and "0+-0 [0, 0]" in text, text


@pytest.mark.tf
def test_an_error_while_converting_through_keras_names_the_users_file(tmp_path):
    """.h5 -> .keras is staged in a temporary directory; a refusal there still names MODEL."""
    res = run_cli("set-weights", SAMPLES / "mlp.h5", "--init", "out/*=zeros", "-o", tmp_path / "m.keras",
                  "--max-params", "10")
    assert res.exit_code == 3, res
    assert res.stderr.startswith(f"error: {SAMPLES / 'mlp.h5'}: model config declares 50,890 parameters"), res.stderr
    assert "staged" not in res.stderr and not (tmp_path / "m.keras").exists()
