"""Weight surgery: `set-weights` and `transfer` as plan -> (render) -> apply.

A plan is plain data: what goes where, with shapes, dtypes, statistics and every
problem found. Nothing is written while planning, and all problems are collected
before any is reported, so one run shows the whole list. `apply_*` writes the plan
through `wtool.store.write` (HDF5 level, no TensorFlow), which reads the values back.

Weight paths are the store's canonical paths (`hidden/kernel`, `features/bn/gamma`),
the same in every format; globs are shell-style and a glob naming a layer covers the
weights under it (`features` selects `features/d1/kernel`).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.fileio import check_input_file
from wtool.store import write as store_write
from wtool.text import one_line

# --------------------------------------------------------------------------- small helpers


def glob_hits(pattern: str, path: str) -> bool:
    """A glob selects a path when it matches the path or one of its enclosing layers (store.matches)."""
    from wtool.store import matches

    return bool(matches(path, pattern))


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        leaf = name.rsplit("/", 1)[-1]
        found = [c for c in choices if c.rsplit("/", 1)[-1] == leaf][:n]
    return found


def dtype_problem(received: np.dtype, expected: np.dtype) -> str | None:
    """None when values of `received` may go into a weight of dtype `expected`.

    Allowed: the same dtype, any safe widening, float64 -> float32 and integers into
    floats. Refused: floats into integers, and any other narrowing.
    """
    received, expected = np.dtype(received), np.dtype(expected)
    if received == expected or np.can_cast(received, expected, "safe"):
        return None
    if received == np.float64 and expected == np.float32:
        return None
    if received.kind in "iub" and expected.kind == "f":
        return None
    if received.kind == "f" and expected.kind in "iu":
        return f"float values ({received}) cannot go into an integer weight ({expected})"
    return f"{received} does not fit {expected} without losing precision"


@dataclass
class Stats:
    """Summary of an array, computed in one streaming pass."""

    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    nonfinite: int = 0

    @classmethod
    def of(cls, chunks: Iterable[np.ndarray], step: int = 1 << 20) -> Stats:
        """Mean, std, min, max of the finite values (and how many are not), over chunks of any size.

        Works on pieces of `step` elements in their own dtype (no float64 copy of a big
        weight) and merges them with Chan et al.'s parallel variance formula.
        """
        n, mean, m2 = 0, 0.0, 0.0
        lo, hi = math.inf, -math.inf
        bad = 0
        for chunk in chunks:
            flat = np.asarray(chunk).reshape(-1)
            if flat.dtype.kind not in "biuf":
                continue
            for start in range(0, flat.size, step):
                part = flat[start : start + step]
                if part.dtype.kind == "f":
                    finite = np.isfinite(part)
                    if not finite.all():
                        bad += int(part.size - finite.sum())
                        part = part[finite]
                    if part.dtype.itemsize < 4:
                        part = part.astype(np.float32)
                else:
                    part = part.astype(np.float64)
                k = part.size
                if k == 0:
                    continue
                mu = float(part.sum(dtype=np.float64)) / k
                dev = part - part.dtype.type(mu)
                m2_part = float(np.dot(dev, dev))
                lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
                total = n + k
                delta = mu - mean
                mean += delta * k / total
                m2 += m2_part + delta * delta * n * k / total
                n = total
        if n == 0:
            return cls(nonfinite=bad)
        return cls(mean=mean, std=math.sqrt(max(0.0, m2 / n)), min=lo, max=hi, nonfinite=bad)


def _model_chunks(model: Any, path: str) -> Iterator[np.ndarray]:
    iter_chunks = getattr(model, "iter_chunks", None)
    if iter_chunks is not None:
        for item in iter_chunks(path):
            yield item[1] if isinstance(item, tuple) else item
    else:  # pragma: no cover - older store
        yield model.read(path)


@dataclass
class Problem:
    """One reason the plan cannot be applied as asked."""

    kind: str  # unknown_path | shape | dtype | nonfinite | duplicate | count | map | empty
    path: str
    message: str
    closest: list[str] = field(default_factory=list)


def problems_error(problems: Sequence[Problem], what: str, hint: str | None = None) -> IncompatibleError:
    """One error for all problems: the first line sums up, one line per problem follows."""
    if len(problems) == 1:
        return IncompatibleError(f"{problems[0].message}; {what}", hint)
    lines = [f"{len(problems)} problems; {what}:"] + [f"  - {one_line(p.message)}" for p in problems]
    return IncompatibleError("\n".join(lines), hint, multiline=True)


def _open(path: str | os.PathLike[str]) -> Any:
    from wtool.store import open_model

    check_input_file(path)
    return open_model(path)


def _check_output(out: str | None, in_place: bool, inputs: Sequence[str]) -> str:
    if in_place:
        if out is not None:
            raise UsageError("--in-place and -o/--output cannot be used together")
        return inputs[0]
    if out is None:
        raise UsageError("no output file given", "pass -o OUT, or --in-place to replace the input")
    for inp in inputs:
        try:
            same = os.path.exists(out) and os.path.samefile(out, inp)
        except OSError:
            same = False
        if same:
            raise UsageError(f"{out}: is an input file; inputs are never changed",
                             "write to another file with -o, or pass --in-place")
    store_write.format_of_name(out)
    return out


# --------------------------------------------------------------------------- initializers
# Keras's formulas (keras/src/initializers), computed with numpy: the same distributions,
# not the same random stream as Keras.

TRUNC_STD = 0.87962566103423978  # stddev of a unit normal truncated at +-2


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Keras's compute_fans: dense kernels (in, out); conv kernels (*spatial, in, out)."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype: np.dtype) -> np.ndarray:
    out = rng.standard_normal(shape, dtype=np.float32)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        bad = np.abs(out) > 2.0
    out *= np.float32(std)
    return out.astype(dtype, copy=False)


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., np.ndarray]:
    def init(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out}.get(mode, (fan_in + fan_out) / 2.0)
        s = scale / max(1.0, n)
        if distribution == "truncated_normal":
            return _truncated_normal(rng, shape, math.sqrt(s) / TRUNC_STD, dtype)
        if distribution == "untruncated_normal":
            return (rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(s))).astype(dtype)
        limit = math.sqrt(3.0 * s)
        return rng.uniform(-limit, limit, shape).astype(dtype)

    return init


class InitShapeError(ValueError):
    """An initializer that cannot fill a weight of this shape (reported as a plan problem, exit 4)."""


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if len(shape) < 2:
        raise InitShapeError(f"orthogonal needs a weight of rank 2 or more, not shape {_shape(shape)}")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape).astype(dtype)


def _identity(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if len(shape) != 2:
        raise InitShapeError(f"identity needs a 2-D weight, not shape {_shape(shape)}")
    return np.eye(*shape, dtype=dtype)


INITIALIZERS: dict[str, Callable[[np.random.Generator, tuple[int, ...], np.dtype], np.ndarray]] = {
    "zeros": lambda rng, shape, dtype: np.zeros(shape, dtype),
    "ones": lambda rng, shape, dtype: np.ones(shape, dtype),
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "variance_scaling": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "random_normal": lambda rng, shape, dtype: (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(dtype),
    "random_uniform": lambda rng, shape, dtype: rng.uniform(-0.05, 0.05, shape).astype(dtype),
    "truncated_normal": lambda rng, shape, dtype: _truncated_normal(rng, shape, 0.05, dtype),
    "orthogonal": _orthogonal,
    "identity": _identity,
}
ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal", "zero": "zeros", "one": "ones",
           "normal": "random_normal", "uniform": "random_uniform"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def parse_initializer(spec: str) -> tuple[str, Callable[[np.random.Generator, tuple[int, ...], np.dtype], np.ndarray]]:
    """`zeros`, `constant:0.5`, `glorot_uniform` (also Keras class names such as `GlorotUniform`)."""
    text = spec.strip()
    if text.lower().startswith("constant"):
        _, _, raw = text.partition(":")
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"--init: constant needs a value, as in constant:0.5 (not {spec!r})") from None
        return f"constant:{raw}", lambda rng, shape, dtype: np.full(shape, value, dtype)
    name = _snake(text)
    name = ALIASES.get(name, name)
    if name not in INITIALIZERS:
        raise UsageError(f"--init: unknown initializer {spec!r}",
                         "use one of: " + ", ".join([*INITIALIZERS, "constant:V"]))
    return name, INITIALIZERS[name]


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """`LEFT=RIGHT` for --weight, --init and --map."""
    left, sep, right = text.partition("=")
    if not sep or not left.strip() or not right.strip():
        raise UsageError(f"{option}: expected LEFT=RIGHT (not {text!r})")
    return left.strip(), right.strip()


# --------------------------------------------------------------------------- set-weights


@dataclass
class Assignment:
    """One weight to assign: where the values come from, and the statistics before and after."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    source: str
    received_shape: tuple[int, ...] | None = None
    received_dtype: str | None = None
    old: Stats | None = None
    new: Stats | None = None
    h5_name: str = field(default="", repr=False)
    value: np.ndarray | None = field(default=None, repr=False)
    from_weight: store_write.WeightSource | None = field(default=None, repr=False)


