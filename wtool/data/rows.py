"""Streaming readers and writers of row data: .npy, .npz, .csv/.tsv, .jsonl, .json and stdin.

Readers turn a file into a `RowSource`: its row shape, dtype and number of rows are
known up front, and `batches()` yields consecutive slices without loading the file:

    with open_rows("x.npy") as rows:
        for batch in rows.batches(1024, start=0, stop=len(rows)):
            ...

`.npy` is read straight from the file into one batch buffer at a time (plain reads, so
the page cache, not the process, holds what was read); `.npz` members are streamed out
of the zip without extraction; `.csv` and `.jsonl` are parsed one batch of lines at a
time after a quick counting pass. Only `.json` (one document) is read whole.

Writers take named columns (`Column`) and a row count, and append batches; the format
follows the file extension. `.npy` is written incrementally with the final row count in
its header; `.npz` holds one array per column. No TensorFlow here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from wtool.errors import IncompatibleError, InputError, InternalError, UsageError, WtoolError
from wtool.fileio import open_input
from wtool.safety import limits
from wtool.safety.limits import shown
from wtool.text import write_all

INPUT_FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
OUTPUT_FORMATS = {".npy": "npy", ".npz": "npz", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
FORMAT_NAMES = ("npy", "npz", "csv", "tsv", "jsonl", "json")

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
SPOOL_CHUNK = 1 << 20
# Keys tried, in order, when an .npz / JSON object holds several arrays and no key is given.
DEFAULT_KEYS = ("x", "inputs", "input", "X", "data", "features")


TENSOR_ALIGN = 64  # bytes: batches are allocated so that TensorFlow can use them without a copy


def aligned_empty(shape: Sequence[int], dtype: Any, align: int = TENSOR_ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(math.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + nbytes].view(dtype).reshape(tuple(shape))


def fmt_row_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- readers


class RowSource:
    """Rows of one array, read in batches. Subclasses fill `name`, `row_shape`, `dtype`, `n_rows`."""

    name: str
    row_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    n_rows: int
    format: str

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_rows, *self.row_shape)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                dtype: Any = None) -> Iterator[np.ndarray]:
        """Yield rows [start, stop) as arrays of at most `batch_size` rows (cast to `dtype` if given)."""
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1 (not {batch_size})")
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        start = max(0, start)
        if start >= stop:
            return
        target = None if dtype is None else np.dtype(dtype)
        row = start
        for batch in self._batches(batch_size, start, stop):
            yield batch if target is None else cast_rows(batch, target, self.name, row)
            row += len(batch)

    def read(self, start: int = 0, stop: int | None = None, dtype: Any = None) -> np.ndarray:
        """All rows [start, stop) as one array (for small inputs and tests)."""
        parts = list(self.batches(65536, start, stop, dtype))
        if not parts:
            return np.zeros((0, *self.row_shape), dtype=dtype or self.dtype)
        return np.concatenate(parts)

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"path": self.name, "format": self.format, "rows": self.n_rows,
                "row_shape": list(self.row_shape), "dtype": str(self.dtype)}


def cast_rows(batch: np.ndarray, dtype: np.dtype[Any], name: str = "input", first_row: int = 0) -> np.ndarray:
    """Cast a batch to `dtype`, refusing casts that would change values (1.5 -> int, 300 -> uint8)."""
    if batch.dtype == dtype:
        return batch
    if batch.dtype.kind == "c" and dtype.kind != "c":
        raise IncompatibleError(f"{name}: complex values; the model input is {dtype}")
    if dtype.kind in "iub" and batch.dtype.kind in "fc":
        bad = ~np.isfinite(batch) | (batch != np.round(batch)) if batch.size else np.zeros(0, bool)
        if np.any(bad):
            flat = int(np.flatnonzero(bad.reshape(len(batch), -1).any(axis=1))[0])
            raise IncompatibleError(
                f"{name}: row {first_row + flat + 1} holds a non-integer value; the model input is {dtype}",
                "the model expects integer ids (e.g. token indices)")
    if dtype.kind in "iu" and batch.dtype.kind in "iuf" and batch.size:
        info = np.iinfo(dtype)
        lo, hi = batch.min(), batch.max()
        if lo < info.min or hi > info.max:
            raise IncompatibleError(f"{name}: values {lo}..{hi} do not fit the model input dtype {dtype}")
    out = aligned_empty(batch.shape, dtype)
    np.copyto(out, batch, casting="unsafe")
    return out


class ArraySource(RowSource):
    """An array already in memory (from a .json document, or for tests)."""

    def __init__(self, array: np.ndarray, name: str = "<array>", fmt: str = "array") -> None:
        array = np.asarray(array)
        if array.ndim == 0:
            raise InputError(f"{name}: a single value, not rows", "give one row per line or a list of rows")
        self.array = array
        self.name = name
        self.format = fmt
        self.row_shape = tuple(array.shape[1:])
        self.dtype = array.dtype
        self.n_rows = int(array.shape[0])

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        for s in range(start, stop, batch_size):
            yield np.ascontiguousarray(self.array[s:min(s + batch_size, stop)])


def _read_npy_header(fh: IO[bytes], name: str, text: bool = False) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The shared .npy header checks (numbers and bools, strings if `text`; bounded dims), plus: rows."""
    from wtool.store.arrays import read_npy_header

    shape, fortran, dtype = read_npy_header(fh, name, text=text)
    if len(shape) == 0:
        raise InputError(f"{name}: a single value (0-d array), not rows")
    return tuple(int(d) for d in shape), bool(fortran), dtype


