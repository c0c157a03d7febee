"""`wtool diff` through the real CLI: equal across formats, changes, tolerances, structure differences."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SAMPLES, run_cli

NAMES = ["xor", "mlp", "cnn", "nested", "lstm"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("other", ["h5", "weights.h5"])
def test_same_model_in_two_formats_is_equal(name, other):
    res = run_cli("diff", SAMPLES / f"{name}.keras", SAMPLES / f"{name}.{other}")
    assert res.exit_code == 0, res
    assert res.stdout.splitlines()[-1].startswith("equal: ")
    doc = run_cli("diff", SAMPLES / f"{name}.keras", SAMPLES / f"{name}.{other}", "--json").json()
    assert doc["equal"] is True and doc["summary"]["same"] == len(doc["weights"]) > 0


def _edited(tmp_path: Path, name: str = "mlp", **changes: tuple[tuple[int, ...], float]) -> Path:
    """A copy of NAME.h5 with single values changed: dataset name -> (index, delta)."""
    out = tmp_path / f"{name}_edited.h5"
    shutil.copy(SAMPLES / f"{name}.h5", out)
    with h5py.File(out, "a") as f:
        for ds_name, (index, delta) in changes.items():
            data = f[ds_name][()]
            data[index] = data[index] + delta if not np.isnan(delta) else np.nan
            f[ds_name][...] = data
    return out


KERNEL = "model_weights/hidden/mlp/hidden/kernel"


def test_a_changed_value_is_reported_exit_1(tmp_path):
    b = _edited(tmp_path, **{KERNEL: ((3, 5), 0.25)})
    res = run_cli("diff", SAMPLES / "mlp.keras", b)
    assert res.exit_code == 1, res
    assert "hidden/kernel" in res.stdout and "changed" in res.stdout
    assert res.stdout.splitlines()[-1] == ("different: 4 weights, 3 same, 1 changed, 0 dtype differs, "
                                           "0 shape differs, 0 only in A, 0 only in B")
    doc = run_cli("diff", SAMPLES / "mlp.keras", b, "--json").json()
    (row,) = [w for w in doc["weights"] if w["status"] == "changed"]
    with h5py.File(SAMPLES / "mlp.h5") as f:
        ref = f[KERNEL][()].astype(np.float64)
    assert row["path"] == "hidden/kernel" and row["mismatched"] == 1
    assert row["max_abs_diff"] == pytest.approx(0.25, rel=1e-6)
    assert row["rel_l2_change"] == pytest.approx(0.25 / np.linalg.norm(ref), rel=1e-5)
    assert doc["equal"] is False and doc["summary"]["changed"] == 1


def test_tolerances(tmp_path):
    b = _edited(tmp_path, **{KERNEL: ((0, 0), 1e-4)})
    assert run_cli("diff", SAMPLES / "mlp.keras", b).exit_code == 1
    assert run_cli("diff", SAMPLES / "mlp.keras", b, "--atol", "1e-3").exit_code == 0
    assert run_cli("diff", SAMPLES / "mlp.keras", b, "--atol", "1e-6").exit_code == 1
    assert run_cli("diff", SAMPLES / "mlp.keras", b, "--rtol", "10").exit_code == 0
    res = run_cli("diff", SAMPLES / "mlp.keras", b, "--atol", "-1")
    assert res.exit_code == 2 and "must not be negative" in res.stderr


def test_layer_glob_limits_the_comparison(tmp_path):
    b = _edited(tmp_path, **{KERNEL: ((0, 0), 1.0)})
    res = run_cli("diff", SAMPLES / "mlp.keras", b, "--layer", "out", "--json")
    assert res.exit_code == 0 and [w["path"] for w in res.json()["weights"]] == ["out/kernel", "out/bias"]
    assert run_cli("diff", SAMPLES / "mlp.keras", b, "--layer", "hidden").exit_code == 1


def test_nan_equals_nan_but_not_a_number(tmp_path):
    b = _edited(tmp_path, **{KERNEL: ((1, 1), float("nan"))})
    res = run_cli("diff", SAMPLES / "mlp.keras", b, "--json")
    assert res.exit_code == 1
    row = [w for w in res.json()["weights"] if w["path"] == "hidden/kernel"][0]
    # the only difference is a NaN: said as such, not as an infinite max |a-b|
    assert row["mismatched"] == 1 and row["nan_mismatched"] == 1
    assert row["max_abs_diff"] == 0.0 and row["rel_l2_change"] == 0.0
    human = run_cli("diff", SAMPLES / "mlp.keras", b)
    head, line = human.stdout.splitlines()[:2]
    assert head.split()[-2:] == ["NaN", "mismatch"] and "inf" not in line
    assert line.split()[-2:] == ["1", "1"]
    assert run_cli("diff", b, b).exit_code == 0


def test_an_infinite_value_is_still_an_infinite_difference(tmp_path):
    b = _edited(tmp_path, **{KERNEL: ((1, 1), float("inf"))})
    row = [w for w in run_cli("diff", SAMPLES / "mlp.keras", b, "--json").json()["weights"]
           if w["path"] == "hidden/kernel"][0]
    assert row["max_abs_diff"] == "inf" and row["nan_mismatched"] == 0 and row["mismatched"] == 1


def test_relative_change_of_an_all_zero_weight_is_undefined(tmp_path):
    """mlp's out/bias is all zeros: its relative change is n/a (JSON null), not inf."""
    b = _edited(tmp_path, **{"model_weights/out/mlp/out/bias": ((3,), 0.5)})
    assert not np.any(h5py.File(SAMPLES / "mlp.h5")["model_weights/out/mlp/out/bias"][()])
    doc = run_cli("diff", SAMPLES / "mlp.h5", b, "--json").json()
    row = [w for w in doc["weights"] if w["path"] == "out/bias"][0]
    assert row["status"] == "changed" and row["rel_l2_change"] is None and row["max_abs_diff"] == 0.5
    line = [ln for ln in run_cli("diff", SAMPLES / "mlp.h5", b).stdout.splitlines() if ln.startswith("out/bias")][0]
    assert line.split()[-2:] == ["n/a", "1"] and "inf" not in line


