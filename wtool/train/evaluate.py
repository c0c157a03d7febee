"""`wtool eval`: loss and metrics of a model on labelled data, as `model.evaluate` computes them.

The model is loaded compiled with its saved settings (or recompiled with --loss/--metric) so
Keras's own CompileLoss and CompileMetrics name and compute every number; only the data path
is wtool's: numpy slices in file order (memory-mapped .npy stays on disk), several batches per
`tf.function` call, `training=False`. Classifier outputs also get a confusion matrix,
accumulated in the same call. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.graph.folders import ImageOptions
from wtool.graph.text_folders import numpy_dtype
from wtool.train.data import (
    LabelledData,
    ModelIO,
    check_finite,
    check_fits,
    load_labelled,
    saved_class_names,
    split_validation,
)
from wtool.train.named_data import NamedData, check_finite_named, load_named, parse_pairs, split_named

DEFAULT_BATCH_SIZE = 256
# Rows gathered per tf.function call are capped at this many bytes.
CHUNK_BYTES = 32 * 1024 * 1024
MAX_STEPS_PER_CALL = 64
# A confusion matrix over more classes than this is not kept (C x C counts).
MAX_CONFUSION_CLASSES = 1000

# Which way is better, by words in a metric's name: gates and the report use these.
HIGHER_IS_BETTER = ("accuracy", "acc", "auc", "precision", "recall", "f1", "iou", "r2", "top_k", "specificity",
                    "sensitivity", "cosine_similarity")
LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "mape", "msle", "crossentropy", "hinge", "kl_divergence",
                   "poisson", "logcosh", "huber")


@dataclass
class EvalOptions:
    """Everything `wtool eval` can be asked to do."""

    model: str
    data: str | None = None
    x_files: tuple[str, ...] = ()  # --x: FILE.npy, or NAME=FILE.npy per model input
    y_files: tuple[str, ...] = ()
    x_keys: tuple[str, ...] = ()  # --x-key: KEY (default x), or NAME=KEY per model input
    y_keys: tuple[str, ...] = ()
    x_cols: tuple[str, ...] = ()  # --x-cols: [NAME=]COLS, a CSV column group per model input
    y_cols: tuple[str, ...] = ()
    target: str | None = None
    drop: tuple[str, ...] = ()
    image_size: str | None = None  # a folder of images: HxW (default: the model's input)
    color_mode: str | None = None
    max_length: int | None = None  # a folder of text files: characters kept per file (Keras's max_length)
    arch: str | None = None
    unsafe: bool = False
    batch_size: int | None = None
    loss: tuple[str, ...] = ()  # LOSS, or NAME=LOSS per output
    loss_weights: tuple[str, ...] = ()  # NAME=WEIGHT per output
    metrics: tuple[str, ...] = ()  # METRIC, or NAME=METRIC per output
    labels: tuple[str, ...] | None = None
    val_split: float | None = None  # evaluate only the validation rows train --val-split F [--seed S] held out
    seed: int | None = None  # a folder's split is shuffled with it, as train's


@dataclass
class Classification:
    """One classifier output: its confusion matrix (rows: true class, columns: predicted)."""

    output: str
    classes: list[str]
    confusion: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        cm = self.confusion.astype(np.float64)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        hits = np.diag(cm)
        precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
        recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
        both = precision + recall
        f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
        total = float(cm.sum())
        per_class = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                     for name, p, r, f, s in zip(self.classes, precision, recall, f1, support, strict=True)]
        present = support > 0  # macro averages over the classes that occur in the data
        return {
            "output": self.output,
            "classes": self.classes,
            "accuracy": float(hits.sum() / total) if total else 0.0,
            "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
            "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "per_class": per_class,
            "confusion_matrix": self.confusion.astype(int).tolist(),
        }


@dataclass
class EvalReport:
    model: str
    data: str
    rows: int
    batch_size: int
    loss: str
    metrics: dict[str, float]
    classification: list[Classification] = field(default_factory=list)
    seconds: float = 0.0
    rows_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "rows": self.rows, "batch_size": self.batch_size,
                "loss": self.loss, "metrics": self.metrics,
                "classification": [c.as_dict() for c in self.classification],
                "seconds": round(self.seconds, 4), "rows_per_s": self.rows_per_s}

    def values(self) -> dict[str, float]:
        """Every number a gate can name: the metrics, then each classifier's summary (prefixed when several)."""
        found = dict(self.metrics)
        for c in self.classification:
            doc = c.as_dict()
            prefix = f"{c.output}_" if len(self.classification) > 1 else ""
            for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
                found.setdefault(prefix + key, doc[key])
        return found


