"""`set-weights` as plan -> apply: values from .npz/.npy files, another model or initializers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wtool.errors import UsageError
from wtool.fileio import check_input_file
from wtool.ops.initializers import InitShapeError, parse_initializer
from wtool.ops.planning import (
    Problem,
    Stats,
    check_output,
    closest,
    dtype_problem,
    glob_hits,
    model_chunks,
    notes_after_write,
    open_checked,
    parse_assignment,
    problems_error,
    quantization_of,
    quantized_refusal,
    rounding_note,
    shape_text,
    stored_value,
)
from wtool.ops.rebuild import rebuild_with_keras
from wtool.store import write as store_write
from wtool.store.naming import clean_key


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
    from_model: bool = field(default=False, repr=False)  # --from-model (copied as bytes or read as values)


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
    max_shard_bytes: int | None = None  # --max-shard-size: write OUT.weights.json shards of at most this
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
            "notes": notes_after_write(self.notes, self.result),
        }


def _load_npz(path: str) -> dict[str, np.ndarray]:
    from wtool.store.arrays import load_npz

    check_input_file(path)
    return load_npz(path)


def _load_npy(path: str) -> np.ndarray:
    from wtool.store.arrays import load_npy

    check_input_file(path)
    return load_npy(path)


class _Gatherer:
    """Collects assignments for one model: each path claimed once, unknown paths reported with the closest."""

    def __init__(self, plan: SetWeightsPlan, model: Any, model_path: str, seed: int | None) -> None:
        self.plan = plan
        self.model = model
        self.model_path = model_path
        self.by_path = {w.path: w for w in model.weights}
        self.claimed: dict[str, str] = {}
        self.rng = np.random.default_rng(seed)  # one generator for every --init of the run

    def unknown(self, path: str, source: str) -> None:
        near = closest(path, self.by_path)
        hint = f" (closest: {', '.join(near)})" if near else ""
        self.plan.problems.append(Problem("unknown_path", path, f"{path}: no such weight in {self.model_path}{hint} "
                                          f"[from {source}]", near))

    def claim(self, path: str, source: str) -> bool:
        if path in self.claimed:
            self.plan.problems.append(Problem("duplicate", path, f"{path}: assigned twice ({self.claimed[path]} "
                                              f"and {source})"))
            return False
        self.claimed[path] = source
        return True

    def add_value(self, path: str, value: np.ndarray, source: str) -> None:
        path = clean_key(path)
        info = self.by_path.get(path)
        if info is None:
            self.unknown(path, source)
            return
        if not self.claim(path, source):
            return
        self.plan.assignments.append(Assignment(path, tuple(info.shape), info.dtype, source,
                                                tuple(value.shape), str(value.dtype), h5_name=info.h5_name,
                                                value=value))

    def add_init(self, glob: str, name: str, init: Any) -> None:
        """Every weight the glob matches, newly drawn."""
        hits = [w for w in self.model.weights if glob_hits(glob, w.path)]
        if not hits:
            self.unknown(glob, f"--init {glob}={name}")
            return
        for info in hits:
            if not self.claim(info.path, f"init {name}"):
                continue
            try:
                value = init(self.rng, tuple(info.shape), np.dtype(info.dtype))
            except InitShapeError as exc:
                self.plan.problems.append(Problem("shape", info.path, f"{info.path}: {exc} "
                                                  f"[from --init {glob}={name}]"))
                continue
            self.plan.assignments.append(Assignment(info.path, tuple(info.shape), info.dtype, f"init {name}",
                                                    tuple(value.shape), str(value.dtype),
                                                    h5_name=info.h5_name, value=value))


def plan_set_weights(
    model_path: str,
    *,
    output: str | None,
    npz: Sequence[str] = (),
    weights: Sequence[str] = (),
    from_model: str | None = None,
    from_layers: Sequence[str] = (),
    from_checkpoint: str | None = None,
    inits: Sequence[str] = (),
    seed: int | None = None,
    allow_nonfinite: bool = False,
    reset_optimizer: bool = False,
    in_place: bool = False,
    dry_run: bool = False,
    max_shard_bytes: int | None = None,
) -> SetWeightsPlan:
    """Gather every assignment, check them all, and return the plan (nothing written)."""
    if not (npz or weights or from_model or from_checkpoint or inits):
        raise UsageError("nothing to assign",
                         "give at least one of --npz, --weight, --from-model, --from-checkpoint, --init")
    if from_layers and not from_model:
        raise UsageError("--layer selects weights of --from-model; give --from-model SRC")
    out = None if dry_run and output is None and not in_place else check_output(output, in_place, [model_path], model_path)
    parsed_weights = [parse_assignment(w, "--weight") for w in weights]
    parsed_inits = [(glob, *parse_initializer(spec)) for glob, spec in (parse_assignment(i, "--init") for i in inits)]

    with open_checked(model_path) as model:
        plan = SetWeightsPlan(model=str(model_path), format=model.format, output=out,
                              total_weights=len(model.weights), has_optimizer=bool(model.has_optimizer),
                              reset_optimizer=reset_optimizer, dry_run=dry_run, max_shard_bytes=max_shard_bytes)
        gather = _Gatherer(plan, model, str(model_path), seed)
        for npz_path in npz:
            for key, value in _load_npz(npz_path).items():
                gather.add_value(key, value, f"{npz_path}[{key}]")
        for path, npy in parsed_weights:
            gather.add_value(path, _load_npy(npy), npy)
        if from_model:
            _add_from_model(plan, from_model, from_layers, gather.by_path, gather.unknown, gather.claim)
        if from_checkpoint:
            from wtool.ops.from_checkpoint import checkpoint_values

            found = checkpoint_values(model_path, from_checkpoint)
            for path, (value, source) in found.values.items():
                gather.add_value(path, value, source)
            plan.notes.extend(found.notes)
        for glob, name, init in parsed_inits:
            gather.add_init(glob, name, init)
        _check_quantized(plan, model, from_model)
        _check_assignments(plan, allow_nonfinite)
        order = {w.path: i for i, w in enumerate(model.weights)}
        plan.assignments.sort(key=lambda a: order.get(a.path, 0))
        for a in plan.assignments:
            a.old = Stats.of(model_chunks(model, a.path))
    if plan.has_optimizer and getattr(model, "optimizer_moments", 1) > 0 and not reset_optimizer and plan.assignments:
        plan.notes.append("optimizer state kept: its saved moments belong to the old values "
                          "(use --reset-optimizer to drop it)")
    return plan


def _add_from_model(plan: SetWeightsPlan, src_path: str, layers: Sequence[str], by_path: dict[str, Any],
                    unknown: Callable[[str, str], None], claim: Callable[[str, str], bool]) -> None:
    with open_checked(src_path) as src:
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
            # Bytes are copied file to file when both are HDF5 of one dtype; otherwise the values are read
            # (a .safetensors source, or a dtype to round, e.g. float32 into bfloat16).
            byte_copy = src.format != "safetensors" and w.dtype == info.dtype
            a = Assignment(w.path, tuple(info.shape), info.dtype, source, tuple(w.shape), w.dtype,
                           h5_name=info.h5_name,
                           from_weight=store_write.WeightSource(*src.weight_source(w.path)) if byte_copy else None,
                           from_model=True)
            if tuple(w.shape) == tuple(info.shape):
                if byte_copy:
                    a.new = Stats.of(model_chunks(src, w.path))
                else:
                    a.value = src.read(w.path)
            plan.assignments.append(a)


def _check_quantized(plan: SetWeightsPlan, model: Any, from_model: str | None) -> None:
    """Into an int8/int4 layer only from a model quantized the same way (arrays carry no mode)."""
    target = quantization_of(model)
    if not any(target.values()):
        return
    source: dict[str, str | None] = {}
    if from_model:
        with open_checked(from_model) as src:
            source = quantization_of(src)
    kept = []
    for a in plan.assignments:
        why = quantized_refusal(a.path, target.get(a.path), source.get(a.path) if a.from_model else None,
                                a.source)
        if why:
            plan.problems.append(Problem("quantized", a.path, why))
        else:
            kept.append(a)
    plan.assignments = kept


def _check_assignments(plan: SetWeightsPlan, allow_nonfinite: bool) -> None:
    for a in plan.assignments:
        if a.received_shape != a.shape:
            plan.problems.append(Problem("shape", a.path, f"{a.path}: expected shape {shape_text(a.shape)}, "
                                         f"received {shape_text(a.received_shape)} from {a.source}"))
            continue
        why = dtype_problem(np.dtype(a.received_dtype), np.dtype(a.dtype))
        if why:
            plan.problems.append(Problem("dtype", a.path, f"{a.path}: {why} from {a.source}"))
            continue
        if a.value is not None:
            a.new = Stats.of([a.value])
            note = rounding_note(a.path, np.asarray(a.value), a.dtype)
            if note:
                plan.notes.append(note)
        if a.new is not None and a.new.nonfinite and not allow_nonfinite:
            plan.problems.append(Problem("nonfinite", a.path, f"{a.path}: {a.new.nonfinite} NaN/Inf value(s) "
                                         f"in {a.source}"))
    if any(p.kind == "nonfinite" for p in plan.problems):
        plan.notes.append("pass --allow-nonfinite to write NaN/Inf values on purpose")


def apply_set_weights(plan: SetWeightsPlan) -> SetWeightsPlan:
    """Write the plan (it must have no problems). Raises before writing anything otherwise."""
    from wtool.store.preset_write import is_preset_output

    if plan.problems:
        hint = "pass --allow-nonfinite to write NaN/Inf on purpose" if all(
            p.kind == "nonfinite" for p in plan.problems) else None
        raise problems_error(plan.problems, "nothing written", hint)
    if plan.dry_run:
        return plan
    assert plan.output is not None
    writes = [store_write.WeightWrite(a.h5_name, value=stored_value(a.value, a.dtype), source=a.from_weight)
              for a in plan.assignments]
    plan.result = store_write.write_weights(plan.model, plan.format, plan.output, writes,
                                            reset_optimizer=plan.reset_optimizer, rebuild=rebuild_with_keras(),
                                            max_shard_bytes=plan.max_shard_bytes,
                                            preset_folder=is_preset_output(plan.model))
    return plan