def test_different_models_only_in_and_shape():
    res = run_cli("diff", SAMPLES / "mlp.keras", SAMPLES / "cnn.keras", "--json")
    assert res.exit_code == 1
    doc = res.json()
    status = {w["path"]: w["status"] for w in doc["weights"]}
    assert status["hidden/kernel"] == "only_a" and status["conv1/kernel"] == "only_b"
    assert status["out/kernel"] == "shape"
    # the .h5 twins hold the same values (test_same_model_in_two_formats_is_equal), under readable names
    with h5py.File(SAMPLES / "mlp.h5") as a, h5py.File(SAMPLES / "cnn.h5") as b:
        same = np.array_equal(a["model_weights/out/mlp/out/bias"][()], b["model_weights/out/cnn/out/bias"][()])
    assert status["out/bias"] == ("same" if same else "changed")
    shape_row = [w for w in doc["weights"] if w["path"] == "out/kernel"][0]
    assert shape_row["shape_a"] == [64, 10] and shape_row["shape_b"] == [16, 10]
    assert doc["summary"]["only_a"] == 2 and doc["summary"]["only_b"] == 8
    human = run_cli("diff", SAMPLES / "mlp.keras", SAMPLES / "cnn.keras")
    assert "only in A" in human.stdout and "shape differs" in human.stdout and "(64, 10) vs (16, 10)" in human.stdout


def test_all_lists_equal_weights_too():
    res = run_cli("diff", SAMPLES / "xor.keras", SAMPLES / "xor.h5", "--all")
    assert res.exit_code == 0
    assert "hidden/kernel" in res.stdout and "same" in res.stdout