@dataclass
class SetWeightsPlan:
    model: str
    format: str
    output: str | None
    assignments: list[Assignment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    total_weights: int = 0
    has_optimizer: bool = False
    reset_optimizer: bool = False
    dry_run: bool = False
    result: store_write.WriteResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        optimizer = "none"
        if self.has_optimizer:
            optimizer = "dropped" if self.reset_optimizer else "kept"
        if self.result is not None:
            optimizer = self.result.optimizer
        return {
            "model": self.model,
            "format": self.format,
            "output": None if self.dry_run else self.output,
            "dry_run": self.dry_run,
            "ok": not self.problems,
            "assigned": [
                {"path": a.path, "shape": list(a.shape), "dtype": a.dtype, "source": a.source,
                 "old": asdict(a.old) if a.old else None, "new": asdict(a.new) if a.new else None}
                for a in self.assignments
            ],
            "problems": [asdict(p) for p in self.problems],
            "counts": {"assigned": len(self.assignments), "kept": self.total_weights - len(self.assignments),
                       "total": self.total_weights, "problems": len(self.problems)},
            "optimizer": optimizer,
            "verified": bool(self.result and self.result.verified == len(self.assignments)),
            "method": self.result.method if self.result else None,
            "notes": self.notes + (self.result.notes if self.result else []),
        }


def _load_npz(path: str) -> dict[str, np.ndarray]:
    from wtool.store.arrays import load_npz

    check_input_file(path)
    return load_npz(path)


def _load_npy(path: str) -> np.ndarray:
    from wtool.store.arrays import load_npy

    check_input_file(path)
    return load_npy(path)


def _normalize_key(key: str) -> str:
    key = key.strip("/")
    return key[:-2] if key.endswith(":0") else key


def plan_set_weights(
    model_path: str,
    *,
    output: str | None,
    npz: Sequence[str] = (),
    weights: Sequence[str] = (),
    from_model: str | None = None,
    from_layers: Sequence[str] = (),
    inits: Sequence[str] = (),
    seed: int | None = None,
    allow_nonfinite: bool = False,
    reset_optimizer: bool = False,
    in_place: bool = False,
    dry_run: bool = False,
) -> SetWeightsPlan:
    """Gather every assignment, check them all, and return the plan (nothing written)."""
    if not (npz or weights or from_model or inits):
        raise UsageError("nothing to assign", "give at least one of --npz, --weight, --from-model, --init")
    if from_layers and not from_model:
        raise UsageError("--layer selects weights of --from-model; give --from-model SRC")
    out = None if dry_run and output is None and not in_place else _check_output(output, in_place, [model_path])
    parsed_weights = [parse_assignment(w, "--weight") for w in weights]
    parsed_inits = [(glob, *parse_initializer(spec)) for glob, spec in (parse_assignment(i, "--init") for i in inits)]

    with _open(model_path) as model:
        by_path = {w.path: w for w in model.weights}
        plan = SetWeightsPlan(model=str(model_path), format=model.format, output=out,
                              total_weights=len(model.weights), has_optimizer=bool(model.has_optimizer),
                              reset_optimizer=reset_optimizer, dry_run=dry_run)
        claimed: dict[str, str] = {}
        rng = np.random.default_rng(seed)

        def unknown(path: str, source: str) -> None:
            near = closest(path, by_path)
            hint = f" (closest: {', '.join(near)})" if near else ""
            plan.problems.append(Problem("unknown_path", path, f"{path}: no such weight in {model_path}{hint} "
                                         f"[from {source}]", near))

        def claim(path: str, source: str) -> bool:
            if path in claimed:
                plan.problems.append(Problem("duplicate", path, f"{path}: assigned twice ({claimed[path]} "
                                             f"and {source})"))
                return False
            claimed[path] = source
            return True

        def add_value(path: str, value: np.ndarray, source: str) -> None:
            path = _normalize_key(path)
            info = by_path.get(path)
            if info is None:
                unknown(path, source)
                return
            if not claim(path, source):
                return
            plan.assignments.append(Assignment(path, tuple(info.shape), info.dtype, source,
                                               tuple(value.shape), str(value.dtype), h5_name=info.h5_name,
                                               value=value))

        for npz_path in npz:
            for key, value in _load_npz(npz_path).items():
                add_value(key, value, f"{npz_path}[{key}]")
        for path, npy in parsed_weights:
            add_value(path, _load_npy(npy), npy)
        if from_model:
            _add_from_model(plan, from_model, from_layers, by_path, unknown, claim)
        for glob, name, init in parsed_inits:
            hits = [w for w in model.weights if glob_hits(glob, w.path)]
            if not hits:
                unknown(glob, f"--init {glob}={name}")
                continue
            for info in hits:
                if not claim(info.path, f"init {name}"):
                    continue
                try:
                    value = init(rng, tuple(info.shape), np.dtype(info.dtype))
                except InitShapeError as exc:
                    plan.problems.append(Problem("shape", info.path, f"{info.path}: {exc} "
                                                 f"[from --init {glob}={name}]"))
                    continue
                plan.assignments.append(Assignment(info.path, tuple(info.shape), info.dtype, f"init {name}",
                                                   tuple(value.shape), str(value.dtype),
                                                   h5_name=info.h5_name, value=value))

        _check_assignments(plan, allow_nonfinite)
        order = {w.path: i for i, w in enumerate(model.weights)}
        plan.assignments.sort(key=lambda a: order.get(a.path, 0))
        for a in plan.assignments:
            a.old = Stats.of(_model_chunks(model, a.path))
    if plan.has_optimizer and not reset_optimizer and plan.assignments:
        plan.notes.append("optimizer state kept: its saved moments belong to the old values "
                          "(use --reset-optimizer to drop it)")
    return plan


def _add_from_model(plan: SetWeightsPlan, src_path: str, layers: Sequence[str], by_path: dict[str, Any],
                    unknown: Callable[[str, str], None], claim: Callable[[str, str], bool]) -> None:
    with _open(src_path) as src:
        chosen = [w for w in src.weights if not layers or any(glob_hits(g, w.path) for g in layers)]
        for glob in layers:
            if not any(glob_hits(glob, w.path) for w in src.weights):
                near = closest(glob, [w.path for w in src.weights])
                plan.problems.append(Problem("unknown_path", glob, f"--layer {glob}: matches no weight in {src_path}"
                                             + (f" (closest: {', '.join(near)})" if near else ""), near))
        for w in chosen:
            info = by_path.get(w.path)
            source = f"{src_path}[{w.path}]"
            if info is None:
                unknown(w.path, source)
                continue
            if not claim(w.path, source):
                continue
            a = Assignment(w.path, tuple(info.shape), info.dtype, source, tuple(w.shape), w.dtype,
                           h5_name=info.h5_name,
                           from_weight=store_write.WeightSource(Path(src_path), src.format, w.h5_name))
            if tuple(w.shape) == tuple(info.shape):
                a.new = Stats.of(_model_chunks(src, w.path))
            plan.assignments.append(a)


def _check_assignments(plan: SetWeightsPlan, allow_nonfinite: bool) -> None:
    for a in plan.assignments:
        if a.received_shape != a.shape:
            plan.problems.append(Problem("shape", a.path, f"{a.path}: expected shape {_shape(a.shape)}, "
                                         f"received {_shape(a.received_shape)} from {a.source}"))
            continue
        why = dtype_problem(np.dtype(a.received_dtype), np.dtype(a.dtype))
        if why:
            plan.problems.append(Problem("dtype", a.path, f"{a.path}: {why} from {a.source}"))
            continue
        if a.value is not None:
            a.new = Stats.of([a.value])
        if a.new is not None and a.new.nonfinite and not allow_nonfinite:
            plan.problems.append(Problem("nonfinite", a.path, f"{a.path}: {a.new.nonfinite} NaN/Inf value(s) "
                                         f"in {a.source}"))
    if any(p.kind == "nonfinite" for p in plan.problems):
        plan.notes.append("pass --allow-nonfinite to write NaN/Inf values on purpose")


def _shape(shape: Sequence[int] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def apply_set_weights(plan: SetWeightsPlan) -> SetWeightsPlan:
    """Write the plan (it must have no problems). Raises before writing anything otherwise."""
    if plan.problems:
        hint = "pass --allow-nonfinite to write NaN/Inf on purpose" if all(
            p.kind == "nonfinite" for p in plan.problems) else None
        raise problems_error(plan.problems, "nothing written", hint)
    if plan.dry_run:
        return plan
    assert plan.output is not None
    writes = [store_write.WeightWrite(a.h5_name, value=a.value, source=a.from_weight) for a in plan.assignments]
    plan.result = store_write.write_weights(plan.model, plan.format, plan.output, writes,
                                            reset_optimizer=plan.reset_optimizer, rebuild=rebuild_with_keras())
    return plan


# --------------------------------------------------------------------------- transfer

# Keras 1 and tf.keras variable names -> Keras 3 names, to pair weights inside a layer.
LEGACY_VAR_NAMES = {"W": "kernel", "b": "bias", "U": "recurrent_kernel", "running_mean": "moving_mean",
                    "running_std": "moving_variance", "W_i": "kernel_i", "depthwise_W": "depthwise_kernel",
                    "pointwise_W": "pointwise_kernel"}


def normalize_var(layer_path: str, name: str) -> str:
    """The variable part of a weight name, cleaned of `:0`, layer prefixes and Keras 1 names."""
    v = name.split(":")[0].rsplit("/", 1)[-1]
    layer = layer_path.rsplit("/", 1)[-1]
    if v.startswith(layer + "_"):
        v = v[len(layer) + 1 :]
    return LEGACY_VAR_NAMES.get(v, v)


@dataclass
class Pair:
    """A source weight and the target weight it goes into."""

    source: str | None
    target: str | None
    source_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    status: str = "transferred"   # transferred | skipped
    reason: str | None = None     # shape | dtype | count
    detail: str | None = None
    target_layer: str = field(default="", repr=False)
    source_h5: str = field(default="", repr=False)
    target_h5: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"source": self.source, "target": self.target}
        if self.status == "transferred":
            doc["shape"] = list(self.target_shape or ())
        else:
            doc.update(reason=self.reason, source_shape=None if self.source_shape is None else list(self.source_shape),
                       target_shape=None if self.target_shape is None else list(self.target_shape),
                       detail=self.detail)
        return doc


@dataclass
class TransferPlan:
    source: str
    target: str
    output: str | None
    by: str
    source_format: str = ""
    target_format: str = ""
    transferred: list[Pair] = field(default_factory=list)
    skipped: list[Pair] = field(default_factory=list)
    missing_in_source: list[str] = field(default_factory=list)
    unused_from_source: list[str] = field(default_factory=list)
    layer_pairs: list[tuple[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)
    skip_mismatch: bool = False
    allow_empty: bool = False
    dry_run: bool = False
    has_optimizer: bool = False
    reset_optimizer: bool = False
    unsafe: bool = False
    result: store_write.WriteResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        """True once OUT holds the transferred weights (not for --dry-run or a refused transfer)."""
        return self.result is not None and not self.problems and not self.dry_run

    def counts(self) -> dict[str, int]:
        """`matched` pairs fit; `transferred` is how many were written (0 when nothing was);
        `skipped` were left out by --skip-mismatch, `mismatched` refused the transfer (strict)."""
        mismatches = len(self.skipped)
        return {"matched": len(self.transferred), "transferred": len(self.transferred) if self.written else 0,
                "skipped": mismatches if self.skip_mismatch else 0,
                "mismatched": 0 if self.skip_mismatch else mismatches,
                "missing_in_source": len(self.missing_in_source),
                "unused_from_source": len(self.unused_from_source)}

    def to_json(self) -> dict[str, Any]:
        optimizer = ("dropped" if self.reset_optimizer else "kept") if self.has_optimizer else "none"
        if self.result is not None:
            optimizer = self.result.optimizer
        return {
            "source": self.source, "target": self.target,
            "output": None if self.dry_run else self.output,
            "dry_run": self.dry_run, "by": self.by, "ok": not self.problems, "written": self.written,
            "matched": [p.to_json() for p in self.transferred],
            "transferred": [p.to_json() for p in self.transferred] if self.written else [],
            "skipped": [p.to_json() for p in self.skipped] if self.skip_mismatch else [],
            "mismatched": [] if self.skip_mismatch else [p.to_json() for p in self.skipped],
            "missing_in_source": self.missing_in_source,
            "unused_from_source": self.unused_from_source,
            "counts": self.counts(),
            "frozen": (self.result.frozen if self.result else self.freeze),
            "problems": [asdict(p) for p in self.problems],
            "optimizer": optimizer,
            "verified": bool(self.result and self.result.verified == len(self.transferred)),
            "method": self.result.method if self.result else None,
            "notes": self.notes + (self.result.notes if self.result else []),
        }


def _layer_order(weights: Sequence[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for w in weights:
        seen.setdefault(w.layer, None)
    return list(seen)


def _glob_regex(glob: str) -> tuple[re.Pattern[str], int]:
    """A glob as a regex whose `*` and `?` capture, and the number of captures."""
    out, n, i = [], 0, 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("(.*)")
            n += 1
        elif c == "?":
            out.append("(.)")
            n += 1
        elif c == "[":
            j = glob.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(fnmatch.translate(glob[i : j + 1])[4:-3])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z"), n


def _fill_wildcards(glob: str, values: Sequence[str]) -> str:
    it = iter(values)
    return re.sub(r"[*?]", lambda _m: next(it), glob)


def _map_layers(rules: Sequence[tuple[str, str]], src_layers: Sequence[str], dst_layers: Sequence[str],
                problems: list[Problem]) -> list[tuple[str, str]]:
    """Explicit `--map SRC_GLOB=DST_GLOB` pairs: each wildcard of SRC fills the same wildcard of DST."""
    pairs: list[tuple[str, str]] = []
    dst_set = set(dst_layers)
    for src_glob, dst_glob in rules:
        regex, n_src = _glob_regex(src_glob)
        n_dst = dst_glob.count("*") + dst_glob.count("?")
        if n_dst and n_dst != n_src:
            raise UsageError(f"--map {src_glob}={dst_glob}: the target side has {n_dst} wildcard(s), "
                             f"the source side {n_src}", "use the same wildcards on both sides, or none on the "
                             "target side")
        matched = False
        for layer in src_layers:
            m = regex.match(layer)
            if not m:
                continue
            matched = True
            if n_dst:
                dst = _fill_wildcards(dst_glob, m.groups())
            else:
                dst = dst_glob
            if dst not in dst_set:
                near = closest(dst, dst_layers)
                problems.append(Problem("map", dst, f"--map {src_glob}={dst_glob}: {layer} -> {dst}, but the target "
                                        "has no layer " + dst + (f" (closest: {', '.join(near)})" if near else ""),
                                        near))
                continue
            pairs.append((layer, dst))
        if not matched:
            near = closest(src_glob, src_layers)
            problems.append(Problem("map", src_glob, f"--map {src_glob}={dst_glob}: no source layer matches "
                                    f"{src_glob}" + (f" (closest: {', '.join(near)})" if near else ""), near))
    return pairs


def plan_transfer(
    source_path: str,
    target_path: str,
    *,
    output: str | None,
    by: str = "name",
    maps: Sequence[str] = (),
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_mismatch: bool = False,
    allow_empty: bool = False,
    freeze: bool = False,
    reset_optimizer: bool = False,
    dry_run: bool = False,
    unsafe: bool = False,
) -> TransferPlan:
    """Match SOURCE's weights to TARGET's, check every pair, and return the plan (nothing written)."""
    if by not in ("name", "order"):
        raise UsageError(f"--by must be name or order (not {by!r})")
    out = None if dry_run and output is None else _check_output(output, False, [source_path, target_path])
    rules = [parse_assignment(m, "--map") for m in maps]
    if freeze and out is not None and not store_write.has_config(store_write.format_of_name(out)):
        raise UsageError(f"{out}: a .weights.h5 file has no config to record frozen layers in",
                         "write a .keras or .h5 file, or drop --freeze")

    with _open(source_path) as src, _open(target_path) as dst:
        plan = TransferPlan(str(source_path), str(target_path), out, by, src.format, dst.format,
                            skip_mismatch=skip_mismatch, allow_empty=allow_empty, dry_run=dry_run,
                            has_optimizer=bool(dst.has_optimizer), reset_optimizer=reset_optimizer,
                            unsafe=unsafe)
        if freeze and not store_write.has_config(dst.format):
            raise UsageError(f"{target_path}: a weights-only file has no config to record frozen layers in",
                             "transfer into a .keras or .h5 model, or drop --freeze")
        src_by_layer: dict[str, list[Any]] = {}
        for w in src.weights:
            src_by_layer.setdefault(w.layer, []).append(w)
        dst_by_layer: dict[str, list[Any]] = {}
        for w in dst.weights:
            dst_by_layer.setdefault(w.layer, []).append(w)
        src_layers, dst_layers = _layer_order(src.weights), _layer_order(dst.weights)

        layer_pairs = _map_layers(rules, src_layers, dst_layers, plan.problems)
        used_src = {s for s, _ in layer_pairs}
        used_dst = {d for _, d in layer_pairs}
        rest_src = [s for s in src_layers if s not in used_src]
        rest_dst = [d for d in dst_layers if d not in used_dst]
        if by == "name":
            dst_rest_set = set(rest_dst)
            layer_pairs += [(s, s) for s in rest_src if s in dst_rest_set]
        else:
            layer_pairs += list(zip(rest_src, rest_dst, strict=False))
        seen_dst: dict[str, str] = {}
        for s, d in layer_pairs:
            if d in seen_dst and seen_dst[d] != s:
                plan.problems.append(Problem("map", d, f"{d}: receives from both {seen_dst[d]} and {s}"))
            seen_dst[d] = s

        def selected(*paths: str | None) -> bool:
            named = [p for p in paths if p]
            if layers and not any(glob_hits(g, p) for g in layers for p in named):
                return False
            return not any(glob_hits(g, p) for g in exclude for p in named)

        paired_src: set[str] = set()
        paired_dst: set[str] = set()
        for s_layer, d_layer in layer_pairs:
            plan.layer_pairs.append((s_layer, d_layer))
            paired_src.update(w.path for w in src_by_layer[s_layer])
            paired_dst.update(w.path for w in dst_by_layer[d_layer])
            for pair in _pair_weights(src_by_layer[s_layer], dst_by_layer[d_layer], s_layer, d_layer):
                if not selected(pair.source, pair.target):
                    continue
                if pair.source is None:
                    plan.missing_in_source.append(pair.target or "")
                elif pair.target is None:
                    plan.unused_from_source.append(pair.source)
                elif pair.status == "transferred":
                    plan.transferred.append(pair)
                else:
                    plan.skipped.append(pair)
        plan.missing_in_source += [w.path for w in dst.weights if w.path not in paired_dst and selected(w.path)]
        plan.unused_from_source += [w.path for w in src.weights if w.path not in paired_src and selected(w.path)]
        src_order = {w.path: i for i, w in enumerate(src.weights)}
        dst_order = {w.path: i for i, w in enumerate(dst.weights)}
        plan.missing_in_source.sort(key=lambda p: dst_order.get(p, 0))
        plan.unused_from_source.sort(key=lambda p: src_order.get(p, 0))

        if plan.skipped and not skip_mismatch:
            for p in plan.skipped:
                plan.problems.append(Problem(p.reason or "shape", p.target or "", _skip_message(p)))
        if not plan.transferred and not allow_empty and not plan.problems:
            plan.problems.append(Problem("empty", "", _empty_message(plan, src_layers, dst_layers)))
        if freeze:
            plan.freeze = list(dict.fromkeys(p.target_layer for p in plan.transferred))
        if plan.has_optimizer and not reset_optimizer and plan.transferred:
            plan.notes.append("optimizer state of TARGET kept: its saved moments belong to the old values "
                              "(use --reset-optimizer to drop it)")
    return plan


def _pair_weights(src_ws: Sequence[Any], dst_ws: Sequence[Any], s_layer: str, d_layer: str) -> list[Pair]:
    """Pair the weights of two matched layers: by variable name when the names agree, else by order."""
    s_names = [normalize_var(s_layer, w.name) for w in src_ws]
    d_names = [normalize_var(d_layer, w.name) for w in dst_ws]
    unique = len(set(s_names)) == len(s_names) and len(set(d_names)) == len(d_names)
    if len(src_ws) == len(dst_ws):
        if unique and set(s_names) == set(d_names):
            return _pair_named(src_ws, dst_ws, s_names, d_names)
        return [_check_pair(s, d, d_layer) for s, d in zip(src_ws, dst_ws, strict=True)]
    if unique and set(s_names) & set(d_names):
        # e.g. a kernel-only layer into one with a bias: pair the kernels, report the rest.
        return _pair_named(src_ws, dst_ws, s_names, d_names)
    detail = (f"{s_layer} has {len(src_ws)} weights {_shapes(src_ws)}, "
              f"{d_layer} has {len(dst_ws)} {_shapes(dst_ws)}")
    return [Pair(s_layer, d_layer, None, None, "skipped", "count", detail, d_layer)]


def _shapes(ws: Sequence[Any]) -> str:
    return "[" + ", ".join(_shape(w.shape) for w in ws) + "]"


def _pair_named(src_ws: Sequence[Any], dst_ws: Sequence[Any], s_names: list[str], d_names: list[str]) -> list[Pair]:
    src_named = dict(zip(s_names, src_ws, strict=True))
    pairs = []
    for name, d in zip(d_names, dst_ws, strict=True):
        s = src_named.pop(name, None)
        if s is None:
            pairs.append(Pair(None, d.path, None, tuple(d.shape), target_layer=d.layer, target_h5=d.h5_name))
        else:
            pairs.append(_check_pair(s, d, d.layer))
    for s in src_named.values():
        pairs.append(Pair(s.path, None, tuple(s.shape), None, source_h5=s.h5_name))
    return pairs


def _check_pair(s: Any, d: Any, d_layer: str) -> Pair:
    pair = Pair(s.path, d.path, tuple(s.shape), tuple(d.shape), target_layer=d_layer, source_h5=s.h5_name,
                target_h5=d.h5_name)
    if tuple(s.shape) != tuple(d.shape):
        pair.status, pair.reason = "skipped", "shape"
    else:
        why = dtype_problem(np.dtype(s.dtype), np.dtype(d.dtype))
        if why:
            pair.status, pair.reason, pair.detail = "skipped", "dtype", why
    return pair


def _skip_message(p: Pair) -> str:
    if p.reason == "shape":
        return (f"{p.source} -> {p.target}: source shape {_shape(p.source_shape)}, "
                f"target shape {_shape(p.target_shape)}")
    if p.reason == "dtype":
        return f"{p.source} -> {p.target}: {p.detail}"
    return f"{p.source} -> {p.target}: {p.detail}"


def _empty_message(plan: TransferPlan, src_layers: Sequence[str], dst_layers: Sequence[str]) -> str:
    if not plan.layer_pairs:
        what = (f"no layer names in common (source: {', '.join(src_layers[:4])}"
                f"{', ...' if len(src_layers) > 4 else ''}; target: {', '.join(dst_layers[:4])}"
                f"{', ...' if len(dst_layers) > 4 else ''})") if plan.by == "name" else "no weight-bearing layers"
    else:
        what = "every matched weight was filtered out or skipped"
    return f"nothing to transfer: {what}"


def transfer_hint(plan: TransferPlan) -> str | None:
    kinds = {p.kind for p in plan.problems}
    if kinds == {"empty"}:
        return ("match by position with --by order, or name pairs with --map SRC=DST; "
                "--allow-empty accepts an empty transfer")
    if kinds <= {"shape", "dtype", "count"}:
        return "--skip-mismatch transfers the rest and reports these as skipped"
    return None


def apply_transfer(plan: TransferPlan) -> TransferPlan:
    """Write the plan; raises with every problem (and writes nothing) when there are any."""
    if plan.problems:
        raise problems_error(plan.problems, "nothing written", transfer_hint(plan))
    if plan.dry_run:
        return plan
    assert plan.output is not None
    writes = [store_write.WeightWrite(p.target_h5, source=store_write.WeightSource(
        Path(plan.source), plan.source_format, p.source_h5)) for p in plan.transferred]
    plan.result = store_write.write_weights(plan.target, plan.target_format, plan.output, writes,
                                            reset_optimizer=plan.reset_optimizer, freeze=plan.freeze,
                                            rebuild=rebuild_with_keras(plan.unsafe))
    return plan


# --------------------------------------------------------------------------- new head (needs the graph)


def load_with_compile(path: str | os.PathLike[str], *, unsafe: bool = False) -> Any:
    """Load with the saved compile settings when Keras can rebuild them, else without (quietly)."""
    import warnings

    from wtool.errors import UnsafeError, WtoolError
    from wtool.graph.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_model(path, unsafe=unsafe, compile=True)
        except UnsafeError:
            raise
        except WtoolError:
            return load_model(path, unsafe=unsafe, compile=False)


def rebuild_with_keras(unsafe: bool = False) -> store_write.Rebuild:
    """How the store converts an edited copy between formats: Keras loads it and saves `out`."""

    def rebuild(staged: Path, out: Path, include_optimizer: bool) -> None:
        from wtool.graph.model import save_model

        save_model(load_with_compile(staged, unsafe=unsafe), out, include_optimizer=include_optimizer)

    return rebuild


@dataclass
class HeadReport:
    base: str
    output: str
    replaced: str
    replaced_class: str
    old_units: int | None
    units: int
    activation: str
    dropped: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    kept_weights: int = 0
    new_weights: list[str] = field(default_factory=list)
    compiled: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "output": self.output,
                "head": {"replaced": self.replaced, "class": self.replaced_class, "old_units": self.old_units,
                         "units": self.units, "activation": self.activation, "new_weights": self.new_weights},
                "dropped_layers": self.dropped, "frozen": self.frozen,
                "counts": {"kept_weights": self.kept_weights, "new_weights": len(self.new_weights)},
                "compiled": self.compiled, "notes": self.notes}


def replace_head(base: str, output: str, *, units: int, activation: str | None = None,
                 head_layer: str | None = None, freeze: bool = False, seed: int | None = None,
                 unsafe: bool = False) -> HeadReport:
    """BASE with its last weight-bearing layer (or `head_layer`) replaced by a fresh Dense(units).

    Layers after the replaced one are dropped (listed in the report). With `freeze`, every
    other layer that holds weights is marked non-trainable. The compile settings (loss,
    metrics, optimizer kind) are kept with a fresh optimizer; the old optimizer state is not.
    """
    if units < 1:
        raise UsageError(f"--replace-head needs a positive number of units (not {units})")
    out = _check_output(output, False, [base])
    from wtool.graph.model import import_keras, save_model

    keras = import_keras()
    model = load_with_compile(base, unsafe=unsafe)
    compile_config = model.get_compile_config() if getattr(model, "compiled", False) else None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if head_layer is not None:
        names = [layer.name for layer in layers]
        if head_layer not in names:
            near = closest(head_layer, names)
            raise IncompatibleError(f"--head-layer {head_layer}: no such top-level layer in {base}"
                                    + (f" (closest: {', '.join(near)})" if near else ""),
                                    f"layers: {', '.join(names)}")
        head = layers[names.index(head_layer)]
    else:
        with_weights = [layer for layer in layers if layer.weights]
        if not with_weights:
            raise IncompatibleError(f"{base}: no layer with weights to replace")
        head = with_weights[-1]
    index = layers.index(head)
    dropped = [layer.name for layer in layers[index + 1 :]]
    if activation is None:
        act = getattr(head, "activation", None)
        activation = keras.activations.serialize(act) if act is not None and head.__class__.__name__ == "Dense" \
            else "softmax"
        if isinstance(activation, dict):
            activation = activation.get("config", {}).get("name", "softmax") if "config" in activation else "softmax"
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise UsageError(f"--head-activation: unknown activation {activation!r}") from None
    if seed is not None:
        keras.utils.set_random_seed(seed)
    dense = keras.layers.Dense(units, activation=activation, name=head.name,
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    old_units = getattr(head, "units", None)
    if isinstance(model, keras.Sequential):
        new = keras.Sequential([keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype),
                                *layers[:index], dense], name=model.name)
    else:
        try:
            head_input = head.input
        except (AttributeError, ValueError):
            raise IncompatibleError(f"{head.name}: the layer is used more than once; cannot replace it") from None
        new = keras.Model(model.inputs, dense(head_input), name=model.name)
    report = HeadReport(str(base), out, head.name, head.__class__.__name__, old_units, units, str(activation),
                        dropped=dropped)
    report.new_weights = [f"{head.name}/{v.name.split('/')[-1].split(':')[0]}" for v in dense.weights]
    if freeze:
        for layer in new.layers:
            if layer is not dense and layer.weights:
                layer.trainable = False
                report.frozen.append(layer.name)
    report.kept_weights = sum(len(layer.weights) for layer in new.layers if layer is not dense)
    if compile_config is not None:
        try:
            new.compile_from_config(compile_config)
            report.compiled = True
        except Exception as exc:  # noqa: BLE001 - keep the model, say what was lost
            report.notes.append(f"compile settings not kept ({type(exc).__name__}); wtool train sets them")
    report.notes.append("the new head starts from fresh values; the old optimizer state is not kept")
    save_model(new, out)
    return report
