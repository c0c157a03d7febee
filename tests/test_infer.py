"""`wtool infer` on sample_models/: values against a numpy forward pass (XOR, MLP) and against
Keras's `model(x, training=False)` (CNN with BatchNormalization + Dropout, LSTM, nested, multi-input),
every input and output format, shards, post-processing, the --json report, frozen weights,
and one table of bad inputs with their exit codes and no partial output left behind."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLES, run_cli
from wtool.data import rows as data
from wtool.store import open_model

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("infer")]


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def weights(stem: str) -> dict[str, np.ndarray]:
    with open_model(SAMPLES / f"{stem}.keras") as mf:
        return {w.path: mf.read(w.path).astype(np.float64) for w in mf.weights}


def numpy_xor(x):
    w = weights("xor")
    return sigmoid(sigmoid(x @ w["hidden/kernel"]) @ w["out/kernel"])


def numpy_mlp(x):
    w = weights("mlp")
    h = np.maximum(x @ w["hidden/kernel"] + w["hidden/bias"], 0)
    return softmax(h @ w["out/kernel"] + w["out/bias"])


def sample(stem: str, key: str = "x") -> np.ndarray:
    with np.load(SAMPLES / f"{stem}.npz") as z:
        return z[key]


@pytest.fixture(scope="module")
def keras_models():
    from wtool.graph.model import import_keras

    keras = import_keras()
    cache: dict[str, object] = {}

    def get(stem):
        if stem not in cache:
            cache[stem] = keras.saving.load_model(SAMPLES / f"{stem}.keras", compile=False)
        return cache[stem]

    return get


def keras_forward(model, x):
    return np.asarray(model(x, training=False))


def ok(*args, **kw):
    res = run_cli("infer", *args, **kw)
    assert res.exit_code == 0, res
    return res


def jsonl(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- values


def test_xor_equals_numpy_forward_pass(tmp_path):
    x = sample("xor")
    ok(SAMPLES / "xor.keras", SAMPLES / "xor.npz", "-o", tmp_path / "p.npy")
    got = np.load(tmp_path / "p.npy")
    assert got.shape == (4, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_xor(x.astype(np.float64)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["mlp.keras", "mlp.h5"])
def test_mlp_equals_numpy_forward_pass(tmp_path, model):
    x = sample("mlp")
    ok(SAMPLES / model, SAMPLES / "mlp.npz", "-o", tmp_path / "p.npy", "--batch-size", "128")
    got = np.load(tmp_path / "p.npy")
    assert got.shape == (600, 10)
    np.testing.assert_allclose(got, numpy_mlp(x.astype(np.float64)), atol=1e-5, rtol=0)


def test_weights_only_file_with_arch(tmp_path):
    ok(SAMPLES / "mlp.weights.h5", SAMPLES / "mlp.npz", "--arch", SAMPLES / "mlp.keras", "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), numpy_mlp(sample("mlp").astype(np.float64)), atol=1e-5)


@pytest.mark.parametrize("stem", ["cnn", "lstm", "nested"])
def test_equals_keras_training_false(tmp_path, keras_models, stem):
    # CNN: BatchNormalization with non-trivial moving statistics, and Dropout; LSTM: int32 tokens.
    x = sample(stem)
    ok(SAMPLES / f"{stem}.keras", SAMPLES / f"{stem}.npz", "-o", tmp_path / "p.npy", "--batch-size", "100")
    got = np.load(tmp_path / "p.npy")
    want = keras_forward(keras_models(stem), x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if stem == "cnn":  # training=True would differ (batch statistics, dropout): inference mode is visible
        # (on a fresh copy: a training=True call updates the BN moving statistics)
        from wtool.graph.model import import_keras

        fresh = import_keras().saving.load_model(SAMPLES / "cnn.keras", compile=False)
        train_mode = np.asarray(fresh(x, training=True))
        assert np.abs(train_mode - want).max() > 1e-3


def test_flat_csv_rows_fill_an_image_input(tmp_path, keras_models):
    x = sample("cnn")[:40]
    flat = x.reshape(40, -1)
    csv = tmp_path / "pixels.csv"
    csv.write_text("\n".join(",".join(f"{v:.9g}" for v in row) for row in flat) + "\n")
    ok(SAMPLES / "cnn.keras", csv, "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), keras_forward(keras_models("cnn"), x), atol=1e-5)


def test_lstm_tokens_from_csv_and_non_integers_refused(tmp_path, keras_models):
    x = sample("lstm")[:30]
    csv = tmp_path / "tokens.csv"
    csv.write_text("\n".join(",".join(str(int(v)) for v in row) for row in x) + "\n")
    ok(SAMPLES / "lstm.keras", csv, "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), keras_forward(keras_models("lstm"), x), atol=1e-5)
    csv.write_text(csv.read_text().replace("\n", ".5\n", 1))
    res = run_cli("infer", SAMPLES / "lstm.keras", csv, "-o", tmp_path / "q.npy")
    assert res.exit_code == 4, res
    assert "row 1 holds a non-integer value; the model input is int32" in res.stderr
    assert not (tmp_path / "q.npy").exists()


# --------------------------------------------------------------------------- frozen weights


class Discard(data.RowWriter):
    def _write(self, batch, n):
        pass


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_bitwise_unchanged(tmp_path):
    from wtool.graph.model import import_keras
    from wtool.infer import predict as infer

    before_file = sha(SAMPLES / "cnn.keras")
    res = ok(SAMPLES / "cnn.keras", SAMPLES / "cnn.npz", "-o", tmp_path / "p.npy", "--json")
    assert res.json()["weights_unchanged"] is True
    assert sha(SAMPLES / "cnn.keras") == before_file
    # In-process: every variable of the model object (BN moving statistics included) is bitwise the same.
    model = import_keras().saving.load_model(SAMPLES / "cnn.keras", compile=False)
    before = [np.array(w.numpy(), copy=True) for w in model.weights]
    frozen = infer.FrozenModel(model, "cnn")
    assert all(not layer.trainable for layer in model._flatten_layers(include_self=True))
    with data.open_rows(SAMPLES / "cnn.npz") as rows:
        infer.InferPlan(frozen, [rows], batch_size=50).run(lambda cols, n: Discard(cols))
    after = [w.numpy() for w in model.weights]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after, strict=True))
    assert frozen.traces == 1  # 256 rows in batches of 50: the padded last batch did not retrace


# --------------------------------------------------------------------------- formats


@pytest.fixture(scope="module")
def mlp_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.npy"
    ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "-o", out)
    return np.load(out)


@pytest.fixture(scope="module")
def mlp_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    x = sample("mlp")[:50]
    np.save(d / "x.npy", x)
    np.savez_compressed(d / "x.npz", pixels=x, labels=np.arange(50))
    header = ",".join(f"p{i}" for i in range(784)) + ",label"
    rows = "\n".join(",".join(f"{v:.9g}" for v in r) + ",3" for r in x)
    (d / "h.csv").write_text(header + "\n" + rows + "\n")
    (d / "n.csv").write_text("\n".join(",".join(f"{v:.9g}" for v in r) for r in x) + "\n")
    (d / "x.tsv").write_text("\n".join("\t".join(f"{v:.9g}" for v in r) for r in x) + "\n")
    (d / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in x.tolist()))
    (d / "x.json").write_text(json.dumps({"pixels": x.tolist()}))
    return d


@pytest.mark.parametrize(("name", "extra"), [
    ("x.npy", []), ("x.npz", ["--input-key", "pixels"]), ("h.csv", ["--columns", "0-783"]), ("n.csv", []),
    ("x.tsv", []), ("x.jsonl", []), ("x.json", []),
])
def test_every_input_format(tmp_path, mlp_inputs, mlp_reference, name, extra):
    ok(SAMPLES / "mlp.keras", mlp_inputs / name, *extra, "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), mlp_reference[:50], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["x.npy", "x.npz", "n.csv", "x.jsonl"])
def test_stdin_input(mlp_inputs, mlp_reference, name):
    extra = ["--input-key", "pixels"] if name.endswith(".npz") else []
    res = ok(SAMPLES / "mlp.keras", "-", *extra, input=(mlp_inputs / name).read_bytes())
    np.testing.assert_allclose(np.array(jsonl(res.stdout)), mlp_reference[:50], atol=1e-6, rtol=0)


def test_csv_header_column_by_name(tmp_path, mlp_inputs):
    # The label column of h.csv is not numeric pixels: without --columns its 785 columns do not fit.
    res = run_cli("infer", SAMPLES / "mlp.keras", mlp_inputs / "h.csv", "-o", tmp_path / "p.npy")
    assert res.exit_code == 4, res
    assert res.stderr.startswith("error: model expects (None, 784); input rows have shape (785,) in ")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".tsv", ".jsonl"])
def test_every_output_format_round_trips(tmp_path, mlp_reference, suffix):
    out = tmp_path / f"p{suffix}"
    ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "-o", out, "--batch-size", "256")
    key = "out" if suffix == ".npz" else None
    with data.open_rows(out, key=key) as rows:
        got = rows.read(dtype="float32")
    np.testing.assert_array_equal(got, mlp_reference)
    if suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        assert out.read_text().splitlines()[0] == sep.join(f"out_{i}" for i in range(10))
    # and back in as an input: predictions of predictions have the model's output shape
    assert got.shape == (600, 10)


def test_stdout_is_json_lines_when_piped(mlp_reference):
    res = ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--shard", "1/60")
    rows = jsonl(res.stdout)
    assert len(rows) == 10 and len(rows[0]) == 10
    # a batch of 10 rows and the reference's batch of 600 may round differently in the last bit (oneDNN)
    np.testing.assert_allclose(np.array(rows, dtype=np.float32), mlp_reference[:10], rtol=2e-6, atol=1e-7)
    assert "10 rows in 1 batch, " in res.stderr
    res = ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--shard", "1/60", "--json", "--argmax")
    assert jsonl(res.stdout) == mlp_reference[:10].argmax(axis=1).tolist()


def test_table_on_a_terminal():
    from rich.console import Console

    from wtool.cli.commands.infer import render_table

    buf = io.StringIO()
    cols = [data.Column("class", (), np.dtype("int64")), data.Column("label", (), np.dtype("<U5")),
            data.Column("out", (8,), np.dtype("float32"))]
    batch = {"class": np.array([3, 1]), "label": np.array(["three", "one"]),
             "out": np.arange(16, dtype=np.float32).reshape(2, 8) / 4}
    render_table(Console(file=buf, width=100, color_system=None), cols, [batch], first_row=10)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["row", "class", "label", "out"]
    assert lines[1].split()[:3] == ["10", "3", "three"]
    assert "[0, 0.25, 0.5, 0.75, 1, 1.25, ...]" in lines[1]
    assert lines[2].split()[:3] == ["11", "1", "one"]


def test_progress_bar_shows_rows_per_second():
    from rich.console import Console

    from wtool.cli.commands.infer import _progress
    from wtool.cli.render import Output

    buf = io.StringIO()
    out = Output(stderr=Console(file=buf, force_terminal=True, width=100))
    update, bar = _progress(out, 1000)
    assert update is not None
    bar.start()
    update(100)
    time.sleep(0.01)
    update(500)
    bar.refresh()
    bar.stop()
    assert "rows/s" in buf.getvalue() and "500/1000" in buf.getvalue()
    quiet = Output(quiet=True, stderr=Console(file=io.StringIO(), force_terminal=True))
    assert _progress(quiet, 1000) == (None, None)


# --------------------------------------------------------------------------- post-processing


def test_argmax_top_k_threshold_labels(tmp_path, mlp_reference):
    names = [f"digit-{i}" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--argmax", "-o", tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), mlp_reference.argmax(axis=1))

    ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--argmax", "--labels", tmp_path / "labels.txt",
       "-o", tmp_path / "a.csv")
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == "class,label"
    want = mlp_reference.argmax(axis=1)
    assert lines[1:] == [f"{c},{names[c]}" for c in want]

    ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--top-k", "3", "-o", tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        order = np.argsort(-mlp_reference, axis=1, kind="stable")[:, :3]
        np.testing.assert_array_equal(z["top_index"], order)
        np.testing.assert_array_equal(z["top_prob"], np.take_along_axis(mlp_reference, order, axis=1))

    (tmp_path / "labels.json").write_text(json.dumps(names))
    res = ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--top-k", "2", "--labels", tmp_path / "labels.json",
             "--shard", "1/300")
    first = jsonl(res.stdout)[0]
    assert first["top_index"] == order[0, :2].tolist()
    assert first["top_label"] == [names[i] for i in order[0, :2]]

    xor_p = numpy_xor(sample("xor").astype(np.float64))[:, 0]
    (tmp_path / "xor.txt").write_text("off\non\n")
    res = ok(SAMPLES / "xor.keras", SAMPLES / "xor.npz", "--threshold", "0.3", "--labels", tmp_path / "xor.txt")
    got = jsonl(res.stdout)
    assert [r["class"] for r in got] == [int(p >= 0.3) for p in xor_p]
    assert [r["label"] for r in got] == [["off", "on"][int(p >= 0.3)] for p in xor_p]


# --------------------------------------------------------------------------- shards, batches, report


def test_shards_concatenate_to_the_unsharded_output(tmp_path, mlp_reference):
    parts = []
    for k in (1, 2, 3):
        out = tmp_path / f"part{k}.npy"
        ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--shard", f"{k}/3", "--batch-size", "64", "-o", out)
        parts.append(np.load(out))
    assert [len(p) for p in parts] == [200, 200, 200]
    np.testing.assert_allclose(np.concatenate(parts), mlp_reference, atol=1e-6, rtol=0)
    # more shards than rows: some shards are empty, and still valid files
    xor_parts = []
    for k in range(1, 7):
        out = tmp_path / f"x{k}.npy"
        ok(SAMPLES / "xor.keras", SAMPLES / "xor.npz", "--shard", f"{k}/6", "-o", out)
        xor_parts.append(np.load(out))
    assert sum(len(p) == 0 for p in xor_parts) == 2
    assert all(p.shape[1:] == (1,) for p in xor_parts)
    np.testing.assert_allclose(np.concatenate(xor_parts), numpy_xor(sample("xor").astype(np.float64)), atol=1e-5)


def test_json_report(tmp_path):
    res = ok(SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "-o", tmp_path / "p.csv", "--batch-size", "128",
             "--shard", "2/2", "--json")
    doc = res.json()
    assert doc["rows"] == 300 and doc["batches"] == 3 and doc["batch_size"] == 128
    assert doc["row_range"] == [300, 600] and doc["shard"] == "2/2"
    assert doc["output"] == str(tmp_path / "p.csv") and doc["format"] == "csv"
    assert doc["rows_per_s"] > 0 and doc["wall_time_s"] >= doc["predict_time_s"] > 0
    assert doc["columns"] == [{"name": "out", "shape": [10], "dtype": "float32"}]
    assert doc["inputs"][0]["name"] == "pixels" and doc["inputs"][0]["rows"] == 600
    assert doc["weights_unchanged"] is True
    assert res.stderr == ""


# --------------------------------------------------------------------------- several inputs / outputs, code


@pytest.fixture(scope="module")
def special_models(tmp_path_factory):
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("models")
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu", name="h")(keras.layers.Concatenate(name="cat")([a, b]))
    p = keras.layers.Dense(4, activation="softmax", name="p")(h)
    q = keras.layers.Dense(1, activation="sigmoid", name="q")(h)
    two = keras.Model([a, b], [p, q], name="two")
    two.save(d / "two.keras")
    lam = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Lambda(lambda t: t * 2.0, name="double")])
    lam.save(d / "lambda.keras")
    rng = np.random.default_rng(1)
    xa = rng.normal(size=(37, 3)).astype(np.float32)
    xb = rng.normal(size=(37, 2)).astype(np.float32)
    np.save(d / "a.npy", xa)
    (d / "b.csv").write_text("u,v\n" + "\n".join(f"{u:.9g},{v:.9g}" for u, v in xb) + "\n")
    np.savez(d / "ab.npz", a=xa, b=xb)
    np.save(d / "x2.npy", xb)
    return d, two, xa, xb


def test_several_inputs_and_outputs(tmp_path, special_models):
    d, two, xa, xb = special_models
    want_p, want_q = (np.asarray(t) for t in two([xa, xb], training=False))
    ok(d / "two.keras", "--input", f"a={d / 'a.npy'}", "--input", f"b={d / 'b.csv'}", "-o", tmp_path / "o.npz",
       "--batch-size", "16")
    with np.load(tmp_path / "o.npz") as z:
        assert sorted(z.files) == ["p", "q"]
        np.testing.assert_allclose(z["p"], want_p, atol=1e-5)
        np.testing.assert_allclose(z["q"], want_q, atol=1e-5)
    # --argmax goes to p only: q's one unit would always be class 0, so q is written as it is
    res = run_cli("infer", d / "two.keras", d / "ab.npz", "--argmax", "-o", tmp_path / "c.jsonl")
    assert res.exit_code == 0 and "'q' has a single unit" in res.stderr, res
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["p.class"] for r in rows] == want_p.argmax(axis=1).tolist()
    np.testing.assert_allclose([r["q"] for r in rows], want_q, atol=1e-5)
    (tmp_path / "c.jsonl").unlink()
    res = run_cli("infer", d / "two.keras", d / "a.npy", "-o", tmp_path / "x.npz")
    assert res.exit_code == 2 and "the model has 2 inputs ('a', 'b')" in res.stderr
    res = run_cli("infer", d / "two.keras", "--input", f"a={d / 'a.npy'}", "--input", f"b={d / 'x2.npy'}",
                  "--input", f"c={d / 'a.npy'}")
    assert res.exit_code == 2 and "no input named 'c'" in res.stderr
    res = run_cli("infer", d / "two.keras", "--input", f"a={d / 'a.npy'}", "-o", tmp_path / "x.npz")
    assert res.exit_code == 2 and "no input for 'b'" in res.stderr
    res = run_cli("infer", d / "two.keras", d / "ab.npz", "-o", tmp_path / "x.npy")
    assert res.exit_code == 2 and "an .npy file holds one array; this run gives 2 (p, q)" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]


def test_model_that_needs_code_is_refused_unless_unsafe(tmp_path, special_models):
    d = special_models[0]
    res = run_cli("infer", d / "lambda.keras", d / "x2.npy", "-o", tmp_path / "o.npy")
    assert res.exit_code == 5, res
    assert res.stderr.startswith("error: ") and "hint: " in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.npy").exists()
    ok(d / "lambda.keras", d / "x2.npy", "--unsafe", "-o", tmp_path / "o.npy")
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), np.load(d / "x2.npy") * 2)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(2)
    np.save(d / "wide.npy", rng.random((5, 785), dtype=np.float32))
    np.save(d / "empty.npy", np.zeros((0, 784), np.float32))
    rows = rng.random((300, 4))
    lines = ["a,b,c,d"] + [",".join(f"{v:.6f}" for v in r) for r in rows]
    lines[251] = lines[251].replace(lines[251].split(",")[2], "n/a", 1)  # line 252 of the file, column 3
    (d / "late.csv").write_text("\n".join(lines) + "\n")
    (d / "header_only.csv").write_text("a,b\n")
    (d / "ten.txt").write_text("a\nb\n")
    (d / "data.txt").write_text("1,2\n")
    return d


BAD = [
    # (model, input, extra args, exit code, message fragment)
    ("mlp.keras", "wide.npy", [], 4, "error: model expects (None, 784); input rows have shape (785,)"),
    ("mlp.keras", "empty.npy", [], 3, "empty input (no rows)"),
    ("mlp.keras", "header_only.csv", [], 3, "a header row but no data rows"),
    ("mlp.keras", "missing.npy", [], 3, "missing.npy: no such file"),
    ("mlp.keras", "data.txt", [], 3, "unsupported input format '.txt'"),
    ("mlp.keras", "wide.npy", ["--argmax", "--top-k", "2"], 2, "--argmax and --top-k cannot be used together"),
    ("mlp.keras", "wide.npy", ["--shard", "0/3"], 2, "K must be between 1 and N"),
    ("mlp.keras", "wide.npy", ["--shard", "half"], 2, "--shard expects K/N"),
    ("mlp.keras", "wide.npy", ["--labels", "ten.txt"], 2, "--labels names classes"),
    ("missing.keras", "wide.npy", [], 3, "missing.keras: no such file"),
]


@pytest.mark.parametrize(("model", "name", "extra", "code", "message"), BAD)
def test_bad_input_one_line_exit_code_no_output(tmp_path, bad_inputs, model, name, extra, code, message):
    extra = [str(bad_inputs / e) if e.endswith(".txt") else e for e in extra]
    model_path = SAMPLES / model if model != "missing.keras" else tmp_path / model
    res = run_cli("infer", model_path, bad_inputs / name, *extra, "-o", tmp_path / "out.npy")
    assert res.exit_code == code, res
    assert message in res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert list(tmp_path.iterdir()) == [], "no output file, no temporary file"


def test_bad_cell_late_in_a_long_csv_leaves_no_partial_output(tmp_path, bad_inputs):
    # The first batches are already written when line 252 fails: the output must still vanish.
    from wtool.graph.model import import_keras

    keras = import_keras()
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    m.save(tmp_path / "four.keras")
    out = tmp_path / "o" / "p.csv"
    out.parent.mkdir()
    res = run_cli("infer", tmp_path / "four.keras", bad_inputs / "late.csv", "--batch-size", "32", "-o", out)
    assert res.exit_code == 3, res
    assert "late.csv: line 252, column 3 ('c'): not a number: 'n/a'" in res.stderr
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--threshold", "0.5"], 4, "--threshold needs a single-unit output; 'out' has 10 units"),
    (["--argmax", "--labels", "ten.txt"], 4, "--labels has 2 names; output 'out' has 10 classes"),
    (["--top-k", "11"], 2, "--top-k 11: output 'out' has only 10 classes"),
])
def test_post_processing_that_does_not_fit(tmp_path, bad_inputs, args, code, message):
    args = [str(bad_inputs / a) if a.endswith(".txt") else a for a in args]
    res = run_cli("infer", SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", *args, "-o", tmp_path / "p.csv")
    assert res.exit_code == code, res
    assert message in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_unsupported_output_and_interrupt_leave_nothing(tmp_path, monkeypatch):
    res = run_cli("infer", SAMPLES / "xor.keras", SAMPLES / "xor.npz", "-o", tmp_path / "p.txt")
    assert res.exit_code == 2 and "unsupported output format" in res.stderr
    res = run_cli("infer", SAMPLES / "xor.keras", SAMPLES / "xor.npz", "-o", tmp_path / "no" / "p.npy")
    assert res.exit_code == 2 and "output directory" in res.stderr and "does not exist" in res.stderr

    from wtool.infer import predict as infer

    calls = {"n": 0}
    real = infer.FrozenModel.predict_prepared

    def interrupted(self, tensors, n):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, tensors, n)

    monkeypatch.setattr(infer.FrozenModel, "predict_prepared", interrupted)
    res = run_cli("infer", SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--batch-size", "50", "-o", tmp_path / "p.npy")
    assert res.exit_code == 130, res
    assert list(tmp_path.iterdir()) == []


def test_command_module_imports_neither_tensorflow_nor_numpy():
    import subprocess
    import sys

    code = ("import sys, click, wtool.cli; wtool.cli.cli.list_commands(click.Context(wtool.cli.cli)); "
            "import wtool.cli.commands.infer; print(sorted(m for m in ('numpy', 'tensorflow', 'keras') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    from wtool.cli.commands.infer import INPUT_FORMATS

    assert INPUT_FORMATS == data.FORMAT_NAMES


def test_fit_rows_reshapes_flat_rows_only_when_sizes_match():
    from wtool.errors import IncompatibleError
    from wtool.infer.predict import InputSpec, fit_rows

    assert fit_rows(InputSpec("x", (None, 1), "float32"), (), "f", 1) == (1,)
    assert fit_rows(InputSpec("x", (None, 28, 28, 1), "float32"), (784,), "f", 1) == (28, 28, 1)
    assert fit_rows(InputSpec("t", (None, None), "int32"), (37,), "f", 1) == (37,)
    with pytest.raises(IncompatibleError) as err:
        fit_rows(InputSpec("img", (None, 28, 28, 1), "float32"), (28, 28), "f.npy", 2)
    assert str(err.value) == "input 'img': model expects (None, 28, 28, 1); input rows have shape (28, 28) in f.npy"


def test_misaligned_batches_are_copied_not_shared():
    # TensorFlow aborts the process on an unaligned kernel input: such arrays must take the copy path.
    from wtool.infer import predict as infer

    frozen = infer.load_frozen(str(SAMPLES / "mlp.keras"))
    frozen.compile(8, [(784,)])
    x = sample("mlp")[:8]
    raw = np.empty(x.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + 4
    odd = raw[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    odd[...] = x
    assert odd.ctypes.data % 64 != 0
    aligned = data.aligned_empty(x.shape, x.dtype)
    aligned[...] = x
    assert aligned.ctypes.data % 64 == 0
    np.testing.assert_array_equal(frozen.predict_batch([odd])[0], frozen.predict_batch([aligned])[0])
    np.testing.assert_allclose(frozen.predict_batch([odd])[0], numpy_mlp(x.astype(np.float64)), atol=1e-5)


PRECHECK_PROBE = """
import json, sys
import wtool.cli
found = []
for args in json.loads(sys.argv[1]):
    try:
        code = wtool.cli.cli.main(args, prog_name="wtool", standalone_mode=False) or 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        code = getattr(exc, "exit_code", repr(exc))
    found.append(code)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
