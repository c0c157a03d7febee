"""The fast path of `wtool merge`: one pass over the inputs' raw bytes, in small blocks, straight to OUT.

A float weight stored as one contiguous, unfiltered byte range in native byte order (what
Keras writes) is read with `preadv` into buffers allocated once per merge and reused for
every block (BLOCK elements, small enough to stay in the CPU cache). Each block is
combined, written to OUT at its offset, CRC-32'd for the writer's read-back check, and
the inputs' distances from it are summed, so no weight is ever held whole, nothing is
read twice (slerp's dot products excepted) and no large temporary is allocated (fresh
memory is what costs most on a virtual machine).

Precision: float32 and float16 weights are combined in float32, float64 ones in float64.
Up to PLAIN_TERMS terms k_i x_i are added in order (error <= n u sum|k_i x_i|); more
are added with Kahan's compensated summation, so the error does not grow with the number of
inputs. Either way |result - exact| <= 5 u sum|k_i x_i| before the final rounding to the
stored dtype (u = 2**-24 for float32; 2**-53 for float64), i.e. within a few float32 ulps of
the float64 result (tests/test_merge_stream.py checks this against numpy float64). Distances and norms
are sums of squares in the working dtype over rows of SUM_ROW elements (relative error at
most SUM_ROW u, about 6e-5, typically 1e-6), the rows added up in float64.

Weights this path cannot read raw (bfloat16, chunked or compressed datasets, a compressed
archive member, other formats) go through `wtool.ops.merge.merge_weight` (float64, h5py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import InputError, UsageError
from wtool.safety.crc import crc32

# Elements per block: 1 MB of float32 per input, so a three-way merge's buffers stay in cache.
BLOCK = 1 << 18
# A weight's first and last rows are kept for the read-back check; rows longer than this take the slow path.
MAX_ROW = 1 << 24
RAW_FORMATS = ("keras", "h5", "weights.h5")
# Sums of squares (distances, norms) are taken in rows of this many elements, the rows added in float64.
SUM_ROW = 1024
# Up to this many terms k_i x_i are added in order (error <= n u sum|k_i x_i|); more, with Kahan's compensation.
PLAIN_TERMS = 4


def linear_coefficients(mode: str, coefficients: Sequence[float], n: int) -> tuple[list[float], float]:
    """(k_i, k_base): every mode but slerp is OUT = sum(k_i x_i) + k_base BASE."""
    if mode in ("mean", "weights"):
        total = float(sum(coefficients))
        return [c / total for c in coefficients], 0.0
    if mode == "task":  # BASE + sum(s_i (x_i - BASE))
        return list(coefficients), 1.0 - float(sum(coefficients))
    raise UsageError(f"no linear coefficients for {mode!r}")  # pragma: no cover


def slerp_coefficients(t: float, dot: float, norm_a: float, norm_b: float, eps: float = 1e-6) -> list[float]:
    """Spherical interpolation as a linear combination of a and b; linear when nearly parallel or zero."""
    if norm_a < eps or norm_b < eps:
        return [1 - t, t]
    omega = math.acos(float(np.clip(dot / (norm_a * norm_b), -1.0, 1.0)))
    if abs(math.sin(omega)) < eps:
        return [1 - t, t]
    return [math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)]


@dataclass(frozen=True)
class RawWeight:
    """Where a weight's bytes lie: absolute byte offset of a contiguous C-ordered range in `file`."""

    file: Path
    offset: int
    nbytes: int


