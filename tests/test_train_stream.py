"""`wtool train MODEL --data - -o OUT`: batches from stdin through real pipes, checked against Keras's
train_on_batch over the same batches from the same initial weights (issue 15, section 5)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SAMPLES, stored_weights

pytestmark = pytest.mark.tf

XOR = SAMPLES / "xor.keras"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
TIMEOUT = 180


def _batches(sizes: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.random((n, 2), dtype=np.float32), rng.random((n, 1), dtype=np.float32)) for n in sizes]


def _jsonl(batches: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    # float32 values printed exactly (repr of the float64 they widen to), so the tool reads the same numbers
    return b"".join(json.dumps({"x": x.astype(float).tolist(), "y": y.astype(float).tolist()}).encode() + b"\n"
                    for xs, ys in batches for x, y in zip(xs, ys, strict=True))


def _npy(batches: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    buf = io.BytesIO()
    for x, y in batches:
        np.save(buf, x)
        np.save(buf, y)
    return buf.getvalue()


def _keras_reference(batches: list[tuple[np.ndarray, np.ndarray]], lr: float, momentum: float = 0.0) -> list[dict]:
    """XOR's weights after each train_on_batch (SGD, mse), from the sample's initial weights."""
    import keras

    model = keras.saving.load_model(XOR)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum), loss="mse")
    after = []
    for x, y in batches:
        model.train_on_batch(x, y)
        after.append({"hidden/kernel": model.layers[0].kernel.numpy(), "out/kernel": model.layers[1].kernel.numpy()})
    return after


def _weights(path: Path) -> dict[str, np.ndarray]:
    stored = stored_weights(path)
    return {key: stored[key] for key in ("hidden/kernel", "out/kernel")}


def _assert_same(path: Path, expected: dict[str, np.ndarray]) -> None:
    got = _weights(path)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def _popen(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wtool", "train", *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def _run(stdin: bytes, *args: str | Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "wtool", "train", *map(str, args)], input=stdin,
                          capture_output=True, env=ENV, timeout=TIMEOUT, check=False)
    return proc


@pytest.fixture(scope="module")
def reference() -> list[dict]:
    return _keras_reference(_batches([8] * 6), lr=0.5)


def test_json_lines_train_as_keras_train_on_batch(tmp_path, reference):
    out = tmp_path / "xor2.keras"
    proc = _run(_jsonl(_batches([8] * 6)), XOR, "--data", "-", "-o", out, "--optimizer", "sgd", "--lr", "0.5",
                "--batch-size", "8", "--seed", "0", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert (summary["batches"], summary["rows"], summary["optimizer_steps"], summary["format"]) == (6, 48, 6, "jsonl")
    _assert_same(out, reference[-1])
    assert not _weights(out)["hidden/kernel"].tolist() == _weights(XOR)["hidden/kernel"].tolist()


def test_npy_stream_continues_the_optimizer_state_across_runs(tmp_path):
    """Two runs (the second continues the first's saved SGD momentum) equal one train_on_batch sequence."""
    batches = _batches([5, 3, 7, 4], seed=1)
    expected = _keras_reference(batches, lr=0.1, momentum=0.9)[-1]
    first, second = tmp_path / "a.keras", tmp_path / "b.keras"
    proc = _run(_npy(batches[:2]), XOR, "--data", "-", "-o", first, "--optimizer", "sgd", "--lr", "0.1",
                "--momentum", "0.9", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""  # -q: no progress lines
    proc = _run(_npy(batches[2:]), first, "--data", "-", "-o", second)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"continuing the saved optimizer state (2 steps done)" in proc.stderr
    assert b"4 steps (2 before this run)" in proc.stdout
    _assert_same(second, expected)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_save_every_writes_out_while_the_stream_is_open(tmp_path, reference):
    out = tmp_path / "live.keras"
    batches = _batches([8] * 6)
    proc = _popen(XOR, "--data", "-", "-o", out, "--optimizer", "sgd", "--lr", "0.5", "--batch-size", "8",
                  "--save-every", "3")
    assert proc.stdin is not None
    proc.stdin.write(_jsonl(batches[:4]))  # batch 4 is in, but no save is due until batch 6
    proc.stdin.flush()
    _wait_for(out, proc)
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting for more
    _assert_same(out, reference[2])  # the weights after exactly 3 batches, while the stream is open
    _stdout, stderr = proc.communicate(_jsonl(batches[4:]), timeout=TIMEOUT)  # and EOF
    assert proc.returncode == 0, stderr.decode()
    _assert_same(out, reference[5])
    lines = [line for line in stderr.decode().splitlines() if line.startswith("batch ")]
    assert [line.split()[1] for line in lines] == ["3", "6"] and all(line.endswith("saved") for line in lines)


def test_bad_line_mid_stream_keeps_the_last_save(wtool, tmp_path, reference):
    """In-process (TensorFlow is loaded here already): the error paths need no pipe of their own."""
    out = tmp_path / "o.keras"
    lines = _jsonl(_batches([8] * 6)).splitlines(keepends=True)
    stream = b"".join(lines[:20]) + b'{"x": [0.5, 0.5], "y": [1.0]\n' + b"".join(lines[20:])  # line 21: no }
    res = wtool("train", XOR, "--data", "-", "-o", out, "--optimizer", "sgd", "--lr", "0.5", "--batch-size", "8",
                "--save-every", "2", input=stream)
    assert res.exit_code == 3, res
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    want = (f"error: stdin: line 21: not valid JSON (Expecting ',' delimiter); {out} holds the model after batch 2 "
            "(the last --save-every save)")
    assert errors == [want]
    assert "Traceback" not in res.stderr
    _assert_same(out, reference[1])  # batch 3 was incomplete when the bad line came: not trained, not saved


def _refused(wtool, out: Path, stream: bytes, *extra: str, code: int, message: str, model: Path = XOR) -> None:
    """`train MODEL --data - -o OUT` on `stream` exits `code` saying `message`, and leaves no OUT."""
    res = wtool("train", model, "--data", "-", "-o", out, *extra, input=stream)
    assert res.exit_code == code, res
    assert message in res.stderr
    assert not out.exists()


def test_shape_mismatch_mid_stream_writes_nothing_without_saves(wtool, tmp_path):
    out = tmp_path / "o.keras"
    _refused(wtool, out, _jsonl(_batches([8])) + b'{"x": [1, 2, 3], "y": [0]}\n', "--batch-size", "4", code=4,
             message=f"error: stdin: line 9: x has shape (3,); the first row's has (2,); {out} was not written")
    # an .npy batch that does not fit the model: exit 4, named by its place in the stream
    stream = _npy(_batches([4])) + _npy([(np.zeros((2, 3), "float32"), np.zeros((2, 1), "float32"))])
    _refused(wtool, out, stream, code=4, message="error: stdin: batch 2 (arrays 3-4): model expects (None, 2)")


def test_nan_mid_stream_names_the_line(wtool, tmp_path):
    out = tmp_path / "o.keras"
    stream = _jsonl(_batches([4])) + b'{"x": [0.5, 0.5], "y": [1.0]}\n{"x": [NaN, 0.5], "y": [1.0]}\n'
    _refused(wtool, out, stream, "--batch-size", "4", code=3,
             message=f"error: stdin: line 6: x holds NaN or Inf; {out} was not written")
    # labels of 1e30 make mse Inf in float32: exit 6, as for files, after the good batch was trained and saved
    stream = _jsonl(_batches([4, 4])) + b'{"x": [0.5, 0.5], "y": [1e30]}\n'
    res = wtool("train", XOR, "--data", "-", "-o", out, "--batch-size", "4", "--save-every", "1", input=stream)
    assert res.exit_code == 6, res
    assert (f"error: training diverged at line 9 (batch 3): the loss became NaN or Inf; {out} holds the model "
            "after batch 2 (the last --save-every save)") in res.stderr
    assert out.exists()


def test_a_two_input_model_is_refused(wtool, tmp_path):
    _refused(wtool, tmp_path / "o.keras", _jsonl(_batches([2])), model=SAMPLES / "two_inputs.keras", code=4,
             message="has 2 inputs and 2 outputs; --data - trains models with one input and one output")


def test_sigterm_while_waiting_writes_every_finished_batch(tmp_path, reference):
    out = tmp_path / "t.keras"
    proc = _popen(XOR, "--data", "-", "-o", out, "--optimizer", "sgd", "--lr", "0.5", "--batch-size", "8",
                  "--log-every", "1")
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(_jsonl(_batches([8] * 2)))
    proc.stdin.flush()
    seen = b""
    while b"batch 2 " not in seen:
        line = proc.stderr.readline()
        assert line, seen.decode()
        seen += line
    time.sleep(1)  # most likely blocked reading by now; a signal just before the read stops the same way
    proc.send_signal(signal.SIGTERM)
    _stdout, rest = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, (seen + rest).decode()
    assert re.search(rb"error: interrupted \(SIGTERM\)( while waiting for input)? after batch 2; ", rest), rest
    _assert_same(out, reference[1])


# ------------------------------------------------------------------------------- refused before TensorFlow


@pytest.mark.parametrize(("extra", "message"), [
    (["--epochs", "3"], "--epochs 3: a stream is read once"),
    (["--val-split", "0.2"], "--val-split does not apply to --data -"),
    (["--early-stopping", "2"], "--early-stopping does not apply to --data -"),
    (["--shuffle"], "--shuffle does not apply to --data -"),
    (["--lr-schedule", "cosine"], "--lr-schedule cosine with --data - needs --decay-steps N"),
    (["--save-every", "0"], "--save-every must be at least 1"),
    (["--lora", "4"], "--lora does not apply to --data - yet"),
    (["--x-key", "image=x"], "--data - reads one x and one y per row"),
])
def test_epoch_options_are_refused(wtool, tmp_path, extra, message):
    res = wtool("train", XOR, "--data", "-", "-o", tmp_path / "o.keras", *extra, input=b"")
    assert res.exit_code == 2, res
    assert message in res.stderr


def test_empty_stdin_and_save_every_without_a_stream(wtool, tmp_path):
    res = wtool("train", XOR, "--data", "-", "-o", tmp_path / "o.keras", input=b"")
    assert res.exit_code == 3 and "error: stdin: empty input (no batches)" in res.stderr, res
    res = wtool("train", XOR, "--data", "-", "-o", tmp_path / "o.keras", input=b"\n\n")
    assert res.exit_code == 3 and "stdin: no rows (only blank lines)" in res.stderr, res
    res = wtool("train", XOR, "--data", SAMPLES / "xor.npz", "-o", tmp_path / "o.keras", "--save-every", "5")
    assert res.exit_code == 2 and "--save-every/--log-every are for --data -" in res.stderr, res
    assert not (tmp_path / "o.keras").exists()


def test_npy_stream_refuses_pickles_and_truncation(wtool, tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    res = wtool("train", XOR, "--data", "-", "-o", tmp_path / "o.keras", input=buf.getvalue())
    assert res.exit_code == 3 and "is not numeric" in res.stderr and "never unpickled" in res.stderr, res
    res = wtool("train", XOR, "--data", "-", "-o", tmp_path / "o.keras", input=_npy(_batches([4]))[:-3])
    assert res.exit_code == 3 and "truncated" in res.stderr, res
    assert not (tmp_path / "o.keras").exists()
