"""Compare two weight files value by value, by canonical path, chunk by chunk. No TensorFlow."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wtool.errors import UsageError
from wtool.store import ModelFile, select
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, is_numeric

STATUSES = ("same", "changed", "dtype", "only_a", "only_b", "shape")


@dataclass
class WeightDiff:
    """One path compared: same, changed, dtype (equal values, dtypes differ), shape (shape differs), only_a, only_b."""

    path: str
    status: str
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs_diff: float | None = None
    rel_l2_change: float | None = None
    mismatched: int = 0  # values outside the tolerance (NaN mismatches included)
    nan_mismatched: int = 0  # places where exactly one side is NaN
    diff_sq: float = 0.0  # ||a-b||^2 over finite differences
    ref_sq: float | None = None  # ||a||^2 (finite values), with norms=True
    dequantized: bool = False  # an int8/int4 kernel quantized the same way on both sides: float values compared


@dataclass
class DiffReport:
    a: str
    b: str
    atol: float
    rtol: float
    weights: list[WeightDiff]

    def count(self, status: str) -> int:
        return sum(1 for w in self.weights if w.status == status)

    @property
    def equal(self) -> bool:
        return all(w.status == "same" for w in self.weights)

    @property
    def counts(self) -> dict[str, int]:
        return {s: self.count(s) for s in STATUSES}


def check_tolerances(atol: float, rtol: float) -> None:
    """Refuse a negative or NaN tolerance (UsageError naming the option)."""
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        if math.isnan(value) or value < 0:
            raise UsageError(f"{option} must not be negative or NaN (not {value:g})",
                             f"e.g. {option} 1e-6; the default 0 means bit-for-bit")


def diff_models(a: ModelFile, b: ModelFile, atol: float = 0.0, rtol: float = 0.0,
                layer_globs: list[str] | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS,
                norms: bool = False) -> DiffReport:
    """Compare two files weight by weight, by canonical path. NaN equals NaN at the same place.

    Weights whose values are equal within the tolerance but whose dtypes differ are "dtype".
    With `norms`, ||a||^2 of every compared weight is kept too (for `layer_changes`).
    """
    check_tolerances(atol, rtol)
    a_paths = [w.path for w in a.weights]
    b_paths = [w.path for w in b.weights]
    a_set = set(a_paths)
    union = a_paths + [p for p in b_paths if p not in a_set]
    chosen = select(union, layer_globs, option="--layer")
    in_a, in_b = set(a_paths), set(b_paths)
    rows = []
    for path in chosen:
        if path not in in_b:
            wa = a.weight(path)
            rows.append(WeightDiff(path, "only_a", shape_a=wa.shape, dtype_a=wa.dtype))
        elif path not in in_a:
            wb = b.weight(path)
            rows.append(WeightDiff(path, "only_b", shape_b=wb.shape, dtype_b=wb.dtype))
        else:
            row = _compare(a, b, path, atol, rtol, max_elements, norms)
            _compare_dequantized(a, b, row, atol, rtol)
            rows.append(row)
    return DiffReport(a=str(a.path), b=str(b.path), atol=atol, rtol=rtol, weights=rows)


def _compare(a: ModelFile, b: ModelFile, path: str, atol: float, rtol: float, max_elements: int,
             norms: bool = False) -> WeightDiff:
    wa, wb = a.weight(path), b.weight(path)
    row = WeightDiff(path, "same", wa.shape, wb.shape, wa.dtype, wb.dtype)
    if wa.shape != wb.shape:
        row.status = "shape"
        return row
    if not (is_numeric(np.dtype(wa.dtype)) and is_numeric(np.dtype(wb.dtype))):
        same = np.array_equal(a.read(path), b.read(path))
        row.status = _same_or_dtype(wa.dtype, wb.dtype) if same else "changed"
        row.mismatched = 0 if same else 1
        return row
    max_abs = 0.0
    diff_sq = 0.0
    mismatched = 0
    nan_mismatched = 0
    # Inf and NaN are handled explicitly below; numpy's "invalid value" / "overflow" warnings are noise here.
    with np.errstate(all="ignore"):
        ref_total = 0.0
        for block_a, block_b in zip(a.iter_chunks(path, max_elements), b.iter_chunks(path, max_elements),
                                    strict=True):
            if norms:
                xa = np.asarray(block_a, dtype=np.float64).ravel()
                xa = xa[np.isfinite(xa)]
                ref_total += float(np.dot(xa, xa))
            if block_a.dtype == block_b.dtype and np.array_equal(block_a, block_b):
                continue  # the common case, without float64 copies (NaN blocks take the slow path)
            x = np.asarray(block_a, dtype=np.float64).ravel()
            y = np.asarray(block_b, dtype=np.float64).ravel()
            finite = np.isfinite(x) & np.isfinite(y)
            equal_special = (np.isnan(x) & np.isnan(y)) | (np.isinf(x) & (x == y))
            d = np.abs(x - y)
            d[equal_special] = 0.0
            # the tolerance applies to finite pairs; a non-finite value equals only the same non-finite value
            # (Inf against a number is a mismatch whatever --rtol: rtol*|Inf| would swallow it)
            within = np.zeros(x.shape, dtype=bool)
            within[finite] = d[finite] <= atol + rtol * np.abs(y[finite])
            bad = ~within & ~equal_special  # NaN against a number is a mismatch
            mismatched += int(np.count_nonzero(bad))
            nan = np.isnan(d)  # NaN on one side only (NaN on both is equal_special, d = 0)
            nan_mismatched += int(np.count_nonzero(nan))
            if np.isinf(d).any():
                max_abs = math.inf  # a real infinite difference: Inf against a number, or Inf against -Inf
            d = d[np.isfinite(d)]
            if d.size:
                max_abs = max(max_abs, float(d.max()))
                diff_sq += float(np.dot(d, d))
        row.max_abs_diff = max_abs
        row.diff_sq = diff_sq
        if norms:
            row.ref_sq = ref_total
        row.rel_l2_change = 0.0
        if math.isinf(max_abs):
            row.rel_l2_change = math.inf  # ||a-b|| is infinite: so is the change relative to ||a||
        elif diff_sq > 0:
            ref_sq = 0.0
            for block in a.iter_chunks(path, max_elements):
                x = np.asarray(block, dtype=np.float64).ravel()
                x = x[np.isfinite(x)]
                ref_sq += float(np.dot(x, x))
            # undefined (None) when A is all zeros: a fresh bias after training is not an "inf" change
            row.rel_l2_change = math.sqrt(diff_sq) / math.sqrt(ref_sq) if ref_sq > 0 else None
    row.mismatched = mismatched
    row.nan_mismatched = nan_mismatched
    row.status = "changed" if mismatched else _same_or_dtype(wa.dtype, wb.dtype)
    return row


def _layer_mode(mf: ModelFile, path: str) -> str | None:
    layer = mf.weight(path).layer
    return next((item.quantization for item in getattr(mf, "layers", ()) if item.path == layer), None)


def _compare_dequantized(a: ModelFile, b: ModelFile, row: WeightDiff, atol: float, rtol: float) -> None:
    """Quantized the same way on both sides: the kernel's float values (what Keras computes with) decide."""
    if row.status == "shape" or _layer_mode(a, row.path) is None or _layer_mode(a, row.path) != _layer_mode(
            b, row.path):
        return
    from wtool.ops.inspect import dequantized

    x, y = dequantized(a, row.path), dequantized(b, row.path)
    if x is None or y is None or x.shape != y.shape:
        return
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    d = np.abs(x - y)
    row.dequantized = True
    row.max_abs_diff = float(d.max()) if d.size else 0.0
    row.mismatched = int(np.count_nonzero(d > atol + rtol * np.abs(y)))
    row.diff_sq = float(np.dot(d, d))
    ref = float(np.dot(x, x))
    row.rel_l2_change = math.sqrt(row.diff_sq) / math.sqrt(ref) if row.diff_sq and ref else (0.0 if not row.diff_sq
                                                                                             else None)
    row.status = "changed" if row.mismatched else "same"