class NpySource(RowSource):
    """An .npy array (a file, or a member of an .npz zip) read batch by batch with plain reads."""

    def __init__(self, fh: BinaryIO, name: str, size: int | None, fmt: str = "npy",
                 owner: Any = None, text: bool = False) -> None:
        self.fh = fh
        self.name = name
        self.format = fmt
        self._owner = owner
        shape, fortran, dtype = _read_npy_header(fh, name, text)
        self.data_offset = fh.tell()
        self.n_rows = shape[0]
        self.row_shape = shape[1:]
        self.dtype = dtype
        self.fortran = fortran and len(shape) > 1
        self.row_bytes = int(dtype.itemsize * math.prod(self.row_shape))
        if size is not None and self.data_offset + self.row_bytes * self.n_rows != size:
            held = size - self.data_offset
            raise InputError(f"{name}: {'truncated: ' if held < self.row_bytes * self.n_rows else ''}the header "
                             f"declares {fmt_row_shape(shape)} {dtype} ({self.row_bytes * self.n_rows} bytes) but "
                             f"the file holds {held} bytes of data")
        self._fortran_array: np.ndarray | None = None

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        if self.fortran:
            yield from self._fortran_batches(batch_size, start, stop)
            return
        self.fh.seek(self.data_offset + start * self.row_bytes)
        for s in range(start, stop, batch_size):
            n = min(batch_size, stop - s)
            buf = aligned_empty((n, *self.row_shape), self.dtype)
            want = n * self.row_bytes
            if want:
                view = buf.reshape(-1).view(np.uint8).data
                got = 0
                while got < want:
                    k = self.fh.readinto(view[got:])  # type: ignore[attr-defined]
                    if not k:
                        raise InputError(f"{self.name}: truncated at row {s + got // max(self.row_bytes, 1) + 1}")
                    got += k
            yield buf

    def _fortran_batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        # Column-major rows are not contiguous: map the file (rare; only numpy's order='F' saves).
        if self._fortran_array is None:
            self.fh.seek(self.data_offset)
            if isinstance(self.fh, io.BufferedReader):
                self._fortran_array = np.memmap(self.fh, dtype=self.dtype, mode="r", offset=self.data_offset,
                                                shape=self.shape, order="F")
            else:
                data = self.fh.read(self.row_bytes * self.n_rows)
                self._fortran_array = np.frombuffer(data, dtype=self.dtype).reshape(self.shape, order="F")
        for s in range(start, stop, batch_size):
            yield np.ascontiguousarray(self._fortran_array[s:min(s + batch_size, stop)])

    def close(self) -> None:
        self._fortran_array = None
        self.fh.close()
        if self._owner is not None:
            self._owner.close()


def _choose_key(keys: Sequence[str], key: str | None, name: str, what: str) -> str:
    if key is not None:
        if key not in keys:
            raise InputError(f"{name}: no {what} named {shown(key)}; it has {', '.join(map(shown, keys[:20])) or 'none'}")
        return key
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise InputError(f"{name}: holds no arrays")
    for candidate in DEFAULT_KEYS:
        if candidate in keys:
            return candidate
    raise UsageError(f"{name}: holds several {what}s ({', '.join(map(shown, keys[:20]))}); say which one",
                     "pass --input-key KEY")


