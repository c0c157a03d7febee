"""`wtool inspect` through the real CLI on sample_models/ and hand-made files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SAMPLES, run_cli

from wtool.ops.inspect import weight_stats
from wtool.store import open_model

NAMES = ["xor", "mlp", "cnn", "nested", "lstm"]
FORMATS = ["keras", "h5", "weights.h5"]
JSON_KEYS = {"file", "format", "keras_version", "total_params", "trainable_params", "non_trainable_params",
             "layers", "weights"}


def values(path: Path) -> dict[str, np.ndarray]:
    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_default_view(name, fmt):
    res = run_cli("inspect", SAMPLES / f"{name}.{fmt}")
    assert res.exit_code == 0, res
    assert res.stderr == ""
    for line in ("file", "format", "saved by", "size", "optimizer", "training config", "total"):
        assert line in res.stdout
    for layer_path in values(SAMPLES / f"{name}.{fmt}"):
        assert layer_path.split("/")[-2] in res.stdout


def test_nested_layers_are_indented_and_totals_right():
    res = run_cli("inspect", SAMPLES / "nested.keras")
    lines = res.stdout.splitlines()
    assert any(line.startswith("features ") and "Sequential" in line for line in lines)
    assert any(line.startswith("  d1 ") and "Dense" in line and "544" in line for line in lines)
    assert "total 1,268 params" in res.stdout and "1,204 trainable, 64 non-trainable" in res.stdout


def test_json_document():
    res = run_cli("inspect", SAMPLES / "mlp.h5", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert JSON_KEYS <= set(doc)
    assert (doc["format"], doc["keras_version"], doc["backend"]) == ("h5", "3.15.1", "tensorflow")
    assert doc["total_params"] == 784 * 64 + 64 + 64 * 10 + 10
    assert doc["trainable_params"] == doc["total_params"] and doc["non_trainable_params"] == 0
    assert [(layer["name"], layer["class"], layer["params"]) for layer in doc["layers"]] == [
        ("hidden", "Dense", 784 * 64 + 64), ("out", "Dense", 650)]
    assert doc["layers"][0]["weights"] == ["hidden/kernel", "hidden/bias"]
    assert doc["weights"][0] == {"path": "hidden/kernel", "layer": "hidden", "name": "kernel", "shape": [784, 64],
                                 "dtype": "float32", "params": 50176, "trainable": True}


def test_weights_table_lists_paths():
    res = run_cli("inspect", SAMPLES / "cnn.weights.h5", "--weights")
    assert res.exit_code == 0, res
    for path in ("conv1/kernel", "bn1/moving_variance", "out/bias"):
        assert path in res.stdout
    assert "(3, 3, 1, 8)" in res.stdout


def test_stats_match_numpy():
    res = run_cli("inspect", SAMPLES / "cnn.keras", "--stats", "--json")
    assert res.exit_code == 0, res
    arrays = values(SAMPLES / "cnn.keras")
    for w in res.json()["weights"]:
        a = arrays[w["path"]].astype(np.float64)
        s = w["stats"]
        assert s["min"] == pytest.approx(a.min()) and s["max"] == pytest.approx(a.max())
        assert s["mean"] == pytest.approx(a.mean(), abs=1e-12)
        assert s["std"] == pytest.approx(a.std(), abs=1e-9)
        assert s["l2_norm"] == pytest.approx(np.linalg.norm(a))
        assert s["zero_fraction"] == pytest.approx((a == 0).mean())
        assert s["nan_count"] == 0 and s["inf_count"] == 0


def test_stats_are_the_same_chunk_by_chunk():
    with open_model(SAMPLES / "mlp.keras") as mf:
        whole = weight_stats(mf, "hidden/kernel")
        chunked = weight_stats(mf, "hidden/kernel", max_elements=333)
    for key in ("min", "max", "mean", "std", "l2_norm", "zero_fraction"):
        assert getattr(chunked, key) == pytest.approx(getattr(whole, key), rel=1e-12, abs=1e-15)


def test_stats_count_nan_and_inf(tmp_path):
    p = tmp_path / "bad.h5"
    shutil.copy(SAMPLES / "xor.h5", p)
    with h5py.File(p, "a") as f:
        k = f["model_weights/hidden/xor/hidden/kernel"]
        data = k[()]
        data[0, 0], data[0, 1], data[1, 1] = np.nan, np.inf, 0.0
        k[...] = data
    res = run_cli("inspect", p, "--stats", "--layer", "hidden", "--json")
    s = res.json()["weights"][0]["stats"]
    assert (s["nan_count"], s["inf_count"]) == (1, 1)
    finite = data[np.isfinite(data)].astype(np.float64)
    assert s["mean"] == pytest.approx(finite.mean()) and s["zero_fraction"] == pytest.approx(1 / 6)


def test_sample_is_the_top_left_block():
    res = run_cli("inspect", SAMPLES / "mlp.keras", "--sample", "3", "--layer", "hidden/kernel", "--json")
    arrays = values(SAMPLES / "mlp.keras")
    (w,) = res.json()["weights"]
    assert np.allclose(np.array(w["sample"]), arrays["hidden/kernel"][0:3, 0:3])
    human = run_cli("inspect", SAMPLES / "mlp.keras", "--sample", "2", "--layer", "hidden/kernel")
    assert "hidden/kernel[0:2, 0:2]" in human.stdout


def test_sample_of_a_conv_kernel_is_its_2d_view():
    res = run_cli("inspect", SAMPLES / "cnn.keras", "--sample", "4", "--layer", "conv2/kernel", "--json")
    kernel = values(SAMPLES / "cnn.keras")["conv2/kernel"]
    assert np.allclose(np.array(res.json()["weights"][0]["sample"]), kernel.reshape(-1, 16)[:4, :4])


def test_histogram_counts_every_value():
    res = run_cli("inspect", SAMPLES / "mlp.keras", "--histogram", "--json")
    for w in res.json()["weights"]:
        assert sum(w["histogram"]["counts"]) == w["params"]
        assert len(w["histogram"]["edges"]) == len(w["histogram"]["counts"]) + 1
    human = run_cli("inspect", SAMPLES / "mlp.keras", "--histogram")
    assert human.exit_code == 0 and "|" in human.stdout


def test_layer_glob_selects():
    res = run_cli("inspect", SAMPLES / "nested.keras", "--layer", "features/*", "--json")
    doc = res.json()
    assert [w["path"] for w in doc["weights"]][:2] == ["features/d1/kernel", "features/d1/bias"]
    assert all(w["path"].startswith("features/") for w in doc["weights"])
    assert doc["selected_params"] == 1200 and doc["total_params"] == 1268
    res = run_cli("inspect", SAMPLES / "nested.keras", "--layer", "*/kernel", "--json")
    assert [w["path"] for w in res.json()["weights"]] == ["features/d1/kernel", "features/d2/kernel",
                                                          "classifier/kernel"]


def test_layer_glob_matching_nothing_is_a_usage_error():
    res = run_cli("inspect", SAMPLES / "nested.keras", "--layer", "nope*")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0] == "error: --layer 'nope*' matches no weight"


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_npz_keyed_by_path(tmp_path, fmt):
    out = tmp_path / "w.npz"
    res = run_cli("inspect", SAMPLES / f"nested.{fmt}", "--export", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["export"]["weights"] == 10
    expected = values(SAMPLES / f"nested.{fmt}")
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(expected)
        for path, value in expected.items():
            assert npz[path].dtype == value.dtype and np.array_equal(npz[path], value)


def test_export_of_a_selection(tmp_path):
    out = tmp_path / "k.npz"
    res = run_cli("inspect", SAMPLES / "cnn.h5", "--layer", "*/kernel", "--export", out)
    assert res.exit_code == 0, res
    assert "exported 3 weights" in res.stderr
    with np.load(out) as npz:
        assert sorted(npz.files) == ["conv1/kernel", "conv2/kernel", "out/kernel"]


def test_export_streams_large_weights_in_chunks(tmp_path, monkeypatch):
    import wtool.ops.inspect as core

    out = tmp_path / "big.npz"
    with open_model(SAMPLES / "mlp.keras") as mf:
        core.export_npz(mf, ["hidden/kernel", "out/bias"], out, max_elements=1000)
    with np.load(out) as npz:
        assert np.array_equal(npz["hidden/kernel"], values(SAMPLES / "mlp.keras")["hidden/kernel"])


@pytest.mark.parametrize("target,fragment", [("missing_dir/x.npz", "does not exist"), ("x.txt", ".npz")])
def test_export_refuses_bad_targets(tmp_path, target, fragment):
    res = run_cli("inspect", SAMPLES / "xor.keras", "--export", tmp_path / target)
    assert res.exit_code == 2, res
    assert fragment in res.stderr
    assert not list(tmp_path.rglob("*.npz")) and not (tmp_path / "x.txt").exists()


def test_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    import wtool.ops.inspect as core
    from wtool.errors import InputError

    out = tmp_path / "w.npz"
    real = core.ModelFile.iter_chunks
    calls = {"n": 0}

    def failing(self, path, max_elements=1 << 22):
        calls["n"] += 1
        if calls["n"] > 2:
            raise InputError("simulated read failure")
        yield from real(self, path, max_elements)

    monkeypatch.setattr(core.ModelFile, "iter_chunks", failing)
    res = run_cli("inspect", SAMPLES / "cnn.keras", "--export", out)
    assert res.exit_code == 3
    assert list(tmp_path.iterdir()) == []


def _lfs(tmp: Path) -> Path:
    p = tmp / "model.h5"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123\n")
    return p


def _truncated(tmp: Path) -> Path:
    p = tmp / "cut.keras"
    p.write_bytes((SAMPLES / "cnn.h5").read_bytes()[:3000])
    return p


@pytest.mark.parametrize("make,fragment", [
    (lambda t: t / "missing.keras", "no such file"),
    (lambda t: t, "is a directory"),
    (lambda t: (t / "e.h5").touch() or t / "e.h5", "empty file"),
    (lambda t: (t / "notes.keras").write_text("just text\n") and t / "notes.keras", "text file"),
    (_lfs, "Git LFS pointer"),
    (_truncated, "truncated: 3,000 of"),
])
def test_bad_input_exit_3_one_line(tmp_path, make, fragment):
    path = make(tmp_path)
    res = run_cli("inspect", path)
    assert res.exit_code == 3, res
    lines = res.stderr.splitlines()
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines)
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_soft_link_is_refused_exit_5(tmp_path):
    p = tmp_path / "linked.h5"
    shutil.copy(SAMPLES / "xor.h5", p)
    with h5py.File(p, "a") as f:
        del f["model_weights/out/xor/out/kernel"]
        f["model_weights/out/xor/out/kernel"] = h5py.SoftLink("/model_weights/hidden/xor/hidden/kernel")
    res = run_cli("inspect", p)
    assert res.exit_code == 5
    assert "soft link" in res.stderr.splitlines()[0]


def test_json_mode_prints_only_json_on_stdout():
    res = run_cli("inspect", SAMPLES / "lstm.keras", "--weights", "--stats", "--histogram", "--sample", "2", "--json")
    assert res.exit_code == 0
    doc = res.json()
    assert {"stats", "histogram", "sample"} <= set(doc["weights"][0])


def test_check_reports_the_graph_verdict():
    res = run_cli("inspect", SAMPLES / "xor.keras", "--check")
    assert res.exit_code == 0 and res.stdout.splitlines()[-1] == "graph ok"
    res = run_cli("inspect", SAMPLES / "xor.weights.h5", "--check", "--json")
    assert res.exit_code == 4
    assert res.json()["check"]["status"] == "no-graph"


@pytest.mark.parametrize("command", ["inspect", "set-weights"])
def test_numpy_archive_is_named_as_such(tmp_path, command):
    """An .npz (data or an --export) given as a model is called a numpy archive, not a broken .keras."""
    args = ["--init", "out=zeros", "-o", tmp_path / "o.keras"] if command == "set-weights" else []
    res = run_cli(command, SAMPLES / "mlp.npz", *args)
    assert res.exit_code == 3, res
    assert "a numpy .npz archive" in res.stderr and ".keras archive" not in res.stderr
    assert "hint: `wtool diff MODEL FILE.npz`" in res.stderr
    assert not (tmp_path / "o.keras").exists()


def test_singular_and_stats_help():
    res = run_cli("inspect", SAMPLES / "mlp.keras", "--layer", "hidden/kernel")
    assert res.exit_code == 0 and "selected 1 weight, 50,176 params" in res.stdout
    assert re.search(r"^hidden\s+Dense\s+\(784, 64\)\s+50,176\s+yes$", res.stdout, re.M), res.stdout  # no bias counted
    doc = run_cli("inspect", SAMPLES / "mlp.keras", "--layer", "hidden/kernel", "--json").json()
    assert [(layer["params"], layer["weights"]) for layer in doc["layers"]] == [(50176, ["hidden/kernel"])]
    text = " ".join(run_cli("inspect", "--help").stdout.split())
    assert "NaN/Inf are counted and left out of min/max/mean/std/L2" in text
    assert "Refuse to build a graph with more than N parameters" in text and "only where a graph is built" in text


@pytest.mark.tf
def test_uncompiled_model_has_no_training_config(tmp_path):
    out = tmp_path / "plain.keras"
    assert run_cli("new", out, "--input-shape", "2", "--layers", "dense:1", "-q").exit_code == 0
    uncompiled = run_cli("inspect", out)
    assert uncompiled.exit_code == 0, uncompiled
    assert re.search(r"training config\s+none", uncompiled.stdout)
    compiled = run_cli("inspect", SAMPLES / "xor.keras")
    assert re.search(r"training config\s+present", compiled.stdout)


# ---- plain-text output: no markup, no terminal control characters, bold only on a colour terminal ----


def _legacy_weights_with_name(path: Path, name: str) -> Path:
    """A tf.keras 2 style .weights.h5 with one layer called `name` (names come from strangers' files)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode()]
        group = f.create_group(name)
        group.attrs["weight_names"] = [f"{name}/kernel:0".encode()]
        group.create_dataset(f"{name}/kernel:0", data=np.arange(6, dtype="float32").reshape(2, 3))
    return path


def test_names_with_terminal_control_characters_are_escaped(tmp_path):
    path = _legacy_weights_with_name(tmp_path / "ansi.weights.h5", "dense\x1b]0;owned\x07")
    res = run_cli("inspect", path, "--weights", "--stats", "--sample", "2")
    assert res.exit_code == 0, res
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout, res.stdout
    assert "dense\\x1b]0;owned\\x07/kernel" in res.stdout
    assert "[[0. 1.]" in res.stdout  # the values are still shown


def test_brackets_in_names_and_paths_are_not_markup(tmp_path):
    path = _legacy_weights_with_name(tmp_path / "m[red]x.weights.h5", "layer[bold]")
    out = tmp_path / "w[red]x.npz"
    res = run_cli("inspect", path, "--export", out)
    assert res.exit_code == 0, res
    assert "layer[bold]" in res.stdout and "m[red]x.weights.h5" in res.stdout
    assert f"to {out}" in res.stderr, res.stderr
    with np.load(out) as npz:
        assert npz.files == ["layer[bold]/kernel"]


@pytest.mark.parametrize("env,styled", [({"FORCE_COLOR": "1"}, True), ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
                                        ({}, False)])
def test_headings_are_bold_only_on_a_colour_terminal(monkeypatch, env, styled):
    for var in ("FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    res = run_cli("inspect", SAMPLES / "xor.keras")
    assert res.exit_code == 0, res
    assert ("\x1b[1mfile" in res.stdout) is styled, res.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout)
    assert plain.splitlines()[0].split() == ["file", str(SAMPLES / "xor.keras")]


def test_a_stdout_that_is_not_utf8_gets_ascii_histograms_and_escaped_names(tmp_path):
    model = tmp_path / "modèle.keras"
    shutil.copy(SAMPLES / "xor.keras", model)
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    proc = subprocess.run([sys.executable, "-m", "wtool", "inspect", str(model), "--histogram"], capture_output=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode("ascii")
    assert "mod\\xe8le.keras" in text
    bars = re.search(r"hidden/kernel .*\|(.{16})\|", text)
    assert bars and set(bars.group(1)) <= set(" .:-=+*#%@") and "@" in bars.group(1), text


def test_a_newline_or_tab_in_a_name_cannot_forge_rows_or_break_columns(tmp_path):
    path = _legacy_weights_with_name(tmp_path / "forge.weights.h5", "a\nfile  forged.h5\tx")
    res = run_cli("inspect", path, "--weights")
    assert res.exit_code == 0, res
    lines = res.stdout.splitlines()
    assert not any(line.startswith("file  forged") for line in lines), res.stdout
    rows = [line for line in lines if "forged" in line]
    assert len(rows) == 2 and all("a\\x0afile  forged.h5\\x09x" in row for row in rows), res.stdout
    # the weights table stays aligned: every row's shape column starts where the header's does
    table = lines[lines.index(next(line for line in lines if line.startswith("weight "))):]
    start = table[0].index("shape")
    assert table[1][start:].startswith("(2, 3)"), table


def test_invisible_reordering_characters_are_shown_escaped(tmp_path):
    """A bidi override (U+202E) or zero-width space in a name would make the table lie about it."""
    path = _legacy_weights_with_name(tmp_path / "bidi.weights.h5", "dense\u202eltuo\u200b")
    res = run_cli("inspect", path, "--weights")
    assert res.exit_code == 0, res
    assert "\u202e" not in res.stdout and "dense\\u202eltuo\\u200b/kernel" in res.stdout, res.stdout


def test_escaped_names_keep_the_diff_table_aligned(tmp_path):
    a = _legacy_weights_with_name(tmp_path / "a.weights.h5", "d\x1b[31mred")
    b = _legacy_weights_with_name(tmp_path / "b.weights.h5", "plain")
    res = run_cli("diff", a, b)
    assert res.exit_code == 1, res
    lines = res.stdout.splitlines()
    status_col = lines[0].index("status")
    assert all(line[status_col:].startswith("only in") for line in lines[1:3]), res.stdout
    assert "\x1b" not in res.stdout and "d\\x1b[31mred/kernel" in res.stdout


def test_notes_and_warnings_are_plain_text_on_the_stream_given():
    import io

    from rich.console import Console

    from wtool.cli.render import Output

    buf = io.StringIO()
    out = Output(stderr=Console(file=buf))
    out.info("wrote m[red]x[/].keras")
    out.warn("layer [bold]x\x1b[2J")
    assert buf.getvalue() == "wrote m[red]x[/].keras\nwarning: layer [bold]x\\x1b[2J\n"


@pytest.mark.parametrize("args", [["inspect", ""], ["inspect", str(SAMPLES / "xor.keras"), "--export", ""],
                                  ["diff", str(SAMPLES / "xor.keras"), " "],
                                  ["set-weights", str(SAMPLES / "xor.keras"), "--npz", "", "-o", "x.keras"],
                                  ["train", str(SAMPLES / "xor.keras"), "--data", str(SAMPLES / "xor.npz"), "-o",
                                   "x.keras", "--checkpoint-dir", ""]])
def test_an_empty_path_is_a_usage_error(args):
    res = run_cli(*args)
    assert res.exit_code == 2, res
    assert "the path is empty" in res.stderr.splitlines()[0] and res.stdout == "", res


def test_counts_read_as_english(tmp_path):
    res = run_cli("inspect", SAMPLES / "xor.keras", "--layer", "out/kernel", "--export", tmp_path / "o.npz")
    assert res.exit_code == 0, res
    assert "selected 1 weight, 3 params" in res.stdout and "exported 1 weight to" in res.stderr, res