def raw_weight(mf: Any, path: str, images: dict[tuple[Path, str], Any]) -> RawWeight | None:
    """The raw byte range of a weight, or None when it is not plainly stored (then h5py reads it)."""
    from wtool.store import write as store_write

    source = getattr(mf, "weight_source", None)
    dataset = getattr(mf, "dataset", None)
    if source is None or dataset is None:
        return None
    try:
        file, fmt, _name = source(path)
        if fmt not in RAW_FORMATS:
            return None
        ds = dataset(path)
        dtype = np.dtype(mf.weight(path).dtype)
        if ds.dtype != dtype or dtype.kind != "f" or not dtype.isnative or dtype.itemsize not in (2, 4, 8):
            return None
        extent = store_write.dataset_extent(ds)
        key = (Path(file), fmt)
        if key not in images:
            images[key] = store_write.locate_image(file, fmt)
        image = images[key]
    except (OSError, ValueError, TypeError, AttributeError, InputError):
        return None
    if extent is None or not image.length or extent[0] < 0 or extent[0] + extent[1] > image.length:
        return None
    return RawWeight(Path(file), image.offset + extent[0], extent[1])


@dataclass
class Workspace:
    """File descriptors and block buffers shared by every weight of one merge (allocated once)."""

    fds: dict[Path, int] = field(default_factory=dict)
    _buffers: dict[tuple[str, str, int], np.ndarray] = field(default_factory=dict)

    def fd(self, path: Path) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self.fds[path]

    def buffer(self, dtype: np.dtype, role: str, slot: int = 0) -> np.ndarray:
        key = (np.dtype(dtype).str, role, slot)
        if key not in self._buffers:
            self._buffers[key] = np.empty(BLOCK, dtype)
        return self._buffers[key]

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self._buffers.clear()


def _sum_sq(a: np.ndarray) -> float:
    """sum(a**2): in rows of SUM_ROW elements in a's dtype (one pass, no temporary), the rows added in float64."""
    whole = len(a) - len(a) % SUM_ROW
    total = 0.0
    if whole:
        rows = a[:whole].reshape(-1, SUM_ROW)
        total += float(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64))
    if whole < len(a):
        tail = a[whole:]
        total += float(np.einsum("i,i->", tail, tail))
    return total


def _read_into(fd: int, buf: np.ndarray, offset: int, where: Path) -> None:
    view = buf.view(np.uint8).data
    done = 0
    while done < len(view):
        try:
            got = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise InputError(f"{where}: cannot read the weights ({exc.strerror or exc})") from None
        if got <= 0:
            raise InputError(f"{where}: unexpected end of file while reading weights (truncated?)",
                             "the file may be incomplete: download or save it again")
        done += got