def npz_keys(path: str | os.PathLike[str]) -> list[str]:
    """The array names in an .npz file, without reading the arrays."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a valid .npz archive ({exc})") from None


def has_field(path: str, name: str, fmt: str | None = None) -> bool:
    """Whether the CSV header or the first JSON-lines object of `path` names a column or field `name`.

    How a file with one column (or field) per model input feeds each input by name.
    """
    fmt = fmt or format_of(path)
    if path == "-" or fmt not in ("csv", "tsv", "jsonl"):
        return False
    try:
        with open_input(path) as fh:
            first = b""
            while not first.strip():
                first = fh.readline(64 << 20)
                if not first:
                    return False
        line = first.decode("utf-8-sig")
        if fmt == "jsonl":
            value = json.loads(line)
            return isinstance(value, dict) and name in value
        cells = next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ","))
        return name in [c.strip() for c in cells]
    except (WtoolError, OSError, UnicodeDecodeError, ValueError, StopIteration):
        return False  # the real open reports what is wrong with the file


def _open_npz(path: str, fh: BinaryIO | None, key: str | None, text: bool = False) -> NpySource:
    try:
        zf = zipfile.ZipFile(fh if fh is not None else path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a valid .npz archive ({exc})") from None
    try:
        caps = limits.current()
        from wtool.safety.archive import check_zip_structure

        raw = zf.fp  # duplicate names, symlink entries, overlaps, methods (zipfile alone takes the last duplicate)
        if raw is not None:
            check_zip_structure(zf, raw, str(path), raw.seek(0, os.SEEK_END), caps)  # type: ignore[arg-type]
        if len(zf.infolist()) > caps.max_archive_members:
            raise InputError(f"{path}: {len(zf.infolist())} zip members, over the limit of "
                             f"{caps.max_archive_members}")
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        chosen = _choose_key(list(members), key, path, "array")
        info = zf.getinfo(members[chosen])
        if info.file_size > caps.max_bytes:
            raise InputError(f"{path}: array {shown(chosen)} is {limits.fmt_bytes(info.file_size)}, over the "
                             f"limit of {limits.fmt_bytes(caps.max_bytes)}", "raise it with WTOOL_MAX_BYTES")
        try:
            member = zf.open(info)
        except (RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path}: cannot read array {chosen!r} ({exc})") from None
        return NpySource(member, f"{path}[{chosen}]", info.file_size, fmt="npz", owner=zf,  # type: ignore[arg-type]
                         text=text)
    except BaseException:
        zf.close()
        raise


class _LineSource(RowSource):
    """Shared by CSV and JSON lines: a counting pass up front, then batches of parsed lines."""

    fh: IO[str]
    first_data_line: int  # 1-based line number of the first data row

    def _count_rows(self, limit: int | None = None) -> int:
        """Data rows (at most `limit`: a header-only look counts to 1, to tell an empty file)."""
        self.fh.seek(0)
        count = 0
        for lineno, line in enumerate(self.fh, 1):
            if lineno >= self.first_data_line and line.strip():
                count += 1
                if limit is not None and count >= limit:
                    break
        return count

    def _line_batches(self, batch_size: int, start: int, stop: int) -> Iterator[list[tuple[int, str]]]:
        self.fh.seek(0)
        row = 0
        chunk: list[tuple[int, str]] = []
        for lineno, line in enumerate(self.fh, 1):
            if lineno < self.first_data_line or not line.strip():
                continue
            if row >= start:
                chunk.append((lineno, line))
                if len(chunk) == batch_size or row + 1 == stop:
                    yield chunk
                    chunk = []
            row += 1
            if row >= stop:
                break
        if chunk:
            yield chunk

    def close(self) -> None:
        self.fh.close()


def is_number(text: str) -> bool:
    """Whether a CSV cell parses as a number (how header rows are told from data rows)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_columns(spec: str | Sequence[str] | None) -> list[str] | None:
    if spec is None:
        return None
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    if not items:
        raise UsageError("--columns is empty")
    return items


