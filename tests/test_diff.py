"""`wtool diff` through the real CLI: equal across formats, changes, tolerances, structure differences."""

from __future__ import annotations

import shutil
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
    assert res.stdout.splitlines()[-1] == ("different: 4 weights, 3 same, 1 changed, 0 shape differs, "
                                           "0 only in A, 0 only in B")
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
    assert "Refuse models with more parameters than N" in text and "Refuse models with more layers" in text
    assert "graphs" not in text