# ------------------------------------------------------------------------------------------- gates


def higher_is_better(name: str) -> bool | None:
    """True for accuracy-like names, False for loss-like ones, None when the name does not say."""
    low = name.lower()
    if any(word in low for word in LOWER_IS_BETTER):
        return False
    if any(word in low for word in HIGHER_IS_BETTER):
        return True
    return None


@dataclass(frozen=True)
class Gate:
    metric: str
    threshold: float
    above: bool  # True: fails when the value is above the threshold (--fail-above)

    @property
    def option(self) -> str:
        return "--fail-above" if self.above else "--fail-under"

    def passed(self, value: float) -> bool:
        return value <= self.threshold if self.above else value >= self.threshold


def parse_gates(under: tuple[str, ...], above: tuple[str, ...]) -> list[Gate]:
    """METRIC=VALUE pairs; --fail-under on a loss-like metric (or --fail-above on an accuracy-like one) is refused."""
    gates = []
    for option, items, is_above in (("--fail-under", under, False), ("--fail-above", above, True)):
        for item in items:
            name, sep, text = item.partition("=")
            try:
                threshold = float(text)
            except ValueError:
                threshold = float("nan")
            if not sep or not name.strip() or not np.isfinite(threshold):
                raise UsageError(f"{option} takes METRIC=VALUE (not '{item}')", f"e.g. {option} accuracy=0.9")
            name = name.strip()
            direction = higher_is_better(name)
            if direction is not None and direction == is_above:
                other = "--fail-under" if is_above else "--fail-above"
                kind = "higher" if direction else "lower"
                raise UsageError(f"{option} {name}: {name} is better when {kind}, so it cannot fall short that way",
                                 f"use {other} {name}={text}")
            gates.append(Gate(name, threshold, is_above))
    return gates


def check_gates(gates: list[Gate], values: dict[str, float]) -> list[dict[str, Any]]:
    """Each gate with its value and verdict; a metric the run did not compute is a usage error."""
    results = []
    for gate in gates:
        if gate.metric not in values:
            raise UsageError(f"{gate.option} {gate.metric}: this run has no metric '{gate.metric}'",
                             f"computed: {', '.join(values)}")
        value = values[gate.metric]
        results.append({"metric": gate.metric, "option": gate.option, "threshold": gate.threshold,
                        "value": value, "passed": gate.passed(value)})
    return results


# ------------------------------------------------------------------------------------ model & data


@dataclass
class ModelSide:
    """A model's inputs and outputs by name, shape (without the batch axis) and dtype."""

    input_names: list[str]
    input_shapes: list[tuple[int | None, ...]]
    input_dtypes: list[str]
    output_names: list[str]
    output_shapes: list[tuple[int | None, ...]]
    dict_inputs: bool
    list_inputs: bool  # inputs=[x] (a list of one) is called with a list: Keras warns about a bare tensor

    @classmethod
    def of(cls, model: Any) -> ModelSide:
        # A dict's flat `inputs`/`outputs` are in sorted-key order: shapes and dtypes are read by key instead.
        struct = getattr(model, "_inputs_struct", None)
        names = list(struct) if isinstance(struct, dict) else [str(t.name) for t in model.inputs]
        inputs = [struct[n] for n in names] if isinstance(struct, dict) else list(model.inputs)
        out_struct = getattr(model, "_outputs_struct", None)
        if isinstance(out_struct, dict) and len(out_struct) == len(model.outputs):
            outs, outputs = list(out_struct), list(out_struct.values())
        else:
            outs, outputs = output_names(model), list(model.outputs)
        return cls(names, [tuple(t.shape[1:]) for t in inputs], [str(t.dtype) for t in inputs],
                   [str(n) for n in outs], [tuple(t.shape[1:]) for t in outputs], isinstance(struct, dict),
                   isinstance(struct, (list, tuple)))

    def pack_x(self, xs: list[Any]) -> Any:
        if self.dict_inputs:
            return dict(zip(self.input_names, xs, strict=True))
        return xs[0] if len(xs) == 1 and not self.list_inputs else list(xs)

    def pack_y(self, ys: list[Any]) -> Any:
        return ys[0] if len(ys) == 1 else list(ys)

    def unpack_pred(self, pred: Any) -> list[Any]:
        if isinstance(pred, dict):
            return [pred[name] for name in self.output_names]
        return list(pred) if isinstance(pred, (list, tuple)) else [pred]