class CsvSource(_LineSource):
    """Numeric CSV/TSV rows, with or without a header row; `columns` picks columns by name or index.

    With `text` the cells are kept as strings (for string-input models) and, as in pandas,
    the first row is a header unless `header` is False: strings cannot tell it from data.
    """

    def __init__(self, fh: IO[str], name: str, columns: str | Sequence[str] | None = None,
                 header: bool | None = None, delimiter: str = ",", drop: Sequence[str] = (),
                 target: str | None = None, text: bool = False, head_only: bool = False) -> None:
        self.fh = fh
        self.name = name
        self.format = "tsv" if delimiter == "\t" else "csv"
        self.delimiter = delimiter
        self.text = text
        self.dtype = np.dtype("U") if text else np.dtype("float64")
        first: list[str] | None = None
        first_lineno = 0
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                first = next(csv.reader([line], delimiter=delimiter))
                first_lineno = lineno
                break
        if first is None:
            raise InputError(f"{name}: empty input (no rows)")
        if header is None:
            header = text or not all(is_number(c) for c in first)
        self.header: list[str] | None = [c.strip() for c in first] if header else None
        self.n_columns = len(first)
        self.first_data_line = first_lineno + 1 if header else first_lineno
        self.usecols = self._resolve_columns(_parse_columns(columns))
        if drop or target is not None:
            self.usecols = self._without(drop, target)
        self.row_shape = (len(self.usecols) if self.usecols is not None else self.n_columns,)
        self.n_rows = self._count_rows(1 if head_only else None)
        if self.n_rows == 0:
            raise InputError(f"{name}: empty input (a header row but no data rows)")

    def _resolve_columns(self, wanted: list[str] | None) -> list[int] | None:
        if wanted is None:
            return None
        picked: list[int] = []
        for item in wanted:
            if self.header is not None and item in self.header:
                picked.append(self.header.index(item))
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if m is None:
                known = f"; the header has {', '.join(self.header[:8])}{', ...' if len(self.header) > 8 else ''}" \
                    if self.header else "; the file has no header, so give 0-based column numbers"
                raise UsageError(f"{self.name}: no column {item!r}{known}")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo or hi >= self.n_columns:
                raise UsageError(f"{self.name}: column range {item!r} is outside 0-{self.n_columns - 1}")
            picked.extend(range(lo, hi + 1))
        return picked

    def _without(self, drop: Sequence[str], target: str | None) -> list[int]:
        """The columns left after --drop (each must exist) and --target (left out when the file has it,
        so the training CSV and a file of new rows without labels both work)."""
        dropped = set(self._resolve_columns(list(drop)) or [])
        if target is not None:
            present = (self.header is not None and target in self.header) or \
                (target.isdigit() and int(target) < self.n_columns and self.header is None)
            if present:
                dropped.update(self._resolve_columns([target]) or [])
        kept = [i for i in (self.usecols if self.usecols is not None else range(self.n_columns)) if i not in dropped]
        if not kept:
            raise UsageError(f"{self.name}: --target/--drop leave no columns")
        return kept

    def column_label(self, index: int) -> str:
        if self.header is not None and index < len(self.header):
            return f"column {index + 1} ({self.header[index]!r})"
        return f"column {index + 1}"

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        if self.text:
            yield from self._text_batches(batch_size, start, stop)
            return
        for chunk in self._line_batches(batch_size, start, stop):
            lines = [line for _, line in chunk]
            try:
                arr = np.loadtxt(lines, delimiter=self.delimiter, dtype=np.float64, ndmin=2,
                                 usecols=self.usecols, quotechar='"', comments=None)
            except ValueError:
                self._locate_error(chunk)
                raise  # pragma: no cover - _locate_error always raises
            if arr.shape[1] != self.row_shape[0]:
                self._locate_error(chunk)
            yield arr

    def _text_batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        wanted = self.usecols if self.usecols is not None else list(range(self.n_columns))
        for chunk in self._line_batches(batch_size, start, stop):
            rows = []
            for lineno, line in chunk:
                cells = next(csv.reader([line], delimiter=self.delimiter))
                if max(wanted) >= len(cells) or (self.usecols is None and len(cells) != self.n_columns):
                    raise InputError(f"{self.name}: line {lineno} has {len(cells)} columns; "
                                     f"the first row has {self.n_columns}")
                rows.append([cells[i] for i in wanted])
            yield np.array(rows, dtype=str).reshape(len(rows), len(wanted))

    def _locate_error(self, chunk: list[tuple[int, str]]) -> None:
        """Find the first bad cell of a batch that numpy refused and name its line and column."""
        wanted = self.usecols if self.usecols is not None else list(range(self.n_columns))
        for lineno, line in chunk:
            cells = next(csv.reader([line], delimiter=self.delimiter))
            if self.usecols is None and len(cells) != self.n_columns:
                raise InputError(f"{self.name}: line {lineno} has {len(cells)} columns; "
                                 f"the first row has {self.n_columns}")
            for index in wanted:
                if index >= len(cells):
                    raise InputError(f"{self.name}: line {lineno} has {len(cells)} columns; "
                                     f"{self.column_label(index)} is missing")
                cell = cells[index].strip()
                if not is_number(cell):
                    what = "an empty cell" if not cell else f"not a number: {cell[:40]!r}"
                    raise InputError(f"{self.name}: line {lineno}, {self.column_label(index)}: {what}",
                                     "every selected cell must be a number; pick columns with --columns")
        raise InputError(f"{self.name}: cannot parse lines {chunk[0][0]}-{chunk[-1][0]} as numbers")


