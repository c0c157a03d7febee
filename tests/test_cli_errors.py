"""The click layer's own errors keep the one-line `error:` / `hint:` contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["inspect", "sample_models/mlp.keras", "--weigths"], "no such option '--weigths'"),
        (["inspec", "sample_models/mlp.keras"], "did you mean 'inspect'"),
        (["inspect", "sample_models/mlp.keras", "--sample", "0"], "invalid value for '--sample'"),
        (["inspect"], "missing argument 'MODEL'"),
    ],
)
def test_usage_errors_are_one_error_line_and_a_hint(args, fragment):
    os.chdir(REPO)
    result = run_cli(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert lines[1].startswith("hint: see 'wtool")
    assert result.stdout == ""


def test_unwritable_output_is_a_usage_error_not_a_bug(tmp_path):
    result = run_cli("inspect", REPO / "sample_models" / "xor.keras", "--export", "/proc/wtool-no/out.npz")
    assert result.exit_code == 2, result
    assert "cannot write here" in result.stderr or "does not exist" in result.stderr
    assert "bug" not in result.stderr


TF_LINE_MARKERS = ("absl", "onednn", "cuda", "tensorflow/", "cpu_feature_guard", "i0000", "w0000", "e0000")
# (command, outcome) x TF_CPP_MIN_LOG_LEVEL, rotated so each level meets every outcome and most commands
# while only four runs pay for a TensorFlow import that succeeds.
LOG_LEVEL_CASES = [(command, outcome, [None, "0", "2", "3"][(i + i // 4) % 4])
                   for i, (command, outcome) in enumerate((c, o) for o in ("ok", "bad")
                                                          for c in ("infer", "train", "new", "transfer"))]


def _graph_command(command: str, outcome: str, tmp_path: Path) -> tuple[list, int]:
    import numpy as np

    samples = REPO / "sample_models"
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 2), "float32"), y=np.zeros((4, 7), "float32"))
    args = {
        ("infer", "ok"): ["infer", samples / "xor.keras", samples / "xor.npz", "--input-key", "x", "-o", "p.npy"],
        ("infer", "bad"): ["infer", samples / "xor.keras", bad, "--input-key", "y", "-o", "p.npy"],
        ("train", "ok"): ["train", samples / "xor.keras", "--data", samples / "xor.npz", "-o", "t.keras",
                          "--epochs", "2"],
        ("train", "bad"): ["train", samples / "xor.keras", "--data", bad, "-o", "t.keras", "--epochs", "1"],
        ("new", "ok"): ["new", "n.keras", "--input-shape", "2", "--layers", "dense:1"],
        ("new", "bad"): ["new", "n.keras", "--input-shape", "2", "--layers", "dense:0"],
        ("transfer", "ok"): ["transfer", samples / "nested.keras", "--replace-head", "3", "-o", "h.keras"],
        ("transfer", "bad"): ["transfer", tmp_path / "missing.keras", "--replace-head", "3", "-o", "h.keras"],
    }[command, outcome]
    return args, 0 if outcome == "ok" else -1


@pytest.mark.tf
@pytest.mark.parametrize("command, outcome, level", LOG_LEVEL_CASES, ids=lambda v: str(v))
def test_graph_commands_keep_tensorflow_start_up_noise_off_stderr(tmp_path, command, outcome, level):
    """Whatever TF_CPP_MIN_LOG_LEVEL a CI script exports, TensorFlow's C++ lines never reach the user."""
    args, expected = _graph_command(command, outcome, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "WTOOL_DEBUG")}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    proc = subprocess.run([sys.executable, "-m", "wtool", *map(str, args), "-q"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    if expected == 0:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode in (2, 3, 4), proc.stderr
        assert proc.stderr.startswith("error: "), proc.stderr
    leaked = [line for line in proc.stderr.splitlines() if any(m in line.lower() for m in TF_LINE_MARKERS)]
    assert not leaked, proc.stderr


@pytest.mark.tf
def test_one_line_json_document_on_stdin_hints_at_input_format_json():
    model = str(REPO / "sample_models" / "xor.keras")
    refused = run_cli("infer", model, "-", "-q", input="[[1,0],[0,1]]\n")
    assert refused.exit_code == 4, refused
    assert "hint: for one JSON document holding a list of rows, pass --input-format json" in refused.stderr
    accepted = run_cli("infer", model, "-", "-q", "--input-format", "json", input="[[1,0],[0,1]]\n")
    assert accepted.exit_code == 0, accepted
    assert len(accepted.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize("command", [
    ["inspect", "mlp.keras", "--sample", "150", "--layer", "hidden/kernel"],
    ["inspect", "mlp.keras", "--sample", "150", "--layer", "hidden/kernel", "--json"],
    ["infer", "mlp.keras", "mlp.npz", "--input-key", "x", "--json"],  # one 125 KB batch: one write
], ids=["inspect", "inspect-json", "infer"])
def test_a_reader_that_stops_early_ends_the_command_quietly(command):
    """`wtool ... | head -1`: nothing on stderr (no BrokenPipeError), and 141 as for a command killed by SIGPIPE."""
    args = [str(REPO / "sample_models" / a) if a.endswith((".keras", ".npz")) else a for a in command]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "WTOOL_DEBUG")}
    proc = subprocess.Popen([sys.executable, "-m", "wtool", *args, "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away with more than a pipe buffer (64 KB) still to come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert first and err == "", err


def test_a_rich_console_hands_a_broken_pipe_to_the_cli():
    from wtool.cli.render import Output

    console = Output().stdout
    with pytest.raises(BrokenPipeError):
        console.on_broken_pipe()  # rich's default would exit 1, so diff could not say 141 and mean it


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_a_full_disk_under_stdout_is_one_error_line_not_a_bug(json_flag):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "wtool", "inspect", str(REPO / "sample_models" / "xor.keras"),
                               *json_flag], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == "error: cannot write: No space left on device", proc.stderr
    assert lines[1].startswith("hint: check the disk"), proc.stderr


def test_a_closed_stdout_discards_the_output():
    proc = subprocess.run(f"{sys.executable} -m wtool inspect {REPO / 'sample_models' / 'xor.keras'} >&-",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("args,command", [(["inspect", "--layer"], "wtool inspect"),
                                          (["diff", "a", "b", "--atol"], "wtool diff"),
                                          (["inspect", "m.keras", "--sample", "x"], "wtool inspect")])
def test_usage_errors_point_at_the_command_help(args, command):
    res = run_cli(*args)
    assert res.exit_code == 2, res
    assert res.stderr.splitlines()[-1] == f"hint: see '{command} --help'", res.stderr


def test_a_newline_in_a_file_name_stays_inside_the_error_line(tmp_path):
    path = tmp_path / "evil\nerror: forged.keras"
    path.write_bytes(b"not a model")
    res = run_cli("inspect", path)
    assert res.exit_code == 3, res
    lines = res.stderr.splitlines()
    assert lines[0].startswith("error: ") and "evil\\x0aerror: forged.keras" in lines[0], res.stderr
    assert not any(line.startswith("error: forged") for line in lines)