def output_names(model: Any) -> list[str]:
    """Keras's names for the outputs (a Functional model's output_names; a Sequential's last layer)."""
    declared = getattr(model, "output_names", None)
    if isinstance(declared, (list, tuple)) and len(declared) == len(model.outputs):
        return [str(name) for name in declared]
    names = []
    for i, tensor in enumerate(model.outputs):
        history = getattr(tensor, "_keras_history", None)
        names.append(str(getattr(getattr(history, "operation", None), "name", None) or f"output_{i}"))
    return names


def per_output(items: tuple[str, ...], names: list[str], option: str) -> Any:
    """`VALUE` (every output) or `NAME=VALUE` pairs (a dict by output name) from a repeated option."""
    pairs = parse_pairs(items, option)
    if not pairs:
        return None
    if pairs[0][0] is None:
        return [value for _, value in pairs]
    unknown = [name for name, _ in pairs if name not in names]
    if unknown:
        raise UsageError(f"{option} {unknown[0]}=...: the model has no output '{unknown[0]}'",
                         f"its outputs: {', '.join(names)}")
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        found.setdefault(str(name), []).append(value)
    return found


def _check_names(loss: Any, metrics: Any) -> None:
    """compile takes any string and fails at the first batch: check the names first."""
    import keras

    losses = loss.values() if isinstance(loss, dict) else [loss] if loss is not None else []
    for name in losses:
        keras.losses.get(name)
    groups = metrics.values() if isinstance(metrics, dict) else [metrics] if metrics else []
    for name in (m for group in groups for m in group):
        if name.lower() not in ("accuracy", "acc", "crossentropy", "ce"):  # resolved by compile alone
            keras.metrics.get(name)


def compile_for_eval(model: Any, side: ModelSide, losses: tuple[str, ...], loss_weights: tuple[str, ...],
                     metrics: tuple[str, ...]) -> str:
    """Compile with the saved settings, overridden by --loss / --loss-weight / --metric; the loss's display name."""
    config = (model.get_compile_config() if getattr(model, "compiled", False) else None) or {}
    names = side.output_names
    loss: Any = per_output(losses, names, "--loss")
    if isinstance(loss, list):
        if len(loss) > 1:
            raise UsageError("--loss: one loss for every output, or NAME=LOSS for each", f"outputs: {', '.join(names)}")
        loss = loss[0]
    elif isinstance(loss, dict):
        loss = {k: v[-1] for k, v in loss.items()}
    if loss is None and config.get("loss") is None:
        raise UsageError(f"{model.name}: the model has no saved loss",
                         "pass --loss NAME (e.g. mse, sparse_categorical_crossentropy)"
                         + ("; one per output as --loss NAME=LOSS" if len(names) > 1 else ""))
    wanted: Any = per_output(metrics, names, "--metric")
    if isinstance(wanted, list) and len(names) > 1:
        wanted = {name: list(wanted) for name in names}  # a plain --metric applies to every output
    weights = parse_loss_weights(loss_weights, names, config.get("loss_weights"))
    if loss is None and wanted is None and weights is None and config:
        return loss_name(model.loss)
    try:
        _check_names(loss, wanted)
        model.compile(optimizer="sgd", loss=loss if loss is not None else model.loss,
                      metrics=wanted if wanted is not None else config.get("metrics"),
                      loss_weights=weights if weights is not None else config.get("loss_weights"))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--loss/--metric: {str(exc).splitlines()[0][:200]}",
                         "losses: mse, binary_crossentropy, sparse_categorical_crossentropy, ...; "
                         "metrics: accuracy, mae, auc, precision, recall, ...") from None
    return loss_name(model.loss)