def test_unreadable_input_exit_3(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_text("not a model\n")
    res = run_cli("diff", SAMPLES / "xor.keras", bad)
    assert res.exit_code == 3
    assert res.stderr.startswith("error: ") and "text file" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- .npz keyed by weight path


@pytest.mark.parametrize("fmt", ["keras", "h5", "weights.h5"])
def test_diff_a_model_against_its_export_then_an_edit(tmp_path, fmt):
    """export -> edit with numpy -> diff: the npz side is keyed by weight path like the model."""
    exported = tmp_path / "w.npz"
    assert run_cli("inspect", SAMPLES / f"nested.{fmt}", "--export", exported, "-q").exit_code == 0
    res = run_cli("diff", SAMPLES / f"nested.{fmt}", exported)
    assert res.exit_code == 0, res
    assert res.stdout.splitlines()[-1].startswith("equal: 10 weights, 10 same")

    arrays = dict(np.load(exported))
    arrays["features/d1/kernel"][0, 0] += 0.5
    del arrays["classifier/bias"]
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    doc = run_cli("diff", SAMPLES / f"nested.{fmt}", edited, "--json").json()
    by_path = {w["path"]: w for w in doc["weights"]}
    assert doc["equal"] is False
    assert by_path["features/d1/kernel"]["status"] == "changed"
    assert by_path["features/d1/kernel"]["max_abs_diff"] == pytest.approx(0.5)
    assert by_path["features/d1/kernel"]["mismatched"] == 1
    assert by_path["classifier/bias"]["status"] == "only_a"
    res = run_cli("diff", edited, SAMPLES / f"nested.{fmt}")
    assert res.exit_code == 1 and "only in B" in res.stdout


def test_diff_npz_with_a_pickled_member_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"out/bias": np.array([{"a": 1}], dtype=object)})
    res = run_cli("diff", SAMPLES / "mlp.keras", bad)
    assert res.exit_code == 3, res
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_singular_summary_and_limit_help():
    res = run_cli("diff", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", "--layer", "out/bias")
    assert res.exit_code == 0 and res.stdout.splitlines()[-1].startswith("equal: 1 weight, 1 same")
    text = " ".join(run_cli("diff", "--help").stdout.split())
    assert "Refuse to build a graph with more than N parameters" in text and "more than N layers" in text


# --------------------------------------------------------------------------- Inf / NaN, tolerances, dtypes, empty .npz


def _diff_quietly(*args):
    """run_cli with every warning recorded (pytest would otherwise catch numpy's RuntimeWarnings itself)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_cli("diff", *args)
    return res, [str(w.message) for w in caught]


def _with_specials(tmp_path: Path) -> Path:
    """mlp.h5 with hidden/kernel[1, 1] = Inf, [2, 2] = NaN and [3, 3] = -Inf."""
    out = tmp_path / "specials.h5"
    shutil.copy(SAMPLES / "mlp.h5", out)
    with h5py.File(out, "a") as f:
        data = f[KERNEL][()]
        data[1, 1], data[2, 2], data[3, 3] = np.inf, np.nan, -np.inf
        f[KERNEL][...] = data
    return out


@pytest.mark.parametrize("extra", [[], ["--rtol", "1e-3"], ["--atol", "0.5", "--json"]])
def test_inf_and_nan_leave_stderr_clean(tmp_path, extra):
    b = _with_specials(tmp_path)
    res, caught = _diff_quietly(SAMPLES / "mlp.keras", b, *extra)
    assert res.exit_code == 1 and res.stderr == "" and caught == [], (res, caught)
    res, caught = _diff_quietly(b, b, *extra)  # NaN/Inf against themselves: equal, no `x - y` warning
    assert res.exit_code == 0 and res.stderr == "" and caught == [], (res, caught)


def test_inf_against_nan_free_copy_through_the_installed_command(tmp_path):
    """The real console script in a fresh interpreter: Python's default warning filters print to stderr."""
    b = _with_specials(tmp_path)
    exe = Path(sys.executable).parent / "wtool"
    proc = subprocess.run([str(exe), "diff", str(SAMPLES / "mlp.keras"), str(b)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("different: 4 weights, 3 same, 1 changed")


@pytest.mark.parametrize("rtol", ["0", "1e-3", "10"])
def test_an_inf_difference_has_an_inf_relative_change(tmp_path, rtol):
    """B has Inf where A has a number: max |a-b| and the relative L2 change are both inf, whatever --rtol."""
    b = _edited(tmp_path, **{KERNEL: ((1, 1), float("inf"))})
    doc = run_cli("diff", SAMPLES / "mlp.keras", b, "--rtol", rtol, "--json").json()
    row = {w["path"]: w for w in doc["weights"]}["hidden/kernel"]
    assert row["status"] == "changed" and row["mismatched"] == 1 and row["nan_mismatched"] == 0
    assert row["max_abs_diff"] == "inf" and row["rel_l2_change"] == "inf"
    assert doc["equal"] is False and doc["summary"]["changed"] == 1
    line = [ln for ln in run_cli("diff", SAMPLES / "mlp.keras", b, "--rtol", rtol).stdout.splitlines()
            if ln.startswith("hidden/kernel")][0]
    assert line.split()[-3:] == ["inf", "inf", "1"]
    # and the other way round: A has the Inf
    row = {w["path"]: w for w in run_cli("diff", b, SAMPLES / "mlp.keras", "--json").json()["weights"]}[
        "hidden/kernel"]
    assert row["max_abs_diff"] == "inf" and row["rel_l2_change"] == "inf"


@pytest.mark.parametrize(("option", "value"), [("--atol", "nan"), ("--rtol", "nan"), ("--atol", "NaN"),
                                               ("--atol", "-1"), ("--rtol", "-1e-9")])
def test_nan_or_negative_tolerance_is_a_usage_error(tmp_path, option, value):
    res = run_cli("diff", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", option, value)
    assert res.exit_code == 2, res
    assert res.stdout == "" and res.stderr.startswith(f"error: {option} must not be negative or NaN")
    assert "Traceback" not in res.stderr
    # refused before the files are read: a broken input does not hide the option error
    bad = tmp_path / "broken.keras"
    bad.write_text("not a model\n")
    assert run_cli("diff", bad, bad, option, value).exit_code == 2
    assert run_cli("diff", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", option, "inf").exit_code == 0  # allowed


def _empty_npzs(tmp_path: Path) -> list[Path]:
    savez = tmp_path / "savez.npz"
    np.savez(savez)
    plain = tmp_path / "plain.npz"
    zipfile.ZipFile(plain, "w").close()
    commented = tmp_path / "commented.npz"
    with zipfile.ZipFile(commented, "w") as zf:
        zf.comment = b"no arrays here"
    for p in (savez, plain, commented):
        with np.load(p) as z:
            assert z.files == []
    return [savez, plain, commented]


def test_an_empty_npz_is_a_set_of_no_weights(tmp_path):
    for empty in _empty_npzs(tmp_path):
        res = run_cli("diff", empty, empty)
        assert res.exit_code == 0, res
        assert res.stdout.splitlines()[-1].startswith("equal: 0 weights, 0 same")
        doc = run_cli("diff", SAMPLES / "mlp.keras", empty, "--json").json()
        assert doc["equal"] is False and doc["summary"]["only_a"] == 4 and len(doc["weights"]) == 4
        assert {w["status"] for w in doc["weights"]} == {"only_a"}
        doc = run_cli("diff", empty, SAMPLES / "mlp.h5", "--json").json()
        assert doc["summary"]["only_b"] == 4
    # an empty zip under another name is still not a model
    keras = tmp_path / "empty.keras"
    shutil.copy(tmp_path / "savez.npz", keras)
    res = run_cli("diff", keras, keras)
    assert res.exit_code == 3 and res.stderr.startswith("error: ")


def test_export_of_a_model_without_weights_diffs_equal(tmp_path):
    """inspect --export on a weights file with no weights writes an empty .npz; diff reads it back."""
    model = tmp_path / "noweights.weights.h5"
    with h5py.File(model, "w") as f:
        f.create_group("layers/flatten/vars")
        f.create_group("vars").attrs["name"] = "m"
    exported = tmp_path / "t.npz"
    assert run_cli("inspect", model, "--export", exported, "-q").exit_code == 0
    with np.load(exported) as z:
        assert z.files == []
    res = run_cli("diff", model, exported)
    assert res.exit_code == 0, res
    assert res.stdout.splitlines()[-1].startswith("equal: 0 weights")


def _export_with_dtypes(tmp_path: Path, **dtypes: str) -> Path:
    exported = tmp_path / "w.npz"
    assert run_cli("inspect", SAMPLES / "mlp.keras", "--export", exported, "-q").exit_code == 0
    arrays = dict(np.load(exported))
    for path, dtype in dtypes.items():
        arrays[path.replace("__", "/")] = arrays[path.replace("__", "/")].astype(dtype)
    out = tmp_path / "retyped.npz"
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("dtype", ["float64", "float16", "int32"])
def test_a_dtype_difference_with_equal_values_is_a_difference(tmp_path, dtype):
    """out/bias is all zeros: equal in every dtype, so only the dtype differs."""
    b = _export_with_dtypes(tmp_path, out__bias=dtype)
    res = run_cli("diff", SAMPLES / "mlp.keras", b)
    assert res.exit_code == 1, res
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("out/bias")]
    assert "dtype differs" in line and f"(10,) float32 vs {dtype}" in line
    assert res.stdout.splitlines()[-1] == ("different: 4 weights, 3 same, 0 changed, 1 dtype differs, "
                                           "0 shape differs, 0 only in A, 0 only in B")
    doc = run_cli("diff", SAMPLES / "mlp.keras", b, "--json").json()
    row = {w["path"]: w for w in doc["weights"]}["out/bias"]
    assert row["status"] == "dtype" and row["dtype_a"] == "float32" and row["dtype_b"] == dtype
    assert row["mismatched"] == 0 and row["max_abs_diff"] == 0.0
    assert doc["equal"] is False and doc["summary"] == {"same": 3, "changed": 0, "dtype": 1, "only_a": 0,
                                                        "only_b": 0, "shape": 0}


def test_a_dtype_difference_with_changed_values_stays_changed(tmp_path):
    b = _export_with_dtypes(tmp_path, hidden__kernel="float16", out__bias="float16")
    doc = run_cli("diff", SAMPLES / "mlp.keras", b, "--json").json()
    by_path = {w["path"]: w for w in doc["weights"]}
    kernel = by_path["hidden/kernel"]
    assert kernel["status"] == "changed" and kernel["mismatched"] > 0 and kernel["dtype_b"] == "float16"
    assert by_path["out/bias"]["status"] == "dtype"
    assert doc["summary"]["changed"] == 1 and doc["summary"]["dtype"] == 1 and doc["summary"]["same"] == 2
    # float16 rounding stays within a loose tolerance: then only the dtype differs
    doc = run_cli("diff", SAMPLES / "mlp.keras", b, "--atol", "1e-2", "--json").json()
    assert {w["path"]: w["status"] for w in doc["weights"]}["hidden/kernel"] == "dtype"
    res = run_cli("diff", SAMPLES / "mlp.keras", b)
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("hidden/kernel")]
    assert "changed" in line and "(784, 64) float32 vs float16" in line


def test_byte_order_alone_is_not_a_dtype_difference(tmp_path):
    big = tmp_path / "big_endian.h5"
    shutil.copy(SAMPLES / "mlp.h5", big)
    with h5py.File(big, "a") as f:
        value = f[KERNEL][()]
        del f[KERNEL]
        f.create_dataset(KERNEL, data=value.astype(">f4"))
    res = run_cli("diff", SAMPLES / "mlp.keras", big, "--json")
    assert res.exit_code == 0, res
    assert res.json()["summary"]["same"] == 4