def same_dtype(dtype_a: str | None, dtype_b: str | None) -> bool:
    """Equal stored types, byte order aside (>f4 and <f4 are both float32)."""
    return _dtype_key(dtype_a or "") == _dtype_key(dtype_b or "")


def _same_or_dtype(dtype_a: str, dtype_b: str) -> str:
    """Return "same", or "dtype" when the stored types differ (byte order aside: >f4 and <f4 are float32)."""
    return "same" if same_dtype(dtype_a, dtype_b) else "dtype"


def _dtype_key(dtype: str) -> object:
    try:
        d = np.dtype(dtype)
    except (TypeError, ValueError):
        return dtype
    return d.newbyteorder("=") if d.byteorder in "<>" else d


@dataclass
class LayerChange:
    """One layer of `diff --summary`: ||a-b|| / ||a|| over all its weights."""

    layer: str
    weights: int
    changed: int
    rel_change: float | None  # None: A's weights are all zero, or nothing comparable
    status: str  # same | changed | other (shape/dtype/only in one file)


def layer_changes(report: DiffReport) -> list[LayerChange]:
    """Per layer, from a report made with norms=True, in the order layers first appear."""
    groups: dict[str, list[WeightDiff]] = {}
    for w in report.weights:
        groups.setdefault(w.path.rsplit("/", 1)[0] if "/" in w.path else w.path, []).append(w)
    out = []
    for layer, rows in groups.items():
        other = any(w.status in ("shape", "only_a", "only_b") for w in rows)
        compared = [w for w in rows if w.status in ("same", "changed", "dtype")]
        diff_sq = sum(w.diff_sq for w in compared)
        ref_sq = sum(w.ref_sq or 0.0 for w in compared)
        inf = any(w.rel_l2_change == math.inf for w in compared)
        rel = math.inf if inf else (math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else (0.0 if diff_sq == 0 else None))
        changed = sum(1 for w in rows if w.status != "same")
        status = "other" if other else ("changed" if any(w.status == "changed" for w in rows) else "same")
        out.append(LayerChange(layer, len(rows), changed, rel if compared else None, status))
    return out