def parse_loss_weights(items: tuple[str, ...], names: list[str], saved: Any) -> Any:
    """--loss-weight NAME=W over the saved weights (1 where neither says); W alone for a one-output model."""
    given = per_output(items, names, "--loss-weight")
    if given is None:
        return None
    try:
        if isinstance(given, list):
            if len(names) > 1:
                raise UsageError("--loss-weight: name the output, as NAME=WEIGHT", f"outputs: {', '.join(names)}")
            return float(given[-1])
        weights = dict(saved) if isinstance(saved, dict) else {n: 1.0 for n in names}
        weights.update({k: float(v[-1]) for k, v in given.items()})
    except ValueError:
        raise UsageError("--loss-weight takes NAME=NUMBER (or NUMBER for a one-output model)") from None
    return {n: float(weights.get(n, 1.0)) for n in names}


def loss_name(ident: Any) -> str:
    if isinstance(ident, str):
        return ident
    if isinstance(ident, dict):
        return ", ".join(f"{k}={loss_name(v)}" for k, v in ident.items())
    if isinstance(ident, (list, tuple)):
        return ", ".join(loss_name(v) for v in ident)
    return str(getattr(ident, "name", None) or getattr(ident, "__name__", None) or type(ident).__name__)


def loss_of_output(ident: Any, names: list[str], i: int) -> Any:
    """The loss identifier of output `i` from a compiled loss (one for all, a list, or a dict by name)."""
    if isinstance(ident, dict):
        return ident.get(names[i])
    if isinstance(ident, (list, tuple)):
        return ident[i] if i < len(ident) else None
    return ident


def _from_logits(ident: Any) -> bool:
    get_config = getattr(ident, "get_config", None)
    return bool(get_config().get("from_logits", False)) if callable(get_config) else False


@dataclass
class _ClassifierSpec:
    output: int
    name: str
    classes: int
    kind: str  # sparse | onehot | binary
    logits: bool


def classifier_spec(loss_ident: Any, out_shape: tuple[int | None, ...], y_shape: tuple[int, ...],
                    output: int, name: str) -> _ClassifierSpec | None:
    """Whether an output is a classifier, from its loss and shapes (a regression output has none)."""
    if loss_ident is None:
        return None
    word = loss_name(loss_ident).lower().replace("_", "")
    classes = out_shape[-1] if out_shape else None
    logits = _from_logits(loss_ident)
    spec = None
    if "sparsecategorical" in word and classes:
        spec = _ClassifierSpec(output, name, classes, "sparse", logits)
    elif "categorical" in word and classes and classes > 1 and tuple(y_shape) == tuple(out_shape):
        spec = _ClassifierSpec(output, name, classes, "onehot", logits)
    elif ("binarycrossentropy" in word or "binaryfocal" in word) and classes == 1:
        spec = _ClassifierSpec(output, name, 2, "binary", logits)
    return spec if spec is not None and spec.classes <= MAX_CONFUSION_CLASSES else None


