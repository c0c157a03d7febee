"""Frozen-weight prediction, streamed: rows go from a RowSource through a `tf.function`
into a RowWriter one batch at a time, so memory stays flat whatever the input size.

The model is loaded in safe mode (`wtool.graph.model.load_model`), every layer is made
non-trainable, and it is called with `training=False` (Dropout off, BatchNormalization
on its moving statistics) inside one `tf.function` traced once for a fixed batch shape
(the last batch is zero-padded and the padding dropped). A fingerprint of every weight
is taken before and after the run: a weight that moved is a bug (InternalError).

TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtool.data.rows import (
    TENSOR_ALIGN,
    Column,
    RowSource,
    RowWriter,
    aligned_empty,
    fmt_row_shape,
    format_of,
    has_field,
    open_rows,
)
from wtool.errors import IncompatibleError, InternalError, UsageError, WtoolError
from wtool.graph.folders import ImageOptions
from wtool.safety.limits import shown

DEFAULT_BATCH_SIZE = 1024
# With no --batch-size, a batch of input is kept under this many bytes (images, long sequences).
AUTO_BATCH_BYTES = 32 << 20
PREFETCH = 2  # batches read ahead by the reader thread


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Postprocess:
    """What to keep of each model output: the raw values, or a decision on them."""

    mode: str = "raw"  # raw | argmax | top_k | threshold
    k: int = 0
    threshold: float = 0.5
    labels: tuple[str, ...] | None = None

    @classmethod
    def from_options(cls, argmax: bool = False, top_k: int | None = None, threshold: float | None = None,
                     labels: Sequence[str] | None = None) -> Postprocess:
        chosen = [name for name, on in (("--argmax", argmax), ("--top-k", top_k is not None),
                                        ("--threshold", threshold is not None)) if on]
        if len(chosen) > 1:
            raise UsageError(f"{' and '.join(chosen)} cannot be used together; pick one")
        lab = tuple(labels) if labels is not None else None
        if argmax:
            return cls("argmax", labels=lab)
        if top_k is not None:
            if top_k < 1:
                raise UsageError(f"--top-k must be at least 1 (not {top_k})")
            return cls("top_k", k=top_k, labels=lab)
        if threshold is not None:
            if not math.isfinite(threshold):
                raise UsageError(f"--threshold must be a finite number (not {threshold})")
            return cls("threshold", threshold=threshold, labels=lab)
        if lab is not None:
            raise UsageError("--labels names classes: use it with --argmax, --top-k or --threshold")
        return cls()

    def fits(self, units: int | None) -> bool:
        """Whether this decision makes sense on an output of `units` values (None: not known)."""
        if self.mode == "raw":
            return False
        if self.mode == "threshold":
            return units in (1, None)
        return units != 1

    def column_names(self, output: str, prefix: bool) -> list[str]:
        base = {"raw": [output], "argmax": ["class"], "threshold": ["class"],
                "top_k": ["top_index", "top_prob"]}[self.mode]
        if self.labels is not None:
            base = base + (["top_label"] if self.mode == "top_k" else ["label"])
        if self.mode == "raw":
            return base
        return [f"{output}.{name}" if prefix else name for name in base]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): the 2nd of 4 contiguous slices (1-based)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise UsageError(f"--shard expects K/N, e.g. 1/4 (not {text!r})")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N (shards are numbered 1/{max(n, 1)} "
                         f"to {max(n, 1)}/{max(n, 1)})")
    return k, n


def shard_range(n_rows: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows [start, stop) of shard K/N: contiguous slices that together cover every row once."""
    if shard is None:
        return 0, n_rows
    k, n = shard
    return n_rows * (k - 1) // n, n_rows * k // n


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]  # with the batch dimension (None)
    dtype: str

    @property
    def row_shape(self) -> tuple[int | None, ...]:
        return self.shape[1:]


def _import_tf() -> Any:
    from wtool.graph.model import import_keras

    import_keras()
    import tensorflow as tf

    return tf


