"""-q on the commands that write a file: one result line on stdout (none for inspect --export); new records its seed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES, run_cli

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands


def test_quiet_write_commands_print_one_line(tmp_path):
    nested = SAMPLES / "nested.keras"
    res = run_cli("set-weights", nested, "--init", "classifier/bias=zeros", "-o", tmp_path / "s.keras", "-q")
    assert res.exit_code == 0, res
    assert res.stdout.strip().count("\n") == 0 and "assigned" in res.stdout and "wrote" in res.stdout
    res = run_cli("transfer", nested, tmp_path / "s.keras", "-o", tmp_path / "t.keras", "-q")
    assert res.exit_code == 0, res
    assert res.stdout.strip().count("\n") == 0 and "transferred" in res.stdout and res.stderr == ""
    res = run_cli("inspect", nested, "--export", tmp_path / "w.npz", "-q")
    assert res.exit_code == 0, res
    assert res.stdout == "" and res.stderr == ""
    assert len(np.load(tmp_path / "w.npz").files) == 10
    res = run_cli("set-weights", nested, "--init", "classifier/bias=zeros", "-o", tmp_path / "s2.keras")
    assert res.exit_code == 0 and "old mean" in res.stdout  # without -q: the table


def test_new_without_seed_records_the_seed_it_drew(tmp_path):
    args = ("--input-shape", "3", "--layers", "dense:4:relu,dense:2")
    res = run_cli("new", tmp_path / "a.keras", *args, "--json")
    assert res.exit_code == 0, res
    seed = res.json()["seed"]
    assert isinstance(seed, int)
    res = run_cli("new", tmp_path / "b.keras", *args, "--seed", seed, "-q")
    assert res.exit_code == 0, res
    assert res.stdout.strip() == f"wrote {tmp_path / 'b.keras'}; seed {seed}"
    assert run_cli("diff", tmp_path / "a.keras", tmp_path / "b.keras").exit_code == 0


def test_optimizer_notes_say_what_happened(tmp_path):
    """No "moments belong to the old values" for an optimizer that never stepped; no "kept" when a format change drops it."""

    pytest.importorskip("tensorflow")
    res = run_cli("new", tmp_path / "n.keras", "--input-shape", "3", "--layers", "dense:2", "--optimizer", "adam",
                  "--loss", "mse", "--seed", "0", "-q")
    assert res.exit_code == 0, res
    res = run_cli("set-weights", tmp_path / "n.keras", "--init", "dense/bias=ones", "-o", tmp_path / "n2.keras")
    assert res.exit_code == 0, res
    assert "moments" not in res.stderr
    res = run_cli("transfer", SAMPLES / "nested.keras", SAMPLES / "nested.keras", "-o", tmp_path / "t.h5", "--json")
    assert res.exit_code == 0, res
    notes = " | ".join(res.json()["notes"])
    assert "not carried over" in notes and "TARGET kept" not in notes
    res = run_cli("train", SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz", "-o", tmp_path / "x.keras",
                  "--epochs", "1", "-q")  # adam: per-weight moments are saved
    assert res.exit_code == 0, res
    res = run_cli("set-weights", tmp_path / "x.keras", "--init", "*=zeros", "-o", tmp_path / "x2.keras")
    assert res.exit_code == 0, res
    assert "moments belong to the old values" in res.stderr