def _steps_per_call(row_bytes: int, batch: int, n: int) -> int:
    k = max(1, min(MAX_STEPS_PER_CALL, CHUNK_BYTES // max(1, row_bytes * batch)))
    return min(k, max(1, n // batch))


def chunks(arrays: list[np.ndarray], dtypes: list[np.dtype[Any]], batch: int, k: int
           ) -> Iterator[list[np.ndarray]]:
    """Rows in file order as [(steps, batch, ...) per array], then the last partial batch as (1, rest, ...)."""
    n = int(arrays[0].shape[0])
    full = n // batch
    step = 0
    while step < full:
        take = min(k, full - step)
        lo, hi = step * batch, (step + take) * batch
        yield [np.asarray(a[lo:hi], dtype=d).reshape(take, batch, *a.shape[1:]) for a, d in zip(arrays, dtypes,
                                                                                                   strict=True)]
        step += take
    if n % batch:
        yield [np.asarray(a[full * batch:], dtype=d)[None] for a, d in zip(arrays, dtypes, strict=True)]


def _read_ahead(it: Iterator[Any]) -> Iterator[Any]:
    """Slice the next chunk on a thread while TensorFlow runs this one (TF releases the GIL)."""
    sentinel = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, it, sentinel)
        while True:
            item = future.result()
            if item is sentinel:
                return
            future = pool.submit(next, it, sentinel)
            yield item


# ------------------------------------------------------------------------------------------ the run


def _named_options(opts: EvalOptions) -> bool:
    """Whether the data options name arrays per model input/output (NAME=KEY, or several)."""
    items = (*opts.x_keys, *opts.y_keys, *opts.x_files, *opts.y_files)
    if opts.x_cols or opts.y_cols:
        if opts.target is not None:
            raise UsageError("--target names the one label column; with --x-cols/--y-cols name the labels with --y-cols")
        return True
    return any("=" in item for item in items) or max(len(opts.x_keys), len(opts.y_keys), len(opts.x_files),
                                                     len(opts.y_files)) > 1


def _load_data(opts: EvalOptions, side: ModelSide | None) -> NamedData:
    """Single-input data before the model loads (a bad file fails before TensorFlow starts); named data after."""
    if side is None:
        data = load_labelled(opts.data, x=opts.x_files[0] if opts.x_files else None,
                             y=opts.y_files[0] if opts.y_files else None, x_key=opts.x_keys[0] if opts.x_keys else "x",
                             y_key=opts.y_keys[0] if opts.y_keys else "y", target=opts.target, drop=opts.drop,
                             classes=saved_class_names(opts.model), model=opts.arch or opts.model,
                             images=ImageOptions(opts.image_size, opts.color_mode, opts.max_length))
        if opts.val_split is not None:
            if data.folder and opts.seed is None:
                raise UsageError("--val-split on a folder takes the validation files of a split shuffled with "
                                 "--seed", "pass the --seed train used (train prints it)")
            data = split_validation(data, opts.val_split, opts.seed)[1]
        check_finite(data)
        return NamedData([data.x], [data.y], data.source, data.class_names)
    if opts.x_cols or opts.y_cols:
        x_items, y_items = opts.x_cols, opts.y_cols
    else:
        x_items, y_items = (opts.x_keys, opts.y_keys) if opts.data else (opts.x_files, opts.y_files)
    named = load_named(opts.data, x_items, y_items, side.input_names, side.output_names)
    if opts.val_split is not None:
        named = split_named(named, opts.val_split)[1]
    check_finite_named(named)
    return named


def check_fit(data: NamedData, side: ModelSide, model_loss: Any) -> None:
    """Every input array fits its model input and every label array its output and loss (exit 4 otherwise)."""
    n_in, n_out = len(side.input_names), len(side.output_names)
    if len(data.xs) != n_in or len(data.ys) != n_out:
        raise IncompatibleError(f"the model has {n_in} input(s) ({', '.join(side.input_names)}) and {n_out} "
                                f"output(s) ({', '.join(side.output_names)}); {data.source} gives one of each",
                                "name an array for each: --x-key NAME=KEY ... --y-key NAME=KEY ... (README 'eval')")
    for i in range(max(n_in, n_out)):
        a, b = min(i, n_in - 1), min(i, n_out - 1)
        loss = loss_name(loss_of_output(model_loss, side.output_names, b) or "")
        io_ = ModelIO(side.input_shapes[a], side.input_dtypes[a], side.output_shapes[b])
        where = data.source if n_in == n_out == 1 else f"{data.source} ({side.input_names[a]} / {side.output_names[b]})"
        pair = LabelledData(data.xs[a], data.ys[b], where)
        check_fits(pair, io_, loss or None)
        data.xs[a] = pair.x  # flat CSV rows reshaped to the input's shape


def evaluate(opts: EvalOptions, progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Evaluate `opts.model` on the data; see the module docstring."""
    t0 = time.perf_counter()
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (not {opts.batch_size})")
    named = _named_options(opts)
    data = None if named else _load_data(opts, None)

    from wtool.graph.model import import_keras, load_model

    import_keras()
    import tensorflow as tf

    with warnings.catch_warnings():  # Keras warns that an optimizer's saved slots are not loaded: eval needs none
        warnings.simplefilter("ignore")
        model = load_model(opts.model, unsafe=opts.unsafe, arch=opts.arch, compile=True)
    side = ModelSide.of(model)
    data = data or _load_data(opts, side)
    if opts.labels is None and data.class_names:  # saved with the model (string labels, a folder per class)
        opts = replace(opts, labels=tuple(data.class_names))
    shown_loss = compile_for_eval(model, side, opts.loss, opts.loss_weights, opts.metrics)
    check_fit(data, side, model.loss)
    specs = [spec for i, name in enumerate(side.output_names)
             if (spec := classifier_spec(loss_of_output(model.loss, side.output_names, i), side.output_shapes[i],
                                         tuple(data.ys[i].shape[1:]), i, name)) is not None]
    if opts.labels is not None and specs and not any(s.classes == len(opts.labels) for s in specs):
        raise IncompatibleError(f"--labels has {len(opts.labels)} names; the model has "
                                f"{' / '.join(str(s.classes) for s in specs)} classes",
                                "give one class name per line, in class-index order")

    n = len(data)
    batch = min(opts.batch_size or DEFAULT_BATCH_SIZE, n)
    x_dtypes = [numpy_dtype(d if d != "float64" else "float32") for d in side.input_dtypes]  # strings: bytes
    sparse = {s.output for s in specs if s.kind == "sparse"}
    y_dtypes = [np.dtype("int32" if i in sparse and y.dtype.kind in "iu" else "float32") for i, y in enumerate(data.ys)]
    row_bytes = sum(int(np.prod(x.shape[1:], dtype=np.int64)) * d.itemsize for x, d in zip(data.xs, x_dtypes,
                                                                                            strict=True))
    k = _steps_per_call(row_bytes, batch, n)

    confusions = [tf.Variable(tf.zeros((s.classes, s.classes), tf.int64), trainable=False) for s in specs]
    run_chunk = _make_function(tf, model, side, specs, confusions, data, x_dtypes, y_dtypes)
    _build_metrics(model, side, data, x_dtypes, y_dtypes)

    loss_sum, rate = _stream(run_chunk, data, x_dtypes + y_dtypes, batch, k, progress)
    results = {str(key): float(np.asarray(value)) for key, value in model.get_metrics_result().items()}
    results.pop("loss", None)
    metrics = {"loss": loss_sum / n, **results}
    classification = []
    for s, cm in zip(specs, confusions, strict=True):
        names = (list(opts.labels) if opts.labels is not None and len(opts.labels) == s.classes
                 else [str(i) for i in range(s.classes)])
        classification.append(Classification(s.name, names, cm.numpy()))
    return EvalReport(model=opts.model, data=data.source, rows=n, batch_size=batch, loss=shown_loss,
                      metrics=metrics, classification=classification, seconds=time.perf_counter() - t0,
                      rows_per_s=rate)


def _stream(run_chunk: Any, data: NamedData, dtypes: list[np.dtype[Any]], batch: int, k: int,
            progress: Callable[[int, int], None] | None) -> tuple[float, float]:
    """Every chunk through the function: (loss sum, rows/s after the first call of each chunk shape)."""
    n_in = len(data.xs)
    n = len(data)
    done, loss_sum = 0, 0.0
    steady_rows, steady_s, all_s = 0, 0.0, 0.0
    seen: set[tuple[int, ...]] = set()
    for arrays in _read_ahead(chunks(data.xs + data.ys, dtypes, batch, k)):
        t_call = time.perf_counter()
        loss_sum += float(run_chunk(int(arrays[0].shape[1]))(arrays[:n_in], arrays[n_in:]))
        elapsed = time.perf_counter() - t_call
        shape = arrays[0].shape
        rows = int(shape[0] * shape[1])
        all_s += elapsed
        if shape[:2] in seen:  # the first call of a shape traces: left out of the rate
            steady_rows += rows
            steady_s += elapsed
        seen.add(shape[:2])
        done += rows
        if progress is not None:
            progress(done, n)
    return loss_sum, round(steady_rows / steady_s if steady_s > 0 else n / max(all_s, 1e-9), 1)


def _build_metrics(model: Any, side: ModelSide, data: NamedData, x_dtypes: list[np.dtype[Any]],
                   y_dtypes: list[np.dtype[Any]]) -> None:
    """Build the compiled loss and metrics on one row, outside the tf.function (they make variables), then reset."""
    x = side.pack_x([np.asarray(a[:1], dtype=d) for a, d in zip(data.xs, x_dtypes, strict=True)])
    y = side.pack_y([np.asarray(a[:1], dtype=d) for a, d in zip(data.ys, y_dtypes, strict=True)])
    pred = model(x, training=False)
    try:
        model.compute_loss(x=x, y=y, y_pred=pred, training=False)
        model.compute_metrics(x, y, pred, sample_weight=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--loss/--metric: {str(exc).splitlines()[0][:200]}",
                         "metrics: accuracy, mae, mse, auc, precision, recall, ...") from None
    model.reset_metrics()


def _make_function(tf: Any, model: Any, side: ModelSide, specs: list[_ClassifierSpec], confusions: list[Any],
                   data: NamedData, x_dtypes: list[np.dtype[Any]], y_dtypes: list[np.dtype[Any]]) -> Any:
    """One concrete tf.function over chunks (steps, batch, ...): updates the metrics, returns the loss sum."""

    def classes_of(spec: _ClassifierSpec, y: Any, pred: Any) -> tuple[Any, Any]:
        if spec.kind == "binary":
            cut = 0.0 if spec.logits else 0.5
            return tf.reshape(tf.cast(y > 0.5, tf.int64), [-1]), tf.reshape(tf.cast(pred > cut, tf.int64), [-1])
        truth = tf.argmax(y, axis=-1) if spec.kind == "onehot" else tf.cast(y, tf.int64)
        return tf.reshape(truth, [-1]), tf.reshape(tf.argmax(pred, axis=-1), [-1])

    def run_chunk(xs: Any, ys: Any) -> Any:
        loss_sum = tf.constant(0.0, tf.float64)
        for i in tf.range(tf.shape(xs[0])[0]):
            x_list, y_list = [a[i] for a in xs], [b[i] for b in ys]
            x, y = side.pack_x(x_list), side.pack_y(y_list)
            pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=pred, training=False)
            model.compute_metrics(x, y, pred, sample_weight=None)
            preds = side.unpack_pred(pred)
            for spec, cm in zip(specs, confusions, strict=True):
                truth, guess = classes_of(spec, y_list[spec.output], preds[spec.output])
                cm.assign_add(tf.math.confusion_matrix(truth, guess, num_classes=spec.classes, dtype=tf.int64))
            loss_sum += tf.cast(loss, tf.float64) * tf.cast(tf.shape(x_list[0])[0], tf.float64)
        return loss_sum

    traced = tf.function(run_chunk)
    concrete: dict[int, Any] = {}

    def for_batch(batch: int) -> Any:
        """One trace per batch size (the full one and the last): Keras's per-output loss trackers weight each
        batch by its static size, which a None batch axis would turn into an unweighted mean."""
        if batch not in concrete:
            x_specs = [tf.TensorSpec([None, batch, *a.shape[1:]], d) for a, d in zip(data.xs, x_dtypes, strict=True)]
            y_specs = [tf.TensorSpec([None, batch, *a.shape[1:]], d) for a, d in zip(data.ys, y_dtypes, strict=True)]
            concrete[batch] = traced.get_concrete_function(x_specs, y_specs)
        return concrete[batch]

    return for_batch
