"""Labelled batches read from a stream as they arrive (stdin for `wtool train --data -`).

Two forms, told apart by the first byte:

- JSON lines: one object per line, `{"x": ROW, "y": LABEL}` (the field names are --x-key /
  --y-key), parsed as `infer` parses JSON lines; rows are grouped into batches of
  `batch_size`, and a batch is yielded as soon as its last line has arrived (the last one may be
  smaller). Blank lines are skipped.
- an .npy stream: .npy arrays written back to back (`np.save(sys.stdout.buffer, x)` then
  `np.save(..., y)`, repeated): each (x, y) pair is one batch, of whatever rows it holds. Headers
  are checked as for .npy files; object arrays are refused (nothing is unpickled).

Nothing is spooled: memory holds one batch. No TensorFlow here.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from wtool.data.rows import NPY_MAGIC, _json_number_array, fmt_row_shape
from wtool.errors import IncompatibleError, InputError
from wtool.safety import limits
from wtool.safety.limits import shown


@dataclass
class StreamBatch:
    """One batch off the stream; `where` names its lines or arrays for messages ("lines 33-64")."""

    x: np.ndarray
    y: np.ndarray
    where: str
    first_line: int  # JSON lines: the batch's first line; npy: the x array's position (1-based)


def buffered(stream: Any) -> BinaryIO:
    """A stream that can be peeked at without consuming (a pipe's sys.stdin.buffer already is)."""
    if hasattr(stream, "peek"):
        return stream  # type: ignore[no-any-return]
    return io.BufferedReader(stream)  # type: ignore[arg-type]


def sniff(fh: BinaryIO) -> str | None:
    """'npy', 'jsonl', or None for an empty stream (blocks until the first byte or EOF)."""
    head = fh.peek(1)  # type: ignore[attr-defined]
    if not head:
        return None
    return "npy" if head[:1] == NPY_MAGIC[:1] else "jsonl"


def read_batches(fh: BinaryIO, fmt: str, batch_size: int, x_key: str = "x", y_key: str = "y",
                 name: str = "stdin") -> Iterator[StreamBatch]:
    """The stream's batches, each as soon as it is complete. See the module doc for the forms."""
    if fmt == "npy":
        return _npy_batches(fh, name)
    return _jsonl_batches(fh, batch_size, x_key, y_key, name)


# ------------------------------------------------------------------------------------------ JSON lines


def _jsonl_row(line: bytes, lineno: int, x_key: str, y_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    where = f"{name}: line {lineno}"
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object with fields {x_key!r} and {y_key!r}, got a "
                         f"{type(value).__name__}", f'one row per line, e.g. {{"{x_key}": [0, 1], "{y_key}": 1}}')
    for key in (x_key, y_key):
        if key not in value:
            raise InputError(f"{where}: no field {shown(key)}; it has {', '.join(map(shown, list(value)[:20]))}",
                             "name the fields with --x-key / --y-key")
    return _json_number_array(value[x_key], f"{where}: {x_key}"), _json_number_array(value[y_key], f"{where}: {y_key}")


def _jsonl_batches(fh: BinaryIO, batch_size: int, x_key: str, y_key: str, name: str) -> Iterator[StreamBatch]:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    first = lineno = 0
    for lineno, line in enumerate(iter(fh.readline, b""), 1):
        if not line.strip():
            continue
        x, y = _jsonl_row(line.lstrip(b"\xef\xbb\xbf") if lineno == 1 else line, lineno, x_key, y_key, name)
        if shapes is None:
            shapes = (x.shape, y.shape)
        elif (x.shape, y.shape) != shapes:
            which, got, want = (x_key, x.shape, shapes[0]) if x.shape != shapes[0] else (y_key, y.shape, shapes[1])
            raise IncompatibleError(f"{name}: line {lineno}: {which} has shape {fmt_row_shape(got)}; the first row's has "
                             f"{fmt_row_shape(want)}")
        if not xs:
            first = lineno
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield StreamBatch(np.stack(xs), np.stack(ys), _lines(first, lineno), first)
            xs, ys = [], []
    if xs:
        yield StreamBatch(np.stack(xs), np.stack(ys), _lines(first, lineno), first)


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


# ------------------------------------------------------------------------------------------ npy stream


def _read_array(fh: BinaryIO, where: str) -> np.ndarray:
    """One .npy array off the stream: header checks as for files, then exactly its bytes."""
    from wtool.store.arrays import read_npy_header

    shape, fortran, dtype = read_npy_header(fh, where)
    if len(shape) == 0:
        raise InputError(f"{where}: a single value (0-d array), not a batch of rows")
    nbytes = math.prod(shape) * dtype.itemsize
    cap = limits.current().max_bytes
    if nbytes > cap:
        raise InputError(f"{where}: the header declares {nbytes} bytes, over the {limits.fmt_bytes(cap)} limit")
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        k = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            raise InputError(f"{where}: truncated: the header declares {fmt_row_shape(shape)} {dtype} "
                             f"({nbytes} bytes), the stream ended after {got}")
        got += k
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr)


def _npy_batches(fh: BinaryIO, name: str) -> Iterator[StreamBatch]:
    index = 0
    while fh.peek(1):  # type: ignore[attr-defined]
        batch = index // 2 + 1
        x = _read_array(fh, f"{name}: batch {batch}, array {index + 1} (x)")
        if not fh.peek(1):  # type: ignore[attr-defined]
            raise InputError(f"{name}: batch {batch}: the stream ended after its x array (array {index + 1}); "
                             "every x batch needs a y batch after it")
        y = _read_array(fh, f"{name}: batch {batch}, array {index + 2} (y)")
        if len(x) == 0:
            raise InputError(f"{name}: batch {batch}: x has no rows (array {index + 1})")
        if len(x) != len(y):
            raise InputError(f"{name}: batch {batch}: x has {len(x)} rows, y has {len(y)} (arrays {index + 1}-"
                             f"{index + 2})")
        yield StreamBatch(x, y, f"batch {batch} (arrays {index + 1}-{index + 2})", index + 1)
        index += 2
