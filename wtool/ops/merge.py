"""`wtool merge`: checkpoint averaging of same-architecture models, weight by weight, without TensorFlow.

Modes (one per run):

- mean (default): the uniform soup, sum(x_i) / n;
- weights w_1..w_n: sum(w_i x_i) / sum(w_i);
- slerp t (two models): spherical interpolation of each weight flattened, falling back to the
  linear one when the two are (nearly) parallel;
- task arithmetic over BASE: BASE + sum(s_i (x_i - BASE)), scales s_i (default 1 each);
- ema (one model): the moving averages a `use_ema=True` Keras optimizer keeps in its state,
  written over the trainable weights.

The output is a copy of the first model (its format, architecture and optimizer state),
with the merged weights written through `wtool.store.write`. A merged value is computed
only when the writer asks for it, one weight at a time. A float weight that every input
stores as plain bytes (what Keras writes) is streamed: read raw in small blocks, combined
in float32 (float64 for float64 weights) and written straight to OUT with its distances
summed in the same pass (`wtool.ops.merge_stream`, which states the precision). Any other
weight is computed whole in float64 through h5py (`merge_weight`). Either way the writer's
read-back check compares the written bytes with the CRC-32 and first and last rows the
value kept of itself (`store_write.WrittenSummary`), not computing it again. Integer and boolean weights
(step counters, quantized values) are merged only when identical in every input.
BatchNorm moving statistics are averaged like any other weight, or re-estimated on data
with `recompute_bn` (`wtool.ops.bn_stats`, which needs TensorFlow): the merge is staged in
a temporary folder beside OUT, the statistics are measured on the staged model, and OUT is
written once, atomically, with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.ops import merge_stream
from wtool.ops.merge_stream import linear_coefficients, slerp_coefficients
from wtool.ops.planning import check_output, glob_hits, open_checked, shape_text
from wtool.store import write as store_write
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, iter_blocks


@dataclass
class WeightMerge:
    path: str
    shape: tuple[int, ...]
    dtype: str
    status: str = "merged"  # merged | kept (not selected) | identical (integer, equal everywhere) | recomputed
    distances: list[float] = field(default_factory=list)  # |x_i - result| / |result| per input


@dataclass
class MergeReport:
    inputs: list[str]
    output: str
    mode: str
    coefficients: list[float]
    base: str | None = None
    weights: list[WeightMerge] = field(default_factory=list)
    optimizer: str = "none"
    notes: list[str] = field(default_factory=list)
    batch_norm: dict[str, Any] | None = None  # with --recompute-bn: data, rows, layers

    def to_json(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "output": self.output, "mode": self.mode, "base": self.base,
                "coefficients": self.coefficients,
                "weights": [{"path": w.path, "shape": list(w.shape), "dtype": w.dtype, "status": w.status,
                             "distances": w.distances} for w in self.weights],
                "counts": {s: sum(1 for w in self.weights if w.status == s)
                           for s in ("merged", "kept", "identical", "recomputed")},
                "optimizer": self.optimizer, "batch_norm": self.batch_norm, "notes": self.notes}


def merge_weight(files: Sequence[Any], base: Any, path: str, mode: str, coefficients: Sequence[float],
                 max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[np.ndarray, list[float]]:
    """One merged weight, block by block (float64 arithmetic per block, stored in the weight's dtype).

    Returns the result and |x_i - result| / |result| for each input.
    """
    info = files[0].weight(path)
    shape = tuple(info.shape)
    blocks = list(iter_blocks(shape, max_elements))
    if mode == "slerp":
        dot = sq_a = sq_b = 0.0
        for index in blocks:
            a = np.asarray(files[0].read_block(path, index), np.float64).ravel()
            b = np.asarray(files[1].read_block(path, index), np.float64).ravel()
            dot, sq_a, sq_b = dot + float(a @ b), sq_a + float(a @ a), sq_b + float(b @ b)
        ks, kb = slerp_coefficients(coefficients[0], dot, math.sqrt(sq_a), math.sqrt(sq_b)), 0.0
    else:
        ks, kb = linear_coefficients(mode, coefficients, len(files))
    out = np.empty(shape, dtype=np.dtype(info.dtype))
    dist_sq = [0.0] * len(files)
    ref_sq = 0.0
    for index in blocks:
        # In place, in the order sum() would add (bit-identical results), squared norms by einsum (one
        # pass, no temporary; BLAS dot would start threads that spin on a shared machine).
        xs = [np.array(f.read_block(path, index), np.float64) for f in files]
        acc = xs[0] * ks[0]
        for k, x in zip(ks[1:], xs[1:], strict=True):
            acc += k * x
        if kb:
            acc += kb * np.asarray(base.read_block(path, index), np.float64)
        stored = np.asarray(acc).astype(out.dtype)
        out[index] = stored  # type: ignore[index]
        r = stored.astype(np.float64).ravel()
        ref_sq += float(np.einsum("i,i->", r, r))
        for i, x in enumerate(xs):
            d = np.subtract(x.ravel(), r, out=x.ravel())
            dist_sq[i] += float(np.einsum("i,i->", d, d))
    norm = math.sqrt(ref_sq) or 1.0
    return out, [math.sqrt(d) / norm for d in dist_sq]


class LazyMerge:
    """A merged weight computed when the writer asks for it (and dropped after).

    With a `StreamedMerge` (the inputs' bytes are plainly stored), the writer calls
    `stream_to` and the weight goes block by block from the inputs to OUT; otherwise it
    converts the value to an array (`__array__`, `merge_weight`).
    """

    def __init__(self, shape: tuple[int, ...], compute: Any, record: WeightMerge,
                 streamed: Any = None) -> None:
        self.shape = shape
        self.dtype = np.dtype(record.dtype)
        self._compute = compute
        self._record = record
        self._streamed = streamed

    summary: Any = None  # store_write.WrittenSummary of what was handed out, for the read-back check

    @property
    def streams(self) -> bool:
        return self._streamed is not None

    def stream_to(self, fd: int, offset: int, pwrite: Any) -> None:
        """Write the merged bytes at `offset` of `fd` (the writer's `pwrite`), keeping the summary."""
        crc, first, last, distances = self._streamed.write_to(fd, offset, pwrite)
        self._record.distances = distances
        nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.summary = store_write.WrittenSummary(nbytes, crc, first, last)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        result, distances = self._compute()
        self._record.distances = distances
        out = np.asarray(result, dtype=dtype) if dtype is not None else result
        self.summary = store_write.WrittenSummary.of(out)
        return out


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected numbers separated by commas (not {text!r})") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option}: expected finite numbers (not {text!r})")
    return values


def _mode(n: int, mean: bool, weights: str | None, slerp_t: float | None, task_base: str | None,
          scales: str | None, ema: bool) -> tuple[str, list[float]]:
    chosen = [name for name, on in (("--mean", mean), ("--weights", weights is not None),
                                    ("--slerp", slerp_t is not None), ("--task-arithmetic", task_base is not None),
                                    ("--ema", ema)) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be used together; pick one way to merge")
    if scales is not None and task_base is None:
        raise UsageError("--scales goes with --task-arithmetic BASE")
    if ema:
        if n != 1:
            raise UsageError(f"--ema takes one model (not {n})", "wtool merge MODEL --ema -o OUT")
        return "ema", []
    if n < 1 or (n < 2 and task_base is None):
        raise UsageError("merge needs at least two models", "wtool merge A B [C ...] -o OUT")
    if weights is not None:
        coeffs = _parse_floats(weights, "--weights")
        if len(coeffs) != n:
            raise UsageError(f"--weights: {len(coeffs)} numbers for {n} models; give one per model")
        if sum(coeffs) == 0:
            raise UsageError("--weights: the numbers sum to 0")
        return "weights", coeffs
    if slerp_t is not None:
        if n != 2:
            raise UsageError(f"--slerp interpolates two models (not {n})")
        if not 0.0 <= slerp_t <= 1.0:
            raise UsageError(f"--slerp T must be between 0 and 1 (not {slerp_t:g})")
        return "slerp", [slerp_t]
    if task_base is not None:
        coeffs = _parse_floats(scales, "--scales") if scales is not None else [1.0] * n
        if len(coeffs) == 1 and n > 1:
            coeffs = coeffs * n
        if len(coeffs) != n:
            raise UsageError(f"--scales: {len(coeffs)} numbers for {n} models; give one, or one per model")
        return "task", coeffs
    return "mean", [1.0] * n


@dataclass(frozen=True)
class BnRecompute:
    """--recompute-bn --data DATA: where to measure the merged model's BatchNorm statistics."""

    data: str
    x_key: str | None = None
    batch_size: int = 128


def merge(models: Sequence[str], output: str | None, *, mean: bool = False, weights: str | None = None,
          slerp_t: float | None = None, task_base: str | None = None, scales: str | None = None,
          layers: Sequence[str] = (), ema: bool = False, reset_optimizer: bool = False,
          unsafe: bool = False, recompute_bn: BnRecompute | None = None) -> MergeReport:
    """Merge MODELS into OUT (a copy of the first model with the merged weights). Raises before writing."""
    mode, coeffs = _mode(len(models), mean, weights, slerp_t, task_base, scales, ema)
    inputs = list(models) + ([task_base] if task_base else [])
    out = check_output(output, False, inputs)
    if recompute_bn is not None:
        return _merge_recomputing_bn(models, out, recompute_bn, mode, coeffs, task_base, layers, reset_optimizer,
                                     unsafe)
    return _merge_to(models, out, mode, coeffs, task_base, layers, reset_optimizer, unsafe)


def _merge_to(models: Sequence[str], out: str, mode: str, coeffs: list[float], task_base: str | None,
              layers: Sequence[str], reset_optimizer: bool, unsafe: bool) -> MergeReport:
    if mode == "ema":
        return _merge_ema(models[0], out, reset_optimizer, unsafe)
    from contextlib import ExitStack

    with ExitStack() as stack:
        files = [stack.enter_context(open_checked(p)) for p in models]
        base = stack.enter_context(open_checked(task_base)) if task_base else None
        workspace = merge_stream.Workspace()
        stack.callback(workspace.close)
        images: dict[Any, Any] = {}
        first = files[0]
        _check_same(first, [*files[1:], *([base] if base is not None else [])], [*models[1:],
                                                                                  *([task_base] if task_base else [])])
        report = MergeReport([str(m) for m in models], out, mode, coeffs, base=task_base)
        writes = []
        for w in first.weights:
            record = WeightMerge(w.path, tuple(w.shape), w.dtype)
            report.weights.append(record)
            if layers and not any(glob_hits(g, w.path) for g in layers):
                record.status = "kept"
                continue
            if np.dtype(w.dtype).kind not in "fc":
                _check_identical(w.path, files, base, models)
                record.status = "identical"
                continue

            def compute(path: str = w.path) -> tuple[np.ndarray, list[float]]:
                return merge_weight(files, base, path, mode, coeffs)

            lazy = LazyMerge(tuple(w.shape), compute, record,
                             _streamed(files, base, w.path, tuple(w.shape), w.dtype, mode, coeffs, workspace,
                                       images))
            writes.append(store_write.WeightWrite(w.h5_name, value=lazy))  # type: ignore[arg-type]
        if layers and not any(r.status == "merged" for r in report.weights):
            raise IncompatibleError(f"--layers {', '.join(layers)}: selects no float weight to merge")
        from wtool.ops.rebuild import rebuild_with_keras

        result = store_write.write_weights(models[0], first.format, out, writes, reset_optimizer=reset_optimizer,
                                           rebuild=rebuild_with_keras(unsafe))
    report.optimizer = result.optimizer
    report.notes += result.notes
    if result.optimizer == "kept":
        report.notes.append(f"optimizer state of {models[0]} kept: its moments belong to that model "
                            "(use --reset-optimizer to drop it)")
    return report


def _streamed(files: Sequence[Any], base: Any, path: str, shape: tuple[int, ...], dtype: str, mode: str,
              coeffs: list[float], workspace: Any, images: dict[Any, Any]) -> Any:
    """A StreamedMerge when every input holds the weight as plain bytes, else None (the h5py path)."""
    if not merge_stream.StreamedMerge.supported(shape):
        return None
    found = [merge_stream.raw_weight(f, path, images) for f in files]
    raws = [r for r in found if r is not None]
    raw_base = merge_stream.raw_weight(base, path, images) if base is not None else None
    if len(raws) != len(found) or (base is not None and raw_base is None):
        return None
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if any(r.nbytes != nbytes for r in [*raws, *([raw_base] if raw_base is not None else [])]):
        return None
    return merge_stream.StreamedMerge(shape, np.dtype(dtype), raws, raw_base, mode, coeffs, workspace)


def _merge_recomputing_bn(models: Sequence[str], out: str, bn: BnRecompute, mode: str, coeffs: list[float],
                          task_base: str | None, layers: Sequence[str], reset_optimizer: bool,
                          unsafe: bool) -> MergeReport:
    """Merge into a staged copy, measure its BatchNorm statistics on the data, then write OUT once."""
    import shutil
    import tempfile
    from pathlib import Path

    from wtool.ops import bn_stats

    target = Path(out)
    directory = target.parent if str(target.parent) else Path(".")
    stage_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".merge", dir=directory))
    try:
        stage = stage_dir / target.name
        report = _merge_to(models, str(stage), mode, coeffs, task_base, layers, reset_optimizer, unsafe)
        estimate = bn_stats.estimate(stage, bn.data, x_key=bn.x_key, batch_size=bn.batch_size, unsafe=unsafe)
        with open_checked(stage) as staged:
            names = {w.path: w.h5_name for w in staged.weights}
            fmt = staged.format
        missing = sorted(set(estimate.values) - set(names))
        if missing:
            raise IncompatibleError(f"--recompute-bn: the staged model has no weight {missing[0]}")
        writes = [store_write.WeightWrite(names[path], value=value) for path, value in estimate.values.items()]
        store_write.write_weights(stage, fmt, out, writes)
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    report.output = out
    _record_recomputed(report, models, estimate)
    report.batch_norm = {"data": bn.data, "rows": estimate.rows, "batches": estimate.batches,
                         "layers": estimate.layers}
    n_layers, n_batches = len(estimate.layers), estimate.batches
    report.notes.append(f"BatchNorm moving statistics of {n_layers} layer{'s' * (n_layers != 1)} re-estimated on "
                        f"{estimate.rows} rows of {bn.data} ({n_batches} batch{'es' * (n_batches != 1)} "
                        f"of up to {bn.batch_size} rows)")
    return report


def _record_recomputed(report: MergeReport, models: Sequence[str], estimate: Any) -> None:
    """The moving statistics' report rows: status `recomputed`, distances of each input from the new values."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        files = [stack.enter_context(open_checked(p)) for p in models]
        for record in report.weights:
            new = estimate.values.get(record.path)
            if new is None:
                continue
            record.status = "recomputed"
            ref = np.asarray(new, np.float64)
            norm = float(np.linalg.norm(ref)) or 1.0
            record.distances = [float(np.linalg.norm(np.asarray(f.read(record.path), np.float64) - ref)) / norm
                                for f in files]


def _check_same(first: Any, others: Sequence[Any], names: Sequence[str]) -> None:
    """Same weight paths, shapes and dtypes in every input; all differences in one error."""
    want = {w.path: (tuple(w.shape), w.dtype) for w in first.weights}
    problems = []
    for mf, name in zip(others, names, strict=True):
        have = {w.path: (tuple(w.shape), w.dtype) for w in mf.weights}
        for path in want.keys() - have.keys():
            problems.append(f"{path}: not in {name}")
        for path in have.keys() - want.keys():
            problems.append(f"{path}: only in {name}")
        for path in want.keys() & have.keys():
            if want[path] != have[path]:
                problems.append(f"{path}: {shape_text(want[path][0])} {want[path][1]} in {first.path}, "
                                f"{shape_text(have[path][0])} {have[path][1]} in {name}")
    if problems:
        head = f"the models differ in architecture ({len(problems)} difference(s)); nothing written"
        raise IncompatibleError("\n".join([head, *(f"  - {p}" for p in sorted(problems)[:20])]),
                                "merge needs models of one architecture (`wtool diff A B` shows the differences)",
                                multiline=True)


def _check_identical(path: str, files: Sequence[Any], base: Any, names: Sequence[str]) -> None:
    ref = files[0].read(path)
    for f, name in zip([*files[1:], *([base] if base is not None else [])], [*names[1:], "BASE"], strict=False):
        if not np.array_equal(f.read(path), ref):
            raise IncompatibleError(f"{path}: an integer/boolean weight ({ref.dtype}) differs between "
                                    f"{names[0]} and {name}; it cannot be averaged",
                                    "--layers GLOB merges only the float weights you name")


# --------------------------------------------------------------------------- EMA


def _optimizer_config(mf: Any) -> dict[str, Any]:
    compile_config = mf.compile_config or {}
    opt = compile_config.get("optimizer") if isinstance(compile_config, dict) else None
    if opt is None and isinstance(mf.training_config, dict):
        opt = mf.training_config.get("optimizer_config")
    if isinstance(opt, dict):
        cfg = opt.get("config", opt)
        return cfg if isinstance(cfg, dict) else {}
    return {}


def _merge_ema(model: str, out: str, reset_optimizer: bool, unsafe: bool) -> MergeReport:
    """OUT = MODEL with each trainable weight replaced by the optimizer's moving average of it."""
    with open_checked(model) as mf:
        if not _optimizer_config(mf).get("use_ema"):
            raise IncompatibleError(f"{model}: its optimizer keeps no moving averages (use_ema is not set)",
                                    "train with an optimizer built with use_ema=True")
        group = mf.h5.get("optimizer/vars") if mf.h5 is not None else None
        if group is None:
            raise IncompatibleError(f"{model}: use_ema is set, but the file holds no optimizer state",
                                    "save the model with include_optimizer=True")
        from wtool.safety import guards

        names = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        slots = []
        for name in names:
            ds = group[name]
            guards.check_h5_dataset(ds, str(model))
            slots.append(ds)
        trainable = [w for w in mf.weights if w.trainable]
        shapes = [tuple(w.shape) for w in trainable]
        # Keras's order: scalars (iterations, learning rate), then one average per trainable variable.
        start = next((i for i, ds in enumerate(slots) if ds.shape != ()), None)
        if start is None or [tuple(ds.shape) for ds in slots[start:start + len(shapes)]] != shapes:
            raise IncompatibleError(f"{model}: the optimizer state does not hold one moving average per "
                                    f"trainable weight ({len(shapes)} expected)")
        report = MergeReport([str(model)], out, "ema", [float(_optimizer_config(mf).get("ema_momentum", 0.99))])
        writes = []
        for w, ds in zip(trainable, slots[start:start + len(shapes)], strict=True):
            record = WeightMerge(w.path, tuple(w.shape), w.dtype)
            value = np.asarray(ds[()])
            current = mf.read(w.path)
            norm = float(np.linalg.norm(value.astype(np.float64))) or 1.0
            record.distances = [float(np.linalg.norm(current.astype(np.float64) - value)) / norm]
            report.weights.append(record)
            writes.append(store_write.WeightWrite(w.h5_name, value=value))
        report.weights += [WeightMerge(w.path, tuple(w.shape), w.dtype, status="kept")
                           for w in mf.weights if not w.trainable]
        fmt = mf.format
    from wtool.ops.rebuild import rebuild_with_keras

    result = store_write.write_weights(model, fmt, out, writes, reset_optimizer=reset_optimizer,
                                       rebuild=rebuild_with_keras(unsafe))
    report.optimizer = result.optimizer
    report.notes += result.notes
    return report