sys.stderr.write("\\nPROBE " + json.dumps({"codes": found, "loaded": loaded}) + "\\n")
"""


def test_bad_text_inputs_fail_before_tensorflow_loads(tmp_path):
    """Issue 13: a CSV / TSV / JSON-lines input whose first row does not fit the saved input shape (or
    dtype) is exit 4 before TensorFlow is imported, as .npy/.npz were: one fresh interpreter runs every
    case and has imported neither tensorflow nor keras at the end. Only the header and first row are read."""
    import subprocess
    import sys

    (tmp_path / "wide.csv").write_text("a,b,c\n0,1,1\n1,0,1\n")
    (tmp_path / "wide.tsv").write_text("0\t1\t1\n1\t0\t1\n")
    (tmp_path / "deep.jsonl").write_text('{"x": [[0, 1]]}\n{"x": [[1, 0]]}\n')
    (tmp_path / "labelled.csv").write_text("a,b,c,y\n0,1,1,0\n" + "not,even,numbers,here\n" * 3)
    (tmp_path / "two.csv").write_text("t,u\nfine film,good\n")
    xor, texts = str(SAMPLES / "xor.keras"), str(SAMPLES / "texts.keras")
    cases = [
        ["infer", xor, str(tmp_path / "wide.csv")],
        ["infer", xor, str(tmp_path / "wide.tsv")],
        ["infer", xor, str(tmp_path / "deep.jsonl")],
        ["infer", xor, str(tmp_path / "labelled.csv"), "--target", "y"],  # 3 columns left: still too wide
        ["infer", xor, str(tmp_path / "wide.csv"), "--columns", "a,nope"],  # a bad option: exit 2, early too
        ["infer", texts, str(tmp_path / "two.csv")],  # a string model: (None, 1) against rows of 2 strings
    ]
    import os

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # this tree
    proc = subprocess.run([sys.executable, "-c", PRECHECK_PROBE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    line = [x for x in proc.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, proc.stderr[-2000:]
    result = json.loads(line[-1][len("PROBE "):])
    assert result["codes"] == [4, 4, 4, 4, 2, 4], proc.stderr
    assert result["loaded"] == [], result["loaded"][:5]
    assert proc.stderr.count("model expects (None, 2); input rows have shape (3,)") == 3
    assert "model expects (None, 2); input rows have shape (1, 2) in" in proc.stderr
    assert "no column 'nope'" in proc.stderr
    # in-process, the same file with the right columns runs: the look at the first row changed nothing
    res = run_cli("infer", xor, tmp_path / "wide.csv", "--columns", "a,b", "-o", tmp_path / "p.csv")
    assert res.exit_code == 0, res
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3  # a header and both rows


def test_a_labels_file_is_read_whole_or_refused(tmp_path):
    """--labels past 16 MiB was cut short silently (names dropped or split); now it is read whole, and a
    file over the labels limit is one exit-3 line."""
    from wtool.safety import limits

    padded = tmp_path / "xor.txt"
    padded.write_text("off" + " " * (17 << 20) + "\non\n")  # the second name starts past 16 MiB
    xor_p = numpy_xor(sample("xor").astype(np.float64))[:, 0]
    res = ok(SAMPLES / "xor.keras", SAMPLES / "xor.npz", "--threshold", "0.3", "--labels", padded)
    assert [r["label"] for r in jsonl(res.stdout)] == [["off", "on"][int(p >= 0.3)] for p in xor_p]
    big_json = tmp_path / "xor.json"
    big_json.write_text('["off",' + " " * (17 << 20) + '"on"]')
    res = ok(SAMPLES / "xor.keras", SAMPLES / "xor.npz", "--threshold", "0.3", "--labels", big_json)
    assert {r["label"] for r in jsonl(res.stdout)} == {"off", "on"}
    with limits.override(max_labels_bytes=1 << 20):
        for command in (["infer", SAMPLES / "xor.keras", SAMPLES / "xor.npz", "--threshold", "0.5"],
                        ["eval", SAMPLES / "mlp.keras", "--data", SAMPLES / "mlp.npz"]):
            res = run_cli(*command, "--labels", padded, "-o" if command[0] == "infer" else "--json",
                          *([tmp_path / "p.csv"] if command[0] == "infer" else []))
            assert res.exit_code == 3, res
            want = f"error: {padded}: a labels file of 17.0 MiB; wtool reads at most 1 MiB of class names"
            assert res.stderr.splitlines()[0] == want, res.stderr
    assert not (tmp_path / "p.csv").exists()
