"""What set-weights and transfer plans share: problems, statistics, dtype rules, file checks.

A plan is plain data: what goes where, with shapes, dtypes, statistics and every problem
found. Nothing is written while planning, and all problems are collected before any is
reported, so one run shows the whole list.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.fileio import check_model_input
from wtool.store import write as store_write
from wtool.store.naming import base_mode
from wtool.text import one_line


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


# Float values may be rounded into these: bfloat16 has float32's exponent range, so nothing overflows
# (float16 does overflow past 65504: narrowing into it stays refused).
LOW_PRECISION = ("bfloat16",)


def is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def rounding_note(path: str, value: np.ndarray, dtype: str) -> str | None:
    """What writing `value` into a `dtype` weight rounds away (None when nothing is lost)."""
    target = np.dtype(dtype)
    if np.dtype(value.dtype) == target or target.name not in LOW_PRECISION:
        return None
    wide = np.asarray(value, dtype=np.float64)
    change = np.abs(np.asarray(np.asarray(value).astype(target), dtype=np.float64) - wide)
    worst = float(np.nanmax(change)) if change.size else 0.0
    if worst == 0:
        return None
    return f"{path}: {value.dtype} values rounded to {dtype} (largest change {worst:.3g})"


def stored_value(value: np.ndarray | None, dtype: str) -> np.ndarray | None:
    """A value in the form the HDF5 dataset holds it: bfloat16 as Keras writes it (2-byte opaque)."""
    if value is None or dtype != "bfloat16":
        return value
    import ml_dtypes

    return np.ascontiguousarray(np.asarray(value).astype(ml_dtypes.bfloat16)).view("V2")


def dtype_problem(received: np.dtype, expected: np.dtype) -> str | None:
    """None when values of `received` may go into a weight of dtype `expected`.

    Allowed: the same dtype, any safe widening, float64 -> float32 and integers into
    floats. Refused: floats into integers, and any other narrowing.
    """
    received, expected = np.dtype(received), np.dtype(expected)
    if received == expected or np.can_cast(received, expected, "safe"):
        return None
    if is_float(received) and expected.name in LOW_PRECISION:
        return None  # rounded to the weight's precision, as Keras's assign does; reported by rounding_note
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


def model_chunks(model: Any, path: str) -> Iterator[np.ndarray]:
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


def quantization_of(model: Any) -> dict[str, str | None]:
    """Each weight's layer quantization mode (`int8`, `int4/128`, ...; None when not quantized)."""
    modes = {layer.path: layer.quantization for layer in getattr(model, "layers", ())}  # .npz/.safetensors: none
    return {w.path: modes.get(w.layer) for w in model.weights}


def quantized_refusal(path: str, target_mode: str | None, source_mode: str | None, source: str) -> str | None:
    """Why a value cannot go into this weight of an int8/int4 layer, or None.

    Its integers (packed two to a byte for int4) only mean something with the layer's scales
    and zero points, so only a source quantized the same way fits; the bias stays a float.
    """
    if target_mode is None or base_mode(target_mode) == "float8" or path.rsplit("/", 1)[-1] == "bias":
        return None
    if source_mode == target_mode:
        return None
    what = "float" if source_mode is None else source_mode
    return (f"{path} belongs to a layer quantized to {target_mode} and {source} is {what}: its values are "
            f"{'packed int4' if base_mode(target_mode) in ('int4', 'awq') else 'integers'} read with the "
            "layer's scales; set the float model's weights, then `wtool quantize`")


def open_checked(path: str | os.PathLike[str]) -> Any:
    from wtool.store import open_model

    check_model_input(path)
    return open_model(path)


def check_output(out: str | None, in_place: bool, inputs: Sequence[str], written_from: str | None = None) -> str:
    """OUT after the usage checks; `written_from` (the model copied) may be a preset folder, written as a folder."""
    from wtool.store.preset_write import check_preset_output, is_preset_output

    if written_from is not None and is_preset_output(written_from):
        check_preset_output(written_from, out, in_place)
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
    if written_from is None or not is_preset_output(written_from):
        store_write.format_of_name(out)
    return out



def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """`LEFT=RIGHT` for --weight, --init and --map."""
    left, sep, right = text.partition("=")
    if not sep or not left.strip() or not right.strip():
        raise UsageError(f"{option}: expected LEFT=RIGHT (not {text!r})")
    return left.strip(), right.strip()


def notes_after_write(notes: list[str], result: Any) -> list[str]:
    """The plan's notes, less "optimizer state kept" when the write dropped it (a format change), then the write's."""
    if result is None:
        return list(notes)
    kept = [n for n in notes if result.optimizer == "kept" or not n.startswith("optimizer state")]
    return kept + list(result.notes)


def shape_text(shape: Sequence[int] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
