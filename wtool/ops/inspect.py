"""Look inside weight files: summary, per-weight statistics, samples, histograms, export.

Everything here returns dataclasses; rendering lives in the command modules. No TensorFlow:
values are read through the weight store, chunk by chunk where they could be large.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import InputError, UsageError
from wtool.fileio import atomic_output
from wtool.store import LayerInfo, ModelFile, WeightInfo, select
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, is_numeric
from wtool.store.quantized import dequantize, quantized_values_of

HISTOGRAM_BINS = 16


# ---- summary ------------------------------------------------------------------------------


@dataclass
class Summary:
    """What `wtool inspect MODEL` shows: the file, its layers, the selected weights and the totals."""

    file: str
    format: str
    layout: str
    keras_version: str | None
    backend: str | None
    file_size: int
    has_optimizer: bool
    optimizer_weights: int
    has_training_config: bool
    model_name: str | None
    model_class: str | None
    layers: list[LayerInfo]
    weights: list[WeightInfo]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    weight_bytes: int
    selected: bool = False
    warnings: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] | None = None  # [{"name", "shape", "dtype"}] from the config (wtool.store.shapes)
    outputs: list[dict[str, Any]] | None = None  # [{"name", "shape"}]; a shape is None when not known
    shards: list[str] = field(default_factory=list)  # a sharded weights map: its shard files, in order
    preset: dict[str, Any] | None = None  # a keras-hub preset directory: metadata.json's keras-hub fields
    preprocessing: list[dict[str, Any]] = field(default_factory=list)  # wtool.ops.preprocessing, per layer

    @property
    def selected_params(self) -> int:
        return sum(w.params for w in self.weights)

    def shown(self, layer: LayerInfo) -> tuple[list[str], int]:
        """A layer's weight paths and parameter count as shown: with --layer, its selected weights only."""
        if not self.selected:
            return list(layer.weights), layer.params
        params = {w.path: w.params for w in self.weights}
        paths = [p for p in layer.weights if p in params]
        return paths, sum(params[p] for p in paths)


def summarize(mf: ModelFile, layer_globs: list[str] | None = None) -> Summary:
    paths = select([w.path for w in mf.weights], layer_globs, option="--layer")
    chosen = set(paths)
    weights = [w for w in mf.weights if w.path in chosen]
    layers = mf.layers
    if layer_globs:
        owners = {w.layer for w in weights}
        layers = [layer for layer in mf.layers
                  if layer.path in owners or any(o.startswith(layer.path + "/") for o in owners)]
    return Summary(
        file=str(mf.path), format=mf.format, layout=mf.layout, keras_version=mf.keras_version,
        backend=mf.backend, file_size=mf.file_size, has_optimizer=mf.has_optimizer,
        optimizer_weights=mf.optimizer_weights, has_training_config=mf.has_training_config,
        model_name=mf.model_name, model_class=mf.model_class, layers=layers, weights=weights,
        total_params=mf.total_params, trainable_params=mf.trainable_params,
        non_trainable_params=mf.non_trainable_params, weight_bytes=mf.weight_bytes,
        selected=bool(layer_globs), warnings=list(mf.warnings), shards=list(getattr(mf, "shard_names", [])),
        preset=getattr(mf, "preset", None),
        preprocessing=_preprocessing(mf, {layer.path for layer in layers}), **_io(mf))


def _preprocessing(mf: ModelFile, shown: set[str]) -> list[dict[str, Any]]:
    from wtool.ops.preprocessing import layer_states

    return [s.as_dict() for s in layer_states(mf) if s.layer in shown]


def _io(mf: ModelFile) -> dict[str, Any]:
    from wtool.store.shapes import io_shapes

    shapes = io_shapes(mf.config)
    return {"inputs": shapes["inputs"], "outputs": shapes["outputs"]} if shapes else {}


# ---- statistics -----------------------------------------------------------------------------


@dataclass
class WeightStats:
    """min/max/mean/std/L2 over the finite values; zeros as a fraction of all values."""

    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    l2_norm: float
    zero_fraction: float
    nan_count: int
    inf_count: int