def _json_number_array(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        text = str(exc).splitlines()[0]
        if "inhomogeneous" in text or "sequence" in text:
            raise InputError(f"{where}: rows of different lengths (a ragged array)") from None
        raise InputError(f"{where}: not a number ({text[:120]})", "rows must hold numbers only") from None
    return arr


def _json_text_array(value: Any, where: str) -> np.ndarray:
    """A string, or (nested) lists of strings, as a numpy U array; numbers are refused, not stringified."""
    try:
        arr = np.asarray(value, dtype=object)
    except ValueError:
        raise InputError(f"{where}: rows of different lengths (a ragged array)") from None
    if not all(isinstance(v, str) for v in arr.reshape(-1)):
        raise InputError(f"{where}: not a string", "this model input takes text: give strings")
    return arr.astype(str)


class JsonlSource(_LineSource):
    """One JSON row per line: a number, a (nested) list of numbers, or an object whose `key` holds one.

    With `text`, rows hold strings instead (for string-input models).
    """

    def __init__(self, fh: IO[str], name: str, key: str | None = None, text: bool = False,
                 head_only: bool = False) -> None:
        self.fh = fh
        self.name = name
        self.format = "jsonl"
        self.text = text
        self.dtype = np.dtype("U") if text else np.dtype("float64")
        self.key: str | None = None
        self._wanted_key = key
        self.first_data_line = 1
        first = None
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                self.first_data_line = lineno
                first = self._parse(lineno, line, first=True)
                break
        if first is None:
            raise InputError(f"{name}: empty input (no rows)")
        self.row_shape = tuple(first.shape)
        self.n_rows = 1 if head_only else self._count_rows()

    def _parse(self, lineno: int, line: str, first: bool = False) -> np.ndarray:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.name}: line {lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(value, dict):
            if first:
                self.key = _choose_key(list(value), self._wanted_key, f"{self.name}: line {lineno}", "field")
            if self.key not in value:
                raise InputError(f"{self.name}: line {lineno}: no field {self.key!r}")
            value = value[self.key]
        elif self.key is not None:
            raise InputError(f"{self.name}: line {lineno}: expected an object with field {self.key!r}")
        if self.text:
            return _json_text_array(value, f"{self.name}: line {lineno}")
        return _json_number_array(value, f"{self.name}: line {lineno}")

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        for chunk in self._line_batches(batch_size, start, stop):
            rows = []
            for lineno, line in chunk:
                row = self._parse(lineno, line)
                if row.shape != self.row_shape:
                    raise InputError(f"{self.name}: line {lineno}: row has shape {fmt_row_shape(row.shape)}; "
                                     f"the first row has {fmt_row_shape(self.row_shape)}")
                rows.append(row)
            # Strings: the batch is as wide as its longest string (a fixed width would cut them).
            yield np.stack(rows) if self.text else np.asarray(rows, dtype=self.dtype).reshape(len(rows), *self.row_shape)


def _open_json(fh: IO[str], name: str, key: str | None, text: bool = False) -> ArraySource:
    try:
        doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    finally:
        fh.close()
    if isinstance(doc, dict):
        doc = doc[_choose_key(list(doc), key, name, "field")]
    if not isinstance(doc, list):
        raise InputError(f"{name}: expected a list of rows, got a single {type(doc).__name__}")
    if not doc:
        raise InputError(f"{name}: empty input (no rows)")
    return ArraySource(_json_text_array(doc, name) if text else _json_number_array(doc, name), name, fmt="json")


def _text(fh: BinaryIO) -> IO[str]:
    return io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")


def sniff_format(head: bytes, first_line: bytes | None = None) -> str:
    """Guess the format of bytes with no file name (stdin): npy, npz, jsonl, json, tsv or csv.

    `head` is the start of the data, `first_line` its first non-blank line in full (JSON
    lines can be long); a JSON value that fits on the first line means JSON lines.
    """
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    line = (first_line if first_line is not None else text.split(b"\n", 1)[0]).lstrip(b"\xef\xbb\xbf").strip()
    if text[:1] in (b"[", b"{"):
        try:
            json.loads(line)
        except ValueError:
            return "json"  # a document spread over several lines
        return "jsonl"
    return "tsv" if b"\t" in line and b"," not in line else "csv"


def _first_line(fh: BinaryIO, limit: int = 64 << 20) -> bytes:
    fh.seek(0)
    line = b""
    while not line.strip():
        line = fh.readline(limit)
        if not line:
            break
    fh.seek(0)
    return line


def _spool_stdin(stream: BinaryIO) -> tuple[BinaryIO, bytes]:
    """Copy stdin to an anonymous temporary file (flat memory, and it can be read twice)."""
    tmp = tempfile.TemporaryFile(prefix="wtool-stdin-")
    head = b""
    while True:
        chunk = stream.read(SPOOL_CHUNK)
        if not chunk:
            break
        if len(head) < 4096:
            head += chunk[: 4096 - len(head)]
        tmp.write(chunk)
    tmp.seek(0)
    return tmp, head  # type: ignore[return-value]


def format_of(path: str | os.PathLike[str], table: Mapping[str, str] = INPUT_FORMATS) -> str | None:
    suffix = Path(path).suffix.lower()
    return table.get(suffix)


def open_rows(path: str | os.PathLike[str], key: str | None = None, columns: str | Sequence[str] | None = None,
              *, fmt: str | None = None, header: bool | None = None, stdin: BinaryIO | None = None,
              drop: Sequence[str] = (), target: str | None = None, strings: bool = False,
              head_only: bool = False) -> RowSource:
    """Open `path` (or `-` for stdin) as a RowSource. `key` picks an .npz array or a JSON field.

    `fmt` overrides the format guessed from the extension (or sniffed from stdin's first bytes);
    `columns` picks CSV columns by header name or 0-based index ("0-9" is a range);
    `header` forces a CSV header row on or off (default: detected from the first row);
    `drop` leaves CSV columns out, and `target` the label column when the file has one.
    `strings` reads strings, not numbers (the rows of a string-input model).
    `head_only`: a CSV or JSON-lines file is read only up to its first data row (its row shape, for a
    check before the model loads); `n_rows` is then 1, not the count.
    """
    text = os.fspath(path)
    if fmt is not None and fmt not in FORMAT_NAMES:
        raise UsageError(f"unknown input format {fmt!r}; use one of {', '.join(FORMAT_NAMES)}")
    if text == "-":
        if stdin is None:
            import sys

            stdin = sys.stdin.buffer
        fh, head = _spool_stdin(stdin)
        if not head.strip():
            fh.close()
            raise InputError("stdin: empty input (no rows)")
        fmt = fmt or sniff_format(head, _first_line(fh) if head.lstrip()[:1] in (b"[", b"{") else None)
        name = "stdin"
        size: int | None = os.fstat(fh.fileno()).st_size
    else:
        fmt = fmt or format_of(text)
        if fmt is None:
            raise InputError(f"{text}: unsupported input format {Path(text).suffix or '(no extension)'!r}",
                             "use .npy, .npz, .csv, .tsv, .jsonl or .json, or pass --input-format")
        name = text
        fh = open_input(text)
        size = os.fstat(fh.fileno()).st_size
    if (columns is not None or drop or target is not None) and fmt not in ("csv", "tsv"):
        fh.close()
        used = "--columns" if columns is not None else "--drop" if drop else "--target"
        raise UsageError(f"{used} applies to CSV input, not {fmt}")
    try:
        source: RowSource
        if fmt == "npy":
            source = NpySource(fh, name, size, text=strings)
        elif fmt == "npz":
            source = _open_npz(name, fh, key, strings)
        elif fmt in ("csv", "tsv"):
            source = CsvSource(_text(fh), name, columns, header, "\t" if fmt == "tsv" else ",", drop, target,
                               strings, head_only)
        elif fmt == "jsonl":
            source = JsonlSource(_text(fh), name, key, strings, head_only)
        else:
            source = _open_json(_text(fh), name, key, strings)
    except UnicodeDecodeError:
        fh.close()
        raise InputError(f"{name}: not UTF-8 text; is it really {fmt}?") from None
    except BaseException:
        fh.close()
        raise
    if source.n_rows == 0:
        source.close()
        raise InputError(f"{name}: empty input (no rows)")
    return source


# --------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class Column:
    """One named output column: every row holds an array of `shape` and `dtype`."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def flat_names(self) -> list[str]:
        """CSV header names: `name` for scalars, `name_0..name_K` for vectors, flat index beyond."""
        size = math.prod(self.shape)
        if not self.shape:
            return [self.name]
        return [f"{self.name}_{i}" for i in range(size)]


class RowWriter:
    """Appends batches of named columns to a file; `close()` finishes it, `abort()` drops it."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.rows = 0

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        n = None
        for col in self.columns:
            arr = batch[col.name]
            if tuple(arr.shape[1:]) != col.shape:
                raise InternalError(f"column {col.name}: rows of shape {arr.shape[1:]}, expected {col.shape}")
            if n is None:
                n = len(arr)
            elif len(arr) != n:
                raise InternalError(f"column {col.name}: {len(arr)} rows, expected {n}")
        self._write(batch, n or 0)
        self.rows += n or 0

    def _write(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class CollectWriter(RowWriter):
    """Keeps the batches in memory (for a few rows: a table on the terminal, tests)."""

    def __init__(self, columns: Sequence[Column]) -> None:
        super().__init__(columns)
        self.batches: list[dict[str, np.ndarray]] = []

    def _write(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        self.batches.append({c.name: batch[c.name] for c in self.columns})


def _npy_header(fh: IO[bytes], shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(fh, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(fh, header)


class NpyWriter(RowWriter):
    """One column to an .npy file: the header (with the final row count) first, then each batch."""

    def __init__(self, path: str | os.PathLike[str], column: Column, n_rows: int) -> None:
        super().__init__([column])
        if column.dtype.hasobject:
            raise InternalError(f"column {column.name} has object dtype")
        self.column = column
        self.n_rows = n_rows
        self.fh = open(path, "wb")  # noqa: SIM115
        _npy_header(self.fh, (n_rows, *column.shape), column.dtype)
        self.fh.flush()

    def _write(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        if self.rows + n > self.n_rows:
            raise InternalError(f"more rows than announced ({self.rows + n} > {self.n_rows})")
        arr = np.ascontiguousarray(batch[self.column.name], dtype=self.column.dtype)
        self.fh.write(arr.reshape(-1).view(np.uint8).data if arr.size else b"")

    def close(self) -> None:
        if self.fh.closed:
            return
        self.fh.close()
        if self.rows != self.n_rows:
            raise InternalError(f"wrote {self.rows} rows, the header announced {self.n_rows}")

    def abort(self) -> None:
        self.fh.close()


class NpzWriter(RowWriter):
    """Columns to an .npz (one array each, uncompressed). Each array streams to a temporary .npy
    beside the target, and the temporaries are copied into the zip at the end."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[Column], n_rows: int) -> None:
        super().__init__(columns)
        self.path = Path(path)
        self.parts: dict[str, tuple[Path, NpyWriter]] = {}
        try:
            for col in columns:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part.npy", dir=self.path.parent)
                os.close(fd)
                self.parts[col.name] = (Path(tmp), NpyWriter(tmp, col, n_rows))
        except BaseException:
            self.abort()
            raise

    def _write(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        for name, (_, writer) in self.parts.items():
            writer.write({name: batch[name]})

    def close(self) -> None:
        try:
            for _, writer in self.parts.values():
                writer.close()
            with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, (tmp, _) in self.parts.items():
                    with open(tmp, "rb") as src, zf.open(f"{name}.npy", "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, SPOOL_CHUNK)
        finally:
            self._remove_parts()

    def abort(self) -> None:
        for _, writer in self.parts.values():
            writer.abort()
        self._remove_parts()

    def _remove_parts(self) -> None:
        for tmp, _ in self.parts.values():
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


def _cell_format(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "iub":
        return "%d"
    if dtype.kind == "f":
        return "%.17g" if dtype.itemsize >= 8 else "%.9g"  # shortest widths that round-trip
    return "%s"


def _csv_quote(value: str, delimiter: str) -> str:
    if any(ch in value for ch in (delimiter, '"', "\n", "\r")) or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


class CsvWriter(RowWriter):
    """Columns to CSV/TSV with a header row; vectors are spread over `name_0..name_K` columns."""

    def __init__(self, stream: IO[str], columns: Sequence[Column], delimiter: str = ",",
                 owns: bool = True) -> None:
        super().__init__(columns)
        self.stream = stream
        self.owns = owns
        self.delimiter = delimiter
        names = [n for col in columns for n in col.flat_names()]
        stream.write(delimiter.join(_csv_quote(n, delimiter) for n in names) + "\n")
        self.row_format = delimiter.join(
            _cell_format(col.dtype) for col in columns for _ in range(max(1, math.prod(col.shape)))) + "\n"
        self.numeric = all(col.dtype.kind in "iubf" for col in columns)

    def _write(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        if n == 0:
            return
        parts = []
        for col in self.columns:
            arr = batch[col.name].reshape(n, -1)
            if col.dtype.kind in "US":
                arr = np.array([[_csv_quote(str(v), self.delimiter) for v in row] for row in arr], dtype=object)
            elif col.dtype.kind == "b":
                arr = arr.astype(np.int64)
            parts.append(arr.astype(object) if not self.numeric else arr)
        if self.numeric and len({p.dtype for p in parts}) == 1:
            table = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        else:
            table = np.concatenate([p.astype(object) for p in parts], axis=1)
        fmt = self.row_format
        write_all(self.stream, "".join(fmt % tuple(row) for row in table.tolist()))

    def close(self) -> None:
        if self.owns:
            self.stream.close()
        else:
            self.stream.flush()


class JsonlWriter(RowWriter):
    """One JSON value per line: the row itself for one column, else an object keyed by column name."""

    def __init__(self, stream: IO[str], columns: Sequence[Column], owns: bool = True) -> None:
        super().__init__(columns)
        self.stream = stream
        self.owns = owns

    def _write(self, batch: Mapping[str, np.ndarray], n: int) -> None:
        dumps = json.dumps
        if len(self.columns) == 1:
            values = batch[self.columns[0].name].tolist()
            write_all(self.stream, "".join(dumps(v) + "\n" for v in values))
        else:
            names = [c.name for c in self.columns]
            cols = [batch[name].tolist() for name in names]
            write_all(self.stream, "".join(dumps(dict(zip(names, row, strict=True))) + "\n"
                                             for row in zip(*cols, strict=True)))
        if not self.owns:
            self.stream.flush()

    def close(self) -> None:
        if self.owns:
            self.stream.close()
        else:
            self.stream.flush()


def check_output_format(path: str | os.PathLike[str], columns: Sequence[Column]) -> str:
    """The output format of `path`, or a UsageError naming the ones supported / the clash with columns."""
    fmt = format_of(path, OUTPUT_FORMATS)
    if fmt is None:
        raise UsageError(f"{path}: unsupported output format {Path(path).suffix or '(no extension)'!r}",
                         "use -o with .npy, .npz, .csv, .tsv or .jsonl")
    if fmt == "npy":
        if len(columns) != 1:
            raise UsageError(f"{path}: an .npy file holds one array, this run gives {len(columns)} "
                             f"({', '.join(c.name for c in columns)})", "use .npz, .csv or .jsonl")
        if columns[0].dtype.kind in "USO":
            raise UsageError(f"{path}: an .npy file cannot hold text labels", "use .csv or .jsonl")
    return fmt


def open_writer(path: str | os.PathLike[str], columns: Sequence[Column], n_rows: int,
                fmt: str | None = None) -> RowWriter:
    """A writer for `path` (a temporary path is fine: only its extension matters)."""
    fmt = fmt or check_output_format(path, columns)
    if fmt == "npy":
        return NpyWriter(path, columns[0], n_rows)
    if fmt == "npz":
        return NpzWriter(path, columns, n_rows)
    stream = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    if fmt in ("csv", "tsv"):
        return CsvWriter(stream, columns, "\t" if fmt == "tsv" else ",")
    return JsonlWriter(stream, columns)
