"""wtool.data: every input format read back exactly, batches over any range, writers round-trip,
bad inputs named precisely, and reading stays flat in memory. No TensorFlow here."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wtool.data import rows as data
from wtool.errors import IncompatibleError, InputError, UsageError

ROWS = np.arange(70, dtype=np.float32).reshape(14, 5) / 7 - 3


def write_csv(path: Path, rows: np.ndarray, header: list[str] | None = None, delimiter: str = ",") -> Path:
    with open(path, "w") as fh:
        if header:
            fh.write(delimiter.join(header) + "\n")
        for row in rows:
            fh.write(delimiter.join(f"{v:.9g}" for v in row) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    x = ROWS
    out = {}
    np.save(tmp_path / "x.npy", x)
    out["npy"] = tmp_path / "x.npy"
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    out["npy-fortran"] = tmp_path / "f.npy"
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(14))
    out["npz"] = tmp_path / "x.npz"
    np.savez_compressed(tmp_path / "c.npz", features=x)
    out["npz-compressed"] = tmp_path / "c.npz"
    out["csv-header"] = write_csv(tmp_path / "h.csv", x, ["a", "b", "c", "d", "e"])
    out["csv"] = write_csv(tmp_path / "n.csv", x)
    out["tsv"] = write_csv(tmp_path / "t.tsv", x, ["a", "b", "c", "d", "e"], "\t")
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in x.tolist()))
    out["jsonl"] = tmp_path / "x.jsonl"
    (tmp_path / "o.jsonl").write_text("".join(json.dumps({"x": r, "id": i}) + "\n" for i, r in enumerate(x.tolist())))
    out["jsonl-objects"] = tmp_path / "o.jsonl"
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    out["json"] = tmp_path / "x.json"
    (tmp_path / "d.json").write_text(json.dumps({"x": x.tolist()}))
    out["json-object"] = tmp_path / "d.json"
    return out


FORMATS = ["npy", "npy-fortran", "npz", "npz-compressed", "csv-header", "csv", "tsv", "jsonl", "jsonl-objects",
           "json", "json-object"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_back_exactly(files, kind):
    with data.open_rows(files[kind]) as rows:
        assert len(rows) == 14
        assert rows.row_shape == (5,)
        got = rows.read(dtype="float32")
    np.testing.assert_array_equal(got, ROWS)


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize(("batch", "start", "stop"), [(4, 0, 14), (3, 2, 13), (100, 5, 6), (1, 13, 14), (5, 7, 7)])
def test_batches_cover_any_range(files, kind, batch, start, stop):
    with data.open_rows(files[kind]) as rows:
        parts = list(rows.batches(batch, start, stop, dtype="float32"))
    assert all(len(p) <= batch for p in parts)
    got = np.concatenate(parts) if parts else np.zeros((0, 5), np.float32)
    np.testing.assert_array_equal(got, ROWS[start:stop])


@pytest.mark.parametrize("kind", ["npy", "npz", "csv-header", "csv", "tsv", "jsonl", "json"])
def test_stdin_is_sniffed(files, kind):
    raw = files[kind].read_bytes()
    if kind == "json":  # a document over several lines (one line would be one JSON-lines row)
        raw = json.dumps(ROWS.tolist(), indent=1).encode()
    with data.open_rows("-", stdin=io.BytesIO(raw)) as rows:
        assert rows.name.startswith("stdin")
        np.testing.assert_array_equal(rows.read(dtype="float32"), ROWS)


def test_keys_and_columns(files, tmp_path):
    with data.open_rows(files["npz"], key="y") as rows:
        assert rows.read().tolist() == list(range(14))
    with data.open_rows(files["csv-header"], columns="e,b") as rows:
        np.testing.assert_array_equal(rows.read(dtype="float32"), ROWS[:, [4, 1]])
    with data.open_rows(files["csv"], columns="1-3") as rows:
        np.testing.assert_array_equal(rows.read(dtype="float32"), ROWS[:, 1:4])
    with data.open_rows(files["jsonl-objects"], key="id") as rows:
        assert rows.row_shape == () and rows.read().tolist() == list(range(14))
    # a numeric first row read as a header only when asked
    with data.open_rows(files["csv"], header=True) as rows:
        assert len(rows) == 13
    with pytest.raises(UsageError, match="no column 'zz'"):
        data.open_rows(files["csv-header"], columns="zz")
    with pytest.raises(UsageError, match="outside 0-4"):
        data.open_rows(files["csv"], columns="3-9")
    np.savez(tmp_path / "two.npz", a=ROWS, b=ROWS)
    with pytest.raises(UsageError, match="several arrays") as err:
        data.open_rows(tmp_path / "two.npz")
    assert err.value.hint == "pass --input-key KEY"
    with pytest.raises(InputError, match="no array named 'c'"):
        data.open_rows(tmp_path / "two.npz", key="c")


def test_csv_bad_cell_is_named_by_line_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,c\n1,2,3\n4,5,6\n7,oops,9\n")
    with data.open_rows(p) as rows, pytest.raises(InputError) as err:
        rows.read()
    assert str(err.value) == f"{p}: line 4, column 2 ('b'): not a number: 'oops'"
    p.write_text("1,2,3\n4,,6\n")
    with data.open_rows(p) as rows, pytest.raises(InputError, match="line 2, column 2: an empty cell"):
        rows.read()
    p.write_text("1,2,3\n4,5,6,7\n")
    with data.open_rows(p) as rows, pytest.raises(InputError, match="line 2 has 4 columns; the first row has 3"):
        rows.read()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("e.csv", b"", "empty file"),
    ("h.csv", b"a,b\n", "a header row but no data rows"),
    ("blank.jsonl", b"\n\n  \n", "empty input"),
    ("e.json", b"[]", "empty input"),
    ("bad.jsonl", b"[1,2]\n[3,\n", "line 2: not valid JSON"),
    ("ragged.jsonl", b"[1,2]\n[3]\n", "line 2: row has shape (1,); the first row has (2,)"),
    ("text.jsonl", b'[1,2]\n[3,"x"]\n', "line 2: not a number"),
    ("x.txt", b"1,2\n", "unsupported input format '.txt'"),
    ("scalar.json", b"3", "expected a list of rows"),
])
def test_bad_text_inputs(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with data.open_rows(p) as rows:
            rows.read()


def test_bad_npy_inputs(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(InputError, match="empty input"):
        data.open_rows(tmp_path / "empty.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="is not numeric"):
        data.open_rows(tmp_path / "obj.npy")
    raw = (tmp_path / "empty.npy").read_bytes()
    np.save(tmp_path / "full.npy", ROWS)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:-7])
    with pytest.raises(InputError, match="truncated"):
        data.open_rows(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array at all" + raw[:4])
    with pytest.raises(InputError, match="not a valid .npy"):
        data.open_rows(tmp_path / "junk.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    with pytest.raises(InputError, match="is not numeric"):
        data.open_rows(tmp_path / "text.npy")
    (tmp_path / "long.npy").write_bytes((tmp_path / "full.npy").read_bytes() + b"extra")
    with pytest.raises(InputError, match="the header declares"):
        data.open_rows(tmp_path / "long.npy")
    np.save(tmp_path / "scalar.npy", np.float32(3))
    with pytest.raises(InputError, match="0-d array"):
        data.open_rows(tmp_path / "scalar.npy")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(InputError, match="not a valid .npz"):
        data.open_rows(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="no such file"):
        data.open_rows(tmp_path / "missing.npy")


def test_cast_refuses_changing_values():
    with pytest.raises(IncompatibleError, match="row 2 holds a non-integer"):
        data.cast_rows(np.array([[1.0, 2.0], [3.5, 4.0]]), np.dtype("int32"))
    with pytest.raises(IncompatibleError, match="do not fit"):
        data.cast_rows(np.array([[1.0, 300.0]]), np.dtype("uint8"))
    assert data.cast_rows(np.array([[1.0, 2.0]]), np.dtype("int32")).dtype == np.int32


COLUMNS_SINGLE = [data.Column("out", (3,), np.dtype("float32"))]


def _batches_for(columns, n=11, seed=0):
    rng = np.random.default_rng(seed)
    full = {}
    for c in columns:
        if c.dtype.kind == "f":
            full[c.name] = rng.normal(size=(n, *c.shape)).astype(c.dtype)
        elif c.dtype.kind in "iu":
            full[c.name] = rng.integers(0, 9, size=(n, *c.shape)).astype(c.dtype)
        else:
            full[c.name] = np.array(["cat", "dog, big", 'say "hi"'])[rng.integers(0, 3, size=(n, *c.shape))]
    return full, [{k: v[s:s + 4] for k, v in full.items()} for s in range(0, n, 4)]


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".tsv", ".jsonl"])
def test_writers_round_trip_one_column(tmp_path, suffix):
    full, batches = _batches_for(COLUMNS_SINGLE)
    out = tmp_path / f"o{suffix}"
    with data.open_writer(out, COLUMNS_SINGLE, 11) as w:
        for b in batches:
            w.write(b)
    key = "out" if suffix == ".npz" else None
    with data.open_rows(out, key=key) as rows:
        np.testing.assert_array_equal(rows.read(dtype="float32"), full["out"])
    if suffix == ".npy":
        assert np.load(out, mmap_mode="r").shape == (11, 3)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no leftover parts


def test_writers_round_trip_several_columns(tmp_path):
    cols = [data.Column("top_index", (2,), np.dtype("int64")), data.Column("top_prob", (2,), np.dtype("float32")),
            data.Column("top_label", (2,), np.dtype("<U8"))]
    full, batches = _batches_for(cols)
    for suffix in (".npz", ".csv", ".jsonl"):
        out = tmp_path / f"o{suffix}"
        with data.open_writer(out, cols, 11) as w:
            for b in batches:
                w.write(b)
        if suffix == ".npz":
            with np.load(out, allow_pickle=False) as z:
                for c in cols:
                    np.testing.assert_array_equal(z[c.name], full[c.name])
        elif suffix == ".csv":
            text = out.read_text().splitlines()
            assert text[0] == "top_index_0,top_index_1,top_prob_0,top_prob_1,top_label_0,top_label_1"
            with data.open_rows(out, columns="top_prob_0,top_prob_1") as rows:
                np.testing.assert_array_equal(rows.read(dtype="float32"), full["top_prob"])
            with data.open_rows(out, columns="0-1") as rows:
                np.testing.assert_array_equal(rows.read(dtype="int64"), full["top_index"])
            import csv

            parsed = list(csv.reader(text[1:]))
            assert [r[4:] for r in parsed] == full["top_label"].tolist()
        else:
            for c in cols[:2]:
                with data.open_rows(out, key=c.name) as rows:
                    np.testing.assert_array_equal(rows.read(dtype=c.dtype), full[c.name])
            first = json.loads(out.read_text().splitlines()[0])
            assert list(first) == ["top_index", "top_prob", "top_label"]


def test_npy_writer_header_is_final_and_abort_leaves_no_parts(tmp_path):
    col = [data.Column("y", (), np.dtype("int64"))]
    w = data.open_writer(tmp_path / "y.npy", col, 5)
    w.write({"y": np.arange(3)})
    # The header already holds the final count while rows are still coming.
    with open(tmp_path / "y.npy", "rb") as fh:
        assert np.lib.format.read_magic(fh) == (1, 0)
        assert np.lib.format.read_array_header_1_0(fh)[0] == (5,)
    w.write({"y": np.arange(2)})
    w.close()
    assert np.load(tmp_path / "y.npy").tolist() == [0, 1, 2, 0, 1]
    w = data.open_writer(tmp_path / "z.npz", col + [data.Column("p", (2,), np.dtype("float32"))], 4)
    w.write({"y": np.arange(2), "p": np.zeros((2, 2), np.float32)})
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.npy"]  # no parts, no zip


def test_output_format_checks():
    two = [data.Column("a", (), np.dtype("int64")), data.Column("b", (), np.dtype("float32"))]
    with pytest.raises(UsageError, match="holds one array, this run gives 2"):
        data.check_output_format("o.npy", two)
    with pytest.raises(UsageError, match="unsupported output format '.txt'"):
        data.check_output_format("o.txt", two)
    assert data.check_output_format("o.CSV", two) == "csv"


def test_npz_member_streams_without_extraction(tmp_path):
    # An uncompressed member is read in place; a compressed one is decompressed as it streams.
    big = np.arange(300_000, dtype=np.float32).reshape(-1, 100)
    np.savez_compressed(tmp_path / "c.npz", x=big)
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        assert zf.getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED
    with data.open_rows(tmp_path / "c.npz") as rows:
        total = sum(float(b.sum(dtype=np.float64)) for b in rows.batches(97, 1000, 2500))
    assert total == float(big[1000:2500].sum(dtype=np.float64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


FLAT_MEMORY = r"""
import resource, sys
import numpy as np
from wtool.data import rows as data
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with data.open_rows(sys.argv[1]) as rows:
    total = 0.0
    for b in rows.batches(1024):
        total += float(b[:, 0].sum())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_reading_a_large_npy_keeps_memory_flat(tmp_path):
    # 200 MB of rows, read batch by batch: the process grows by a few batches, not by the file.
    path = tmp_path / "big.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(64_000, 784))
    rows[:] = 1.0
    rows.flush()
    del rows
    res = subprocess.run([sys.executable, "-c", FLAT_MEMORY, str(path)], capture_output=True, text=True, check=True)
    grown_mb = int(res.stdout.strip())
    assert grown_mb < 40, f"reading a 200 MB .npy grew the process by {grown_mb} MB"


def test_npz_with_duplicate_members_is_refused(tmp_path):
    import warnings

    from wtool.errors import UnsafeError

    buf = io.BytesIO()
    np.save(buf, ROWS)
    with warnings.catch_warnings(), zipfile.ZipFile(tmp_path / "dup.npz", "w") as zf:
        warnings.simplefilter("ignore")
        zf.writestr("x.npy", buf.getvalue())
        zf.writestr("x.npy", buf.getvalue())
    with pytest.raises(UnsafeError, match="duplicate member name"):
        data.open_rows(tmp_path / "dup.npz")