def _output_names(model: Any, n: int) -> list[str]:
    names: list[str] = []
    declared = getattr(model, "output_names", None)
    if isinstance(declared, (list, tuple)) and len(declared) == n:
        names = [str(x) for x in declared]
    else:
        for i, t in enumerate(getattr(model, "outputs", None) or []):
            history = getattr(t, "_keras_history", None)
            op = getattr(history, "operation", None) if history is not None else None
            names.append(getattr(op, "name", None) or f"output_{i}")
    if len(names) != n:
        names = [f"output_{i}" for i in range(n)]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name] - 1}")
    return unique


class FrozenModel:
    """A Keras model with every layer non-trainable, called with training=False in one tf.function."""

    def __init__(self, model: Any, path: str = "<model>") -> None:
        self.model = model
        self.path = path
        model.trainable = False
        for layer in _all_layers(model):
            layer.trainable = False
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise IncompatibleError(f"{path}: the model has no defined inputs (it was never built)",
                                    "save the model after building it, e.g. with keras.Input(...)")
        # A dict-input model is called with {key: tensor}; its flat `inputs` are in another
        # order (sorted keys), so each flat input is matched to its key by identity.
        self._dict_keys = _struct_keys(getattr(model, "_inputs_struct", None), inputs)
        names = self._dict_keys or [str(t.name) for t in inputs]
        self.inputs = [InputSpec(name, tuple(t.shape), str(t.dtype)) for name, t in zip(names, inputs, strict=True)]
        outputs = getattr(model, "outputs", None) or []
        self._output_keys = _struct_keys(getattr(model, "_outputs_struct", None), outputs)
        self.output_names = list(self._output_keys) or _output_names(model, len(outputs))
        self.output_units = [_units(t) for t in outputs]
        self._step: Any = None
        self._step_key: tuple[Any, ...] | None = None
        self.traces = 0
        self.fixed_batch, self.stateful_layer = _stateful_batch(model, self.inputs)

    def fingerprint(self) -> str:
        """A hash of every weight's bytes (trainable or not), to prove a run changed nothing."""
        h = hashlib.blake2b(digest_size=16)
        for w in self.model.weights:
            value = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
            h.update(str(getattr(w, "path", w.name)).encode())
            h.update(str(value.dtype).encode() + str(value.shape).encode())
            h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()

    def compile(self, batch_size: int, row_shapes: Sequence[tuple[int, ...]]) -> None:
        """Trace the tf.function once for batches of exactly `batch_size` rows."""
        key = (batch_size, tuple(row_shapes))
        if self._step_key == key:
            return
        tf = _import_tf()
        specs = [tf.TensorSpec((batch_size, *shape), spec.dtype, name=_tensor_name(spec.name, i))
                 for i, (spec, shape) in enumerate(zip(self.inputs, row_shapes, strict=True))]
        model = self.model
        single = len(specs) == 1
        dict_keys = self._dict_keys
        output_keys = self._output_keys

        def step(*xs: Any) -> list[Any]:
            self.traces += 1  # Python runs only while tracing: counts traces, not calls
            if single and not dict_keys:
                args: Any = xs[0]
            elif dict_keys:
                args = dict(zip(dict_keys, xs, strict=True))
            else:
                args = list(xs)
            y = model(args, training=False)
            if output_keys and isinstance(y, dict):
                return [y[k] for k in output_keys]
            return _flatten_outputs(y)

        self._step = tf.function(step, input_signature=specs, autograph=False).get_concrete_function()
        self._step_key = key
        self._batch_size = batch_size
        self._tf = tf

    def prepare(self, arrays: Sequence[np.ndarray]) -> tuple[list[Any], int]:
        """Pad a batch to the compiled size and make it tensors (done on the reader thread)."""
        n = len(arrays[0])
        bs = self._batch_size
        if n > bs:
            raise InternalError(f"a batch of {n} rows is larger than the compiled batch size {bs}")
        if n != bs:
            arrays = [_pad(a, bs) for a in arrays]
        return [self._to_tensor(a) for a in arrays], n

    def _to_tensor(self, array: np.ndarray) -> Any:
        """A tensor over the batch's own memory (DLPack, no copy) when possible, else a copy.

        Safe because every batch is a fresh array that nothing writes to afterwards, and the
        DLPack capsule keeps it alive for as long as the tensor lives.
        """
        # TensorFlow aborts the process on a kernel input that is not 64-byte aligned: only
        # aligned arrays (wtool.data.aligned_empty) are shared, anything else is copied.
        if (array.flags.c_contiguous and array.dtype.kind in "fiu" and array.size
                and array.ctypes.data % TENSOR_ALIGN == 0):
            try:
                return self._tf.experimental.dlpack.from_dlpack(array.__dlpack__())
            except (AttributeError, TypeError, ValueError, BufferError, RuntimeError):
                pass
        return self._tf.convert_to_tensor(array)

    def predict_prepared(self, tensors: Sequence[Any], n: int) -> list[np.ndarray]:
        """Run one prepared batch; the padding rows are dropped from the outputs."""
        outs = self._step(*tensors)
        result = []
        for t in outs:
            value = t.numpy()
            result.append(value[:n] if n != self._batch_size else value)
        return result

    def predict_batch(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one batch of at most the compiled batch size."""
        return self.predict_prepared(*self.prepare(arrays))


def _stateful_batch(model: Any, inputs: list[InputSpec]) -> tuple[int | None, str | None]:
    """The batch size a stateful RNN fixes (its states have that many rows), and that layer's name.

    Its states carry from one batch to the next, as in `model.predict`: rows must come in batches
    of exactly that size, in order.
    """
    stateful = next((layer for layer in _all_layers(model) if getattr(layer, "stateful", False) is True), None)
    if stateful is None:
        return None, None
    sizes = {spec.shape[0] for spec in inputs if spec.shape and spec.shape[0] is not None}
    return (int(next(iter(sizes))) if len(sizes) == 1 else None), str(stateful.name)


def _units(tensor: Any) -> int | None:
    """Values per row on the last axis of a symbolic output: 1 for a (batch,) output, None unknown."""
    shape = tuple(getattr(tensor, "shape", None) or ())
    if len(shape) < 2:
        return 1 if len(shape) == 1 else None
    return None if shape[-1] is None else int(shape[-1])


def decide_outputs(post: Postprocess, names: Sequence[str], units: Sequence[int | None]) -> tuple[list[bool], list[str]]:
    """Which outputs a decision (--argmax, --top-k, --threshold) applies to, and a note for each left raw.

    On a model of several outputs (a class head beside a one-unit score, say) the decision goes to
    the outputs it fits and the others are written as they are, as `predict` gives them. Where it
    fits none, or the model has one output, it is applied anyway so that the error says why.
    """
    if post.mode == "raw":
        return [False] * len(names), []
    fits = [post.fits(u) for u in units]
    if len(names) < 2 or not any(fits):
        return [True] * len(names), []
    flag = {"argmax": "--argmax", "top_k": f"--top-k {post.k}", "threshold": "--threshold"}[post.mode]
    applied = ", ".join(shown(n) for n, f in zip(names, fits, strict=True) if f)
    notes = []
    for name, unit, fit in zip(names, units, fits, strict=True):
        if fit:
            continue
        if post.mode == "threshold":
            why = f"has {unit} units (--argmax or --top-k pick a class)"
        else:
            why = "has a single unit (--threshold makes it a binary class)"
        notes.append(f"{flag} applies to {applied}; {shown(name)} {why} and is written as it is")
    return fits, notes


def _struct_keys(struct: Any, flat: Sequence[Any]) -> list[str]:
    """The dict key of each flat tensor, in the flat order; [] unless `struct` is a flat dict of them."""
    if not isinstance(struct, dict):
        return []
    by_id = {id(t): str(k) for k, t in struct.items()}
    keys = [by_id.get(id(t)) for t in flat]
    if len(struct) != len(flat) or any(k is None for k in keys):
        return []
    return [k for k in keys if k is not None]


def _tensor_name(name: str, i: int) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
    return clean if clean and clean[0].isalnum() else f"input_{i}"


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if a.dtype.kind in "US":  # strings: never handed to a kernel without a copy, alignment does not matter
        return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])
    out = aligned_empty((size, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    out[len(a):] = 0
    return out


def _flatten_outputs(y: Any) -> list[Any]:
    if isinstance(y, dict):
        return list(y.values())
    if isinstance(y, (list, tuple)):
        flat: list[Any] = []
        for item in y:
            flat.extend(_flatten_outputs(item))
        return flat
    return [y]


def _all_layers(model: Any) -> Iterator[Any]:
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        yield from flatten(include_self=False, recursive=True)
    else:  # pragma: no cover - older Keras
        yield from getattr(model, "layers", [])


def load_frozen(path: str, *, unsafe: bool = False, arch: str | None = None) -> FrozenModel:
    """Load `path` in safe mode (exit 5 for files that need code, unless unsafe) and freeze it."""
    from wtool.graph.model import load_model
    from wtool.graph.preprocessing import require_vocabularies

    model = load_model(path, unsafe=unsafe, arch=arch)
    require_vocabularies(model, path)
    return FrozenModel(model, path)


# --------------------------------------------------------------------------- a planned run


def fit_rows(spec: InputSpec, row_shape: tuple[int, ...], source: str, n_inputs: int) -> tuple[int, ...]:
    """The row shape fed to the model: the source's, or a flat row reshaped to the model's shape.

    Raises IncompatibleError naming both shapes when they do not fit.
    """
    want = spec.row_shape
    if len(want) == len(row_shape) and all(w is None or w == r for w, r in zip(want, row_shape, strict=True)):
        return row_shape
    known = all(w is not None for w in want)
    if known and len(row_shape) <= 1 and math.prod(w for w in want if w is not None) == math.prod(row_shape):
        return tuple(int(w) for w in want if w is not None)  # flat rows, e.g. 784 CSV columns for (28, 28, 1)
    who = f"input {shown(spec.name)}: " if n_inputs > 1 else ""
    hint = "give rows of the model's input shape (see `wtool inspect MODEL`)"
    if source.lower().endswith((".csv", ".tsv")) and len(row_shape) == 1:
        hint = ("pick the feature columns with --columns (e.g. --columns 0-783), or leave the label out "
                "with --target COLUMN / --drop COLUMNS")
    if source == "stdin" and len(row_shape) == len(want) + 1 and _fits(want, row_shape[1:]):
        # One line of JSON on stdin reads as one JSON-lines row; it was probably a list of rows.
        hint = "for one JSON document holding a list of rows, pass --input-format json"
    raise IncompatibleError(
        f"{who}model expects {fmt_row_shape(spec.shape)}; input rows have shape {fmt_row_shape(row_shape)} "
        f"in {source}", hint)


def _fits(want: tuple[int | None, ...], row_shape: tuple[int, ...]) -> bool:
    return len(want) == len(row_shape) and all(w is None or w == r for w, r in zip(want, row_shape, strict=True))


def takes_strings(spec: InputSpec) -> bool:
    return spec.dtype == "string"


def numpy_dtype(spec: InputSpec) -> np.dtype[Any] | None:
    """The numpy dtype rows are cast to for a model input (bfloat16 through TensorFlow's own type).

    None for a string input: its rows are fed as read (numpy U or S), never cast.
    """
    if takes_strings(spec):
        return None
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        try:
            dtype = np.dtype(_import_tf().as_dtype(spec.dtype).as_numpy_dtype)
        except (TypeError, ValueError):
            dtype = np.dtype(object)
    if dtype.kind not in "biuf":
        raise IncompatibleError(f"input {shown(spec.name)} has dtype {spec.dtype}; wtool infer feeds numbers "
                                "and strings only")
    return dtype


def _check_strings(spec: InputSpec, src: RowSource) -> None:
    if takes_strings(spec) and src.dtype.kind not in "US":
        raise IncompatibleError(f"input {shown(spec.name)} takes strings; {src.name} holds {src.dtype} values",
                                "give text: CSV or JSON lines of strings, or an .npy of strings (numpy U/S)")


def auto_batch_size(row_bytes: int) -> int:
    if row_bytes <= 0:
        return DEFAULT_BATCH_SIZE
    return max(1, min(DEFAULT_BATCH_SIZE, AUTO_BATCH_BYTES // row_bytes))


@dataclass
class Stats:
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0


@dataclass
class InferPlan:
    """Everything decided before the first row is read: inputs, shapes, range, columns."""

    frozen: FrozenModel
    sources: list[RowSource]
    post: Postprocess = field(default_factory=Postprocess)
    batch_size: int | None = None
    shard: tuple[int, int] | None = None
    file_column: bool = True  # a folder of images: a first column `file` naming each row's image

    def __post_init__(self) -> None:
        specs = self.frozen.inputs
        if len(self.sources) != len(specs):
            raise InternalError(f"{len(self.sources)} sources for {len(specs)} model inputs")
        counts = {len(s) for s in self.sources}
        if len(counts) > 1:
            desc = ", ".join(f"{s.name}: {len(s)}" for s in self.sources)
            raise IncompatibleError(f"the inputs have different numbers of rows ({desc})")
        self.n_rows = len(self.sources[0])
        self.row_shapes = [fit_rows(spec, src.row_shape, src.name, len(specs))
                           for spec, src in zip(specs, self.sources, strict=True)]
        for spec, src in zip(specs, self.sources, strict=True):
            _check_strings(spec, src)
        self.dtypes = [numpy_dtype(spec) for spec in specs]
        self.start, self.stop = shard_range(self.n_rows, self.shard)
        if self.frozen.fixed_batch is not None:
            self._fixed_batch(self.frozen.fixed_batch)
        elif self.batch_size is None:
            sizes = [d.itemsize if d is not None else max(src.dtype.itemsize, 64)
                     for d, src in zip(self.dtypes, self.sources, strict=True)]
            row_bytes = sum(int(math.prod(s)) * size for s, size in zip(self.row_shapes, sizes, strict=True))
            self.batch_size = auto_batch_size(row_bytes)
        elif self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (not {self.batch_size})")
        # Never trace for more rows than will ever be fed (small inputs, small shards).
        self.compiled_batch = self.frozen.fixed_batch or max(1, min(self.batch_size, self.stop - self.start))
        prefix = len(self.frozen.output_names) > 1
        self.decided, self.notes = decide_outputs(self.post, self.frozen.output_names, self.frozen.output_units)
        self.column_names = [name for out, decided in zip(self.frozen.output_names, self.decided, strict=True)
                             for name in (self.post.column_names(out, prefix) if decided else [out])]
        self.row_names: list[str] | None = getattr(self.sources[0], "row_names", None) if self.file_column else None
        if self.row_names is not None:
            self.column_names.insert(0, "file")
        self.columns: list[Column] = []

    def _fixed_batch(self, fixed: int) -> None:
        """A stateful RNN takes batches of exactly its batch size: never padded, never another size."""
        layer = shown(self.frozen.stateful_layer or "")
        if self.batch_size is not None and self.batch_size != fixed:
            raise IncompatibleError(f"--batch-size {self.batch_size}: the stateful layer {layer} fixes the batch "
                                    f"size at {fixed}", f"leave --batch-size out (or give {fixed})")
        rows = self.stop - self.start
        if rows % fixed:
            raise IncompatibleError(f"the stateful layer {layer} takes batches of exactly {fixed} rows (its states "
                                    f"carry from batch to batch); {rows} rows is not a multiple of {fixed}",
                                    f"give a multiple of {fixed} rows")
        self.batch_size = fixed

    def _with_names(self, columns: dict[str, np.ndarray], first: int, n: int) -> dict[str, np.ndarray]:
        if self.row_names is None:
            return columns
        names = self.row_names[first:first + n]
        names += [""] * (n - len(names))  # the dummy row of an empty run
        return {"file": np.array(names, dtype=str), **columns}

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def _batches(self) -> Iterator[list[np.ndarray]]:
        bs = int(self.batch_size or DEFAULT_BATCH_SIZE)
        iters = [src.batches(bs, self.start, self.stop, dtype=dt)
                 for src, dt in zip(self.sources, self.dtypes, strict=True)]
        while True:
            parts = [next(it, None) for it in iters]
            if parts[0] is None:
                return
            arrays = []
            for arr, shape in zip(parts, self.row_shapes, strict=True):
                assert arr is not None
                arrays.append(arr if arr.shape[1:] == shape else arr.reshape((len(arr), *shape)))
            yield arrays

    def run(self, open_sink: Callable[[list[Column], int], RowWriter],
            progress: Callable[[int], None] | None = None) -> Stats:
        """Stream every row of the planned range through the model into the sink `open_sink` makes."""
        frozen = self.frozen
        frozen.compile(self.compiled_batch, self.row_shapes)
        stats = Stats()
        t0 = time.perf_counter()
        writer: RowWriter | None = None
        reader = _Prefetch((frozen.prepare(arrays) for arrays in self._batches()), PREFETCH)
        try:
            for tensors, n in reader:
                outputs = frozen.predict_prepared(tensors, n)
                columns = self._with_names(self.postprocess(outputs), self.start + stats.rows, n)
                if writer is None:
                    self.columns = self.columns_of(columns)
                    writer = open_sink(self.columns, self.rows)
                writer.write(columns)
                stats.rows += n
                stats.batches += 1
                if progress is not None:
                    progress(stats.rows)
            if writer is None:  # an empty shard: still write a valid, empty output
                self.columns = self.empty_columns()
                writer = open_sink(self.columns, 0)
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            reader.close()
        stats.seconds = time.perf_counter() - t0
        if stats.rows != self.rows:
            raise InternalError(f"processed {stats.rows} rows, expected {self.rows}")
        return stats

    def columns_of(self, batch: dict[str, np.ndarray]) -> list[Column]:
        return [Column(name, tuple(batch[name].shape[1:]), batch[name].dtype) for name in self.column_names]

    def empty_columns(self) -> list[Column]:
        """Columns for a run with no rows: shapes from one dummy batch."""
        n = self.frozen.fixed_batch or 1  # a stateful RNN takes no other batch size
        self.frozen.compile(n, self.row_shapes)
        dummy = [np.zeros((1, *s), dtype=d if d is not None else "U1")
                 for s, d in zip(self.row_shapes, self.dtypes, strict=True)]
        return self.columns_of(self._with_names(self.postprocess(self.frozen.predict_batch(dummy)), 0, 1))

    def postprocess(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        post = self.post
        prefix = len(outputs) > 1
        result: dict[str, np.ndarray] = {}
        for name, y, decided in zip(self.frozen.output_names, outputs, self.decided, strict=True):
            if not decided:
                result[name] = y
                continue
            names = post.column_names(name, prefix)
            if y.ndim < 2:
                y = y.reshape(len(y), 1)
            classes = y.shape[-1]
            if classes == 1 and post.mode != "threshold":
                flag = "--argmax" if post.mode == "argmax" else f"--top-k {post.k}"
                raise IncompatibleError(
                    f"{flag} needs several classes; {shown(name)} has a single unit (a binary output), "
                    "whose only index is 0",
                    "use --threshold 0.5 (class 1 where the value >= 0.5)")
            if post.mode == "threshold":
                if classes != 1:
                    raise IncompatibleError(
                        f"--threshold needs a single-unit output; {shown(name)} has {classes} units",
                        "use --argmax or --top-k for several classes")
                self._check_labels(2, "--threshold (negative, positive)")
                cls = (y[..., 0] >= post.threshold).astype(np.int64)
                result[names[0]] = cls
            elif post.mode == "argmax":
                self._check_labels(classes, f"output {shown(name)}")
                cls = np.argmax(y, axis=-1).astype(np.int64)
                result[names[0]] = cls
            else:
                k = post.k
                if k > classes:
                    raise UsageError(f"--top-k {k}: output {shown(name)} has only {classes} classes")
                self._check_labels(classes, f"output {shown(name)}")
                cls = _top_k(y, k)
                result[names[0]] = cls
                result[names[1]] = np.take_along_axis(y, cls, axis=-1)
            if post.labels is not None:
                result[names[-1]] = np.asarray(post.labels)[cls]
        return result

    def _check_labels(self, classes: int, what: str) -> None:
        labels = self.post.labels
        if labels is not None and len(labels) != classes:
            raise IncompatibleError(f"--labels has {len(labels)} names; {what} has {classes} classes")


def _top_k(y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values along the last axis, largest first (ties: lower index first)."""
    if k * 4 < y.shape[-1]:
        part = np.argpartition(-y, k - 1, axis=-1)[..., :k]
        vals = np.take_along_axis(y, part, axis=-1)
        order = np.lexsort((part, -vals), axis=-1)
        return np.take_along_axis(part, order, axis=-1).astype(np.int64)
    return np.argsort(-y, axis=-1, kind="stable")[..., :k].astype(np.int64)


class _Prefetch:
    """Read batches in a background thread (file reads and parsing overlap the model's compute)."""

    _DONE = object()

    def __init__(self, it: Iterator[Any], depth: int) -> None:
        self._it = it
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wtool-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._it:
                if not self._put((True, item)):
                    return
            self._put((True, self._DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._put((False, exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            ok, item = self._queue.get()
            if not ok:
                raise item
            if item is self._DONE:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- opening inputs


def parse_input_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """--input NAME=FILE (repeated) -> {NAME: FILE}."""
    result: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--input expects NAME=FILE (not {pair!r})")
        if name in result:
            raise UsageError(f"--input {name} given twice")
        result[name] = path
    return result


def open_inputs(specs: Sequence[InputSpec], positional: str | None, named: dict[str, str], *,
                key: str | None = None, columns: str | None = None, fmt: str | None = None,
                header: bool | None = None, stdin: Any = None, drop: Sequence[str] = (),
                target: str | None = None, images: ImageOptions | None = None,
                head_only: bool = False) -> list[RowSource]:
    """One RowSource per model input (`specs`: the model's inputs), in the model's input order (a folder:
    its images, via Keras). `head_only`: CSV / JSON lines read to their first row only (open_rows)."""
    if positional is not None and positional != "-" and Path(positional).is_dir():
        if len(specs) != 1:
            raise UsageError(f"{positional}: a folder of images or texts feeds a model with one input")
        from wtool.graph import text_folders
        from wtool.graph.folders import ImageFolderSource, settings

        if takes_strings(specs[0]):
            shape = text_folders.row_shape(specs[0].shape, positional)
            return [text_folders.TextFolderSource(positional, shape, (images or ImageOptions()).max_length)]
        text_folders.check_not_text(positional, specs[0].dtype)
        size, mode = settings(images or ImageOptions(), specs[0].shape, positional)
        return [ImageFolderSource(positional, size, mode)]
    names = [s.name for s in specs]
    if named:
        unknown = [n for n in named if n not in names]
        if unknown:
            raise UsageError(f"the model has no input named {', '.join(map(shown, unknown))}; "
                             f"its inputs are {', '.join(map(shown, names))}")
        if positional is not None and len(specs) > 1:
            raise UsageError("give either INPUT or --input NAME=FILE for each model input, not both")
    if positional is None and not named:
        raise UsageError("no input: give INPUT (a file, or - for stdin)", "e.g. wtool infer MODEL rows.npy")
    if len(specs) == 1:
        path = positional if positional is not None else named.get(names[0])
        if path is None:
            raise UsageError(f"no input for {shown(names[0])}")
        plain = takes_strings(specs[0]) and key is None and columns is None and not drop and target is None
        member, cols = _by_name(path, specs[0], fmt, plain, npz=False) or (key, columns)
        return [open_rows(path, member, cols, fmt=fmt, header=header, stdin=stdin, drop=drop, target=target,
                          strings=takes_strings(specs[0]), head_only=head_only)]
    # Several model inputs: --input NAME=FILE each, or one .npz holding an array per input name.
    paths: dict[str, str] = dict(named)
    if positional is not None:
        if not (fmt == "npz" or Path(positional).suffix.lower() == ".npz"):
            raise UsageError(f"the model has {len(specs)} inputs ({', '.join(map(shown, names))})",
                             "give --input NAME=FILE for each, or one .npz with an array per input name")
        paths = {n: positional for n in names}
    missing = [n for n in names if n not in paths]
    if missing:
        raise UsageError(f"no input for {', '.join(map(shown, missing))}",
                         f"give --input NAME=FILE for each of {', '.join(map(shown, names))}")
    if sum(1 for p in paths.values() if p == "-") > 1:
        raise UsageError("stdin (-) can feed only one input")
    sources: list[RowSource] = []
    try:
        plain = key is None and columns is None and not drop and target is None
        for spec in specs:
            path = paths[spec.name]
            member, cols = _by_name(path, spec, fmt, plain) or (key, columns)
            sources.append(open_rows(path, member, cols, fmt=fmt, header=header, stdin=stdin, drop=drop,
                                     target=target, strings=takes_strings(spec), head_only=head_only))
    except BaseException:
        for s in sources:
            s.close()
        raise
    return sources


# Inputs whose row shape costs next to nothing to learn: an array header, a CSV header and first row,
# a first JSON line. (A .json document is parsed whole, stdin cannot be read twice, a folder is Keras's.)
PRECHECK_FORMATS = ("npy", "npz", "csv", "tsv", "jsonl")


def precheck_inputs(saved: Sequence[tuple[str, tuple[int | None, ...], str]], positional: str | None,
                    named: dict[str, str], *, key: str | None = None, fmt: str | None = None,
                    columns: str | None = None, header: bool | None = None, drop: Sequence[str] = (),
                    target: str | None = None) -> None:
    """Inputs checked against the input shapes and dtypes the file records, before TensorFlow loads.

    Only PRECHECK_FORMATS, opened as the run will open them (--columns, --drop, --target, --header)
    but read no further than their first row, so a bad input fails in a fraction of a second.
    Anything this cannot settle (row counts, every later row) is left to the checks after loading.
    """
    paths = [positional] if positional is not None else []
    paths += list(named.values())
    if not paths or any(p == "-" or Path(p).is_dir() or (fmt or format_of(p)) not in PRECHECK_FORMATS
                        for p in paths):
        return
    specs = [InputSpec(name, tuple(shape), dtype) for name, shape, dtype in saved]
    sources = open_inputs(specs, positional, named, key=key, fmt=fmt, columns=columns, header=header, drop=drop,
                          target=target, head_only=True)
    try:
        for spec, src in zip(specs, sources, strict=True):
            fit_rows(spec, src.row_shape, src.name, len(specs))
            _check_strings(spec, src)
    finally:
        for src in sources:
            src.close()


def _by_name(path: str, spec: InputSpec, fmt: str | None, plain: bool,
             npz: bool = True) -> tuple[str | None, str | None] | None:
    """(npz member or JSON field, CSV columns) named after the input, when the file has them.

    An .npz array, a CSV column or a JSON-lines field called like the input feeds it, so
    one file can feed several inputs; `plain` is whether no option picked the data already.
    """
    if npz and (fmt == "npz" or Path(path).suffix.lower() == ".npz") and _npz_has(path, spec.name):
        return spec.name, None
    if plain and has_field(path, spec.name, fmt):
        return (spec.name, None) if (fmt or format_of(path)) == "jsonl" else (None, spec.name)
    return None


def _npz_has(path: str, name: str) -> bool:
    if path == "-":
        return False
    from wtool.data.rows import npz_keys

    try:
        return name in npz_keys(path)
    except WtoolError:
        return False


@dataclass
class Report:
    """What `--json` prints."""

    model: str
    inputs: list[dict[str, Any]]
    output: str
    format: str
    rows: int
    batches: int
    batch_size: int
    shard: str | None
    row_range: tuple[int, int]
    columns: list[dict[str, Any]]
    load_time_s: float
    predict_time_s: float
    wall_time_s: float
    weights_unchanged: bool

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.predict_time_s if self.predict_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "inputs": self.inputs, "output": self.output, "format": self.format,
            "rows": self.rows, "batches": self.batches, "batch_size": self.batch_size, "shard": self.shard,
            "row_range": list(self.row_range), "columns": self.columns,
            "wall_time_s": round(self.wall_time_s, 4), "load_time_s": round(self.load_time_s, 4),
            "predict_time_s": round(self.predict_time_s, 4), "rows_per_s": round(self.rows_per_s, 1),
            "weights_unchanged": self.weights_unchanged,
        }


def check_unchanged(frozen: FrozenModel, before: str) -> bool:
    after = frozen.fingerprint()
    if after != before:
        raise InternalError(f"{frozen.path}: a weight changed during inference (a bug in wtool)")
    return True


def describe_columns(columns: list[Column]) -> list[dict[str, Any]]:
    return [{"name": c.name, "shape": list(c.shape), "dtype": str(c.dtype)} for c in columns]