class StreamedMerge:
    """One merged weight, written block by block to an open file (see the module docstring)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, inputs: Sequence[RawWeight],
                 base: RawWeight | None, mode: str, coefficients: Sequence[float], ws: Workspace) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.inputs, self.base, self.mode, self.coefficients, self.ws = list(inputs), base, mode, coefficients, ws
        self.work = np.dtype(np.float64 if self.dtype == np.float64 else np.float32)

    @staticmethod
    def supported(shape: tuple[int, ...]) -> bool:
        return len(shape) >= 1 and math.prod(shape) > 0 and math.prod(shape[1:]) <= MAX_ROW

    def _blocks(self, sources: Sequence[RawWeight]):  # type: ignore[no-untyped-def]
        """Yield (start, count, [block of each source in the working dtype])."""
        n = math.prod(self.shape)
        item = self.dtype.itemsize
        raw = [self.ws.buffer(self.dtype, "in", i) for i in range(len(sources))]
        cast = [self.ws.buffer(self.work, "cast", i) for i in range(len(sources))] \
            if self.work != self.dtype else raw
        fds = [self.ws.fd(s.file) for s in sources]
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            blocks = []
            for src, fd, buf, wbuf in zip(sources, fds, raw, cast, strict=True):
                _read_into(fd, buf[:m], src.offset + start * item, src.file)
                if wbuf is not buf:
                    np.copyto(wbuf[:m], buf[:m])
                blocks.append(wbuf[:m])
            yield start, m, blocks

    def _linear(self) -> tuple[list[float], float]:
        if self.mode != "slerp":
            return linear_coefficients(self.mode, self.coefficients, len(self.inputs))
        dot = sq_a = sq_b = 0.0
        a64, b64 = self.ws.buffer(np.dtype(np.float64), "slerp", 0), self.ws.buffer(np.dtype(np.float64), "slerp", 1)
        for _start, m, (a, b) in self._blocks(self.inputs[:2]):
            x, y = a64[:m], b64[:m]
            np.copyto(x, a)
            np.copyto(y, b)
            # einsum, not BLAS dot: BLAS would start threads that spin on a shared machine
            dot += float(np.einsum("i,i->", x, y))
            sq_a += float(np.einsum("i,i->", x, x))
            sq_b += float(np.einsum("i,i->", y, y))
        return slerp_coefficients(self.coefficients[0], dot, math.sqrt(sq_a), math.sqrt(sq_b)), 0.0

    def write_to(self, fd: int, offset: int, pwrite: Any) -> tuple[int, np.ndarray, np.ndarray, list[float]]:
        """Write the merged bytes at `offset` of `fd` with `pwrite(fd, data, offset)`.

        Returns (CRC-32 of the bytes written, first row, last row, distance of each input).
        """
        ks, kb = self._linear()
        terms = [self.work.type(k) for k in ks] + ([self.work.type(kb)] if kb else [])
        sources = self.inputs + ([self.base] if kb and self.base is not None else [])
        if len(terms) != len(sources):  # pragma: no cover - a BASE coefficient without BASE
            raise ValueError("coefficients and inputs differ in number")
        ws, work = self.ws, self.work
        acc_a, acc_b, comp, term, diff = (ws.buffer(work, "acc", i) for i in range(5))
        out_buf = ws.buffer(self.dtype, "out") if work != self.dtype else None
        back = ws.buffer(work, "back") if work != self.dtype else None
        row = math.prod(self.shape[1:])
        n = math.prod(self.shape)
        first = np.empty(min(row, n), self.dtype)
        last = np.empty(min(row, n), self.dtype)
        last_start = n - len(last)
        crc = 0
        dist_sq = [0.0] * len(self.inputs)
        ref_sq = 0.0
        item = self.dtype.itemsize
        for start, m, xs in self._blocks(sources):
            acc, spare = acc_a[:m], acc_b[:m]
            np.multiply(xs[0], terms[0], out=acc)
            y = term[:m]
            if len(xs) <= PLAIN_TERMS:
                for k, x in zip(terms[1:], xs[1:], strict=True):
                    np.multiply(x, k, out=y)
                    np.add(acc, y, out=acc)
            else:
                c = comp[:m]
                c.fill(0)
                for k, x in zip(terms[1:], xs[1:], strict=True):  # Kahan: acc + k x, the lost low bits in c
                    np.multiply(x, k, out=y)
                    np.subtract(y, c, out=y)
                    np.add(acc, y, out=spare)
                    np.subtract(spare, acc, out=c)
                    np.subtract(c, y, out=c)
                    acc, spare = spare, acc
            if out_buf is not None and back is not None:
                stored = out_buf[:m]
                np.copyto(stored, acc, casting="unsafe")
                result = back[:m]
                np.copyto(result, stored)  # the stored value, as the distances must see it
            else:
                stored = result = acc
            pwrite(fd, stored, offset + start * item)
            crc = crc32(stored.view(np.uint8), crc)
            if start < len(first):
                k = min(len(first) - start, m)
                first[start:start + k] = stored[:k]
            if start + m > last_start:
                lo = max(last_start, start)
                last[lo - last_start:start + m - last_start] = stored[lo - start:]
            d = diff[:m]
            ref_sq += _sum_sq(result)
            for i, x in enumerate(xs[:len(self.inputs)]):
                np.subtract(x, result, out=d)
                dist_sq[i] += _sum_sq(d)
        norm = math.sqrt(ref_sq) or 1.0
        shape_row = (1, *self.shape[1:])
        return crc, first.reshape(shape_row), last.reshape(shape_row), [math.sqrt(s) / norm for s in dist_sq]