def weight_stats(mf: ModelFile, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> WeightStats | None:
    """Statistics computed block by block (Chan's parallel mean/variance), so memory stays flat."""
    info = mf.weight(path)
    if not is_numeric(np.dtype(info.dtype)):
        return None
    count = finite = zeros = nans = infs = 0
    mean = m2 = sumsq = 0.0
    lo, hi = math.inf, -math.inf
    for block in mf.iter_chunks(path, max_elements):
        a = np.asarray(block, dtype=np.float64).ravel()
        count += a.size
        zeros += a.size - int(np.count_nonzero(a))
        ok = np.isfinite(a)
        if not ok.all():
            nans += int(np.count_nonzero(np.isnan(a)))
            infs += int(np.count_nonzero(np.isinf(a)))
            a = a[ok]
        n = a.size
        if n == 0:
            continue
        b_sum = float(a.sum())
        b_sq = float(np.dot(a, a))
        b_mean = b_sum / n
        b_m2 = max(b_sq - b_sum * b_mean, 0.0)
        delta = b_mean - mean
        total = finite + n
        mean += delta * n / total
        m2 += b_m2 + delta * delta * finite * n / total
        finite = total
        sumsq += b_sq
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if finite == 0:
        return WeightStats(count, None, None, None, None, 0.0, zeros / count if count else 0.0, nans, infs)
    return WeightStats(count=count, min=lo, max=hi, mean=mean, std=math.sqrt(m2 / finite),
                       l2_norm=math.sqrt(sumsq), zero_fraction=zeros / count, nan_count=nans, inf_count=infs)


def stats_of(values: np.ndarray) -> WeightStats:
    """Statistics of an array already in memory (dequantized values), as weight_stats computes them."""
    a = np.asarray(values, dtype=np.float64).ravel()
    ok = np.isfinite(a)
    nans, infs = int(np.count_nonzero(np.isnan(a))), int(np.count_nonzero(np.isinf(a)))
    zeros = a.size - int(np.count_nonzero(a))
    f = a[ok]
    if f.size == 0:
        return WeightStats(a.size, None, None, None, None, 0.0, zeros / a.size if a.size else 0.0, nans, infs)
    return WeightStats(count=a.size, min=float(f.min()), max=float(f.max()), mean=float(f.mean()),
                       std=float(f.std()), l2_norm=float(np.sqrt(np.dot(f, f))), zero_fraction=zeros / a.size,
                       nan_count=nans, inf_count=infs)


def dequantized(mf: ModelFile, path: str) -> np.ndarray | None:
    """The float values Keras computes with, for the kernel (or table) of an int8/int4 layer; else None."""
    info = mf.weight(path)
    layer = next((item for item in getattr(mf, "layers", ()) if item.path == info.layer), None)
    if layer is None or not quantized_values_of(layer.class_name, layer.quantization, info.name):
        return None
    prefix = info.name.rsplit("/", 1)[0] + "/" if "/" in info.name else ""
    arrays = {w.name[len(prefix):]: mf.read(w.path) for w in mf.weights
              if w.layer == info.layer and w.name.startswith(prefix)}
    return dequantize(layer.class_name or "", layer.quantization or "", arrays)


@dataclass
class Histogram:
    edges: list[float]
    counts: list[int]


def weight_histogram(mf: ModelFile, path: str, stats: WeightStats | None, bins: int = HISTOGRAM_BINS,
                     max_elements: int = DEFAULT_MAX_ELEMENTS) -> Histogram | None:
    """Counts of the finite values in `bins` equal bins over [min, max], block by block."""
    if stats is None or stats.min is None or stats.max is None:
        return None
    lo, hi = stats.min, stats.max
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = np.zeros(bins, dtype=np.int64)
    edges = np.linspace(lo, hi, bins + 1)
    for block in mf.iter_chunks(path, max_elements):
        a = np.asarray(block, dtype=np.float64).ravel()
        if stats.nan_count or stats.inf_count:
            a = a[np.isfinite(a)]
        counts += np.histogram(a, bins=bins, range=(lo, hi))[0]  # equal bins: numpy's fast path
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def weight_sample(mf: ModelFile, path: str, n: int) -> np.ndarray:
    """The top-left n x n values, as `w[0:n, 0:n]` shows them (w[0:n] for vectors).

    Arrays with more than two axes are viewed as 2-D `(-1, last axis)` first, so a conv
    kernel (3, 3, 8, 16) shows its first n rows of (72, 16). Reads only those rows.
    """
    if n < 1:
        raise UsageError(f"--sample must be at least 1 (not {n})")
    info = mf.weight(path)
    shape = info.shape
    if len(shape) == 0:
        return np.asarray(mf.read_block(path, ()))
    if len(shape) <= 2:
        index = tuple(slice(0, n) for _ in shape)
        return mf.read_block(path, index)
    per_lead = math.prod(shape[1:-1])
    leading = max(1, min(shape[0], math.ceil(n / max(per_lead, 1))))
    block = mf.read_block(path, (slice(0, leading),))
    return block.reshape(-1, shape[-1])[:n, :n]


# ---- export -----------------------------------------------------------------------------------


NUMPY_LESS_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def npz_widened(mf: ModelFile, paths: list[str]) -> list[str]:
    """The weights an .npz export writes as float32: numpy has no bfloat16/float8, and float32 holds them exactly."""
    return [p for p in paths if mf.weight(p).dtype in NUMPY_LESS_DTYPES]


def npz_widened_note(mf: ModelFile, paths: list[str]) -> str | None:
    widened = npz_widened(mf, paths)
    if not widened:
        return None
    dtypes = sorted({mf.weight(p).dtype for p in widened})
    return (f"{len(widened)} {'/'.join(dtypes)} weight(s) written to the .npz as float32 (exact: numpy has no "
            f"{'/'.join(dtypes)}); a .safetensors export keeps the dtype")


def export_npz(mf: ModelFile, paths: list[str], out: str | os.PathLike[str],
               max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """Write the weights to OUT.npz (or OUT.safetensors) keyed by path, streaming each array (atomic).

    Returns the file size.
    """
    target = Path(out)
    if target.name.lower().endswith(".safetensors"):
        return export_safetensors(mf, paths, target)
    if target.suffix.lower() != ".npz":
        raise UsageError(f"--export {out}: the output must be a .npz or .safetensors file")
    widened = set(npz_widened(mf, paths))
    missing = [layer.path for layer in mf.layers if layer.missing]
    if missing:
        raise InputError(f"{mf.path}: cannot export: the weights of {len(missing)} layer(s) are missing from the "
                         f"file ({', '.join(missing[:5])})", "the file is incomplete: save or download it again")
    with atomic_output(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in paths:
            info = mf.weight(path)
            dtype = np.dtype("float32" if path in widened else info.dtype)
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": info.shape}
            with zf.open(path + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_2_0(fh, header)
                for block in mf.iter_chunks(path, max_elements):
                    fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
    return target.stat().st_size


def export_safetensors(mf: ModelFile, paths: list[str], out: str | os.PathLike[str]) -> int:
    """Write the weights to OUT.safetensors keyed by path, dtypes kept (bfloat16 too). Returns the file size.

    The safetensors package writes from arrays in memory: the selected weights are read whole.
    """
    from wtool.store.safetensors_file import write_safetensors

    missing = [layer.path for layer in mf.layers if layer.missing]
    if missing:
        raise InputError(f"{mf.path}: cannot export: the weights of {len(missing)} layer(s) are missing from the "
                         f"file ({', '.join(missing[:5])})", "the file is incomplete: save or download it again")
    meta = {"format": "wtool", "source_format": str(mf.format)}
    return write_safetensors(out, {path: mf.read(path) for path in paths}, meta)


# ---- identity ---------------------------------------------------------------------------------


def _canonical_dtype(dtype: str) -> np.dtype:
    d = np.dtype(dtype)
    return d.newbyteorder("<") if d.byteorder in "<>=" and d.itemsize > 1 else d


def weight_hash(mf: ModelFile, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> str:
    """sha256 of a weight's dtype, shape and little-endian C-order bytes: the same in every format."""
    import hashlib

    info = mf.weight(path)
    dtype = _canonical_dtype(info.dtype)
    h = hashlib.sha256(f"{dtype.name}{list(info.shape)}".encode())
    for block in mf.iter_chunks(path, max_elements):
        h.update(np.ascontiguousarray(block, dtype=dtype).tobytes())
    return h.hexdigest()


def model_hashes(mf: ModelFile, paths: list[str]) -> dict[str, Any]:
    """The structural fingerprint (paths, shapes, dtypes), one content hash per weight and one for all.

    Both model-level hashes go over the weights sorted by path, so a model saved as .keras,
    .h5, .weights.h5 or .safetensors hashes the same; architecture and optimizer state are
    not part of them.
    """
    import hashlib
    import json

    rows = sorted((path, list(mf.weight(path).shape), _canonical_dtype(mf.weight(path).dtype).name) for path in paths)
    per_weight = {path: weight_hash(mf, path) for path in paths}
    structure = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    content = hashlib.sha256(json.dumps([[*row, per_weight[row[0]]] for row in rows]).encode()).hexdigest()
    return {"algorithm": "sha256", "structure": structure, "content": content, "weights": per_weight}


def jsonable_stats(stats: WeightStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return dict(stats.__dict__)
