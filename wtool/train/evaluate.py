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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.train.data import LabelledData, ModelIO, check_finite, check_fits, load_labelled

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
    x: str | None = None
    y: str | None = None
    x_key: str = "x"
    y_key: str = "y"
    target: str | None = None
    arch: str | None = None
    unsafe: bool = False
    batch_size: int | None = None
    loss: str | None = None
    metrics: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None


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


def model_io(model: Any) -> ModelIO:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise IncompatibleError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                "eval handles models with one input and one output")
    inp, outp = model.inputs[0], model.outputs[0]
    return ModelIO(tuple(inp.shape[1:]), str(inp.dtype), tuple(outp.shape[1:]))


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


def compile_for_eval(model: Any, loss: str | None, metrics: tuple[str, ...]) -> str:
    """Compile with the saved settings, overridden by --loss / --metric; the loss's display name."""
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    config = config or {}
    saved_loss = config.get("loss")
    if loss is None and saved_loss is None:
        raise UsageError(f"{model.name}: the model has no saved loss",
                         "pass --loss NAME (e.g. mse, sparse_categorical_crossentropy)")
    if loss is not None or metrics or not config:
        try:
            import keras

            if loss is not None:  # compile takes any string and fails at the first batch: check names first
                keras.losses.get(loss)
            for name in metrics:
                if name.lower() not in ("accuracy", "acc", "crossentropy", "ce"):  # resolved by compile alone
                    keras.metrics.get(name)
            model.compile(optimizer="sgd", loss=loss or saved_loss, metrics=list(metrics) or config.get("metrics"),
                          loss_weights=config.get("loss_weights"))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--loss/--metric: {str(exc).splitlines()[0][:200]}",
                             "losses: mse, binary_crossentropy, sparse_categorical_crossentropy, ...; "
                             "metrics: accuracy, mae, auc, precision, recall, ...") from None
    return loss_name(model.loss)


def loss_name(ident: Any) -> str:
    if isinstance(ident, str):
        return ident
    if isinstance(ident, dict):
        return ", ".join(f"{k}={loss_name(v)}" for k, v in ident.items())
    if isinstance(ident, (list, tuple)):
        return ", ".join(loss_name(v) for v in ident)
    return str(getattr(ident, "name", None) or getattr(ident, "__name__", None) or type(ident).__name__)


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
    word = loss_name(loss_ident).lower().replace("_", "")
    classes = out_shape[-1] if out_shape else None
    logits = _from_logits(loss_ident)
    if "sparsecategorical" in word and classes:
        return _ClassifierSpec(output, name, classes, "sparse", logits)
    if "categorical" in word and classes and classes > 1 and tuple(y_shape) == tuple(out_shape):
        return _ClassifierSpec(output, name, classes, "onehot", logits)
    if ("binarycrossentropy" in word or "binaryfocal" in word) and classes == 1:
        return _ClassifierSpec(output, name, 2, "binary", logits)
    return None


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


def evaluate(opts: EvalOptions, progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Evaluate `opts.model` on the data; see the module docstring."""
    t0 = time.perf_counter()
    data = load_labelled(opts.data, x=opts.x, y=opts.y, x_key=opts.x_key, y_key=opts.y_key, target=opts.target)
    check_finite(data)
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (not {opts.batch_size})")

    from wtool.graph.model import import_keras, load_model

    import_keras()
    import tensorflow as tf

    with warnings.catch_warnings():  # Keras warns that an optimizer's saved slots are not loaded: eval needs none
        warnings.simplefilter("ignore")
        model = load_model(opts.model, unsafe=opts.unsafe, arch=opts.arch, compile=True)
    io_ = model_io(model)
    shown_loss = compile_for_eval(model, opts.loss, opts.metrics)
    check_fits(data, io_, shown_loss)
    out_name = output_names(model)[0]
    spec = classifier_spec(model.loss, io_.output_shape, tuple(data.y.shape[1:]), 0, out_name)
    if spec is not None and spec.classes > MAX_CONFUSION_CLASSES:
        spec = None
    if spec is not None and opts.labels is not None and len(opts.labels) != spec.classes:
        raise IncompatibleError(f"--labels has {len(opts.labels)} names; the model has {spec.classes} classes",
                                "give one class name per line, in class-index order")

    n = len(data)
    batch = min(opts.batch_size or DEFAULT_BATCH_SIZE, n)
    x_dtype = np.dtype(io_.input_dtype if io_.input_dtype != "float64" else "float32")
    y_dtype = np.dtype("int32" if spec is not None and spec.kind == "sparse" and data.y.dtype.kind in "iu"
                       else "float32")
    row_bytes = int(np.prod(data.x.shape[1:], dtype=np.int64)) * x_dtype.itemsize
    k = _steps_per_call(row_bytes, batch, n)

    confusion = tf.Variable(tf.zeros((spec.classes, spec.classes), tf.int64), trainable=False) if spec else None
    run_chunk = _make_function(tf, model, spec, confusion, data, x_dtype, y_dtype)
    _build_metrics(model, data, x_dtype, y_dtype)

    done = 0
    loss_sum = 0.0
    steady_rows, steady_s = 0, 0.0
    all_s = 0.0
    seen: set[tuple[int, ...]] = set()
    for xs, ys in _read_ahead(chunks([data.x, data.y], [x_dtype, y_dtype], batch, k)):
        t_call = time.perf_counter()
        loss_sum += float(run_chunk(xs, ys))
        rows = int(xs.shape[0] * xs.shape[1])
        elapsed = time.perf_counter() - t_call
        all_s += elapsed
        if xs.shape in seen:  # the first call of a shape traces: left out of the rate
            steady_rows += rows
            steady_s += elapsed
        seen.add(xs.shape)
        done += rows
        if progress is not None:
            progress(done, n)

    results = {str(key): float(np.asarray(value)) for key, value in model.get_metrics_result().items()}
    results["loss"] = loss_sum / n
    metrics = {"loss": results.pop("loss"), **results}
    classification = []
    if spec is not None and confusion is not None:
        names = list(opts.labels) if opts.labels is not None else [str(i) for i in range(spec.classes)]
        classification.append(Classification(spec.name, names, confusion.numpy()))
    return EvalReport(model=opts.model, data=data.source, rows=n, batch_size=batch, loss=shown_loss,
                      metrics=metrics, classification=classification, seconds=time.perf_counter() - t0,
                      rows_per_s=round(steady_rows / steady_s if steady_s > 0 else n / max(all_s, 1e-9), 1))


def _build_metrics(model: Any, data: LabelledData, x_dtype: np.dtype[Any], y_dtype: np.dtype[Any]) -> None:
    """Build the compiled loss and metrics on one row, outside the tf.function (they make variables), then reset."""
    x = np.asarray(data.x[:1], dtype=x_dtype)
    y = np.asarray(data.y[:1], dtype=y_dtype)
    pred = model(x, training=False)
    try:
        model.compute_loss(x=x, y=y, y_pred=pred, training=False)
        model.compute_metrics(x, y, pred, sample_weight=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--loss/--metric: {str(exc).splitlines()[0][:200]}",
                         "metrics: accuracy, mae, mse, auc, precision, recall, ...") from None
    model.reset_metrics()


def _make_function(tf: Any, model: Any, spec: _ClassifierSpec | None, confusion: Any, data: LabelledData,
                   x_dtype: np.dtype[Any], y_dtype: np.dtype[Any]) -> Any:
    """One concrete tf.function over chunks (steps, batch, ...): updates the metrics, returns the loss sum."""
    x_spec = tf.TensorSpec([None, None, *data.x.shape[1:]], x_dtype)
    y_spec = tf.TensorSpec([None, None, *data.y.shape[1:]], y_dtype)

    def classes_of(y: Any, pred: Any) -> tuple[Any, Any]:
        assert spec is not None
        if spec.kind == "binary":
            cut = 0.0 if spec.logits else 0.5
            return tf.reshape(tf.cast(y > 0.5, tf.int64), [-1]), tf.reshape(tf.cast(pred > cut, tf.int64), [-1])
        truth = tf.argmax(y, axis=-1) if spec.kind == "onehot" else tf.cast(y, tf.int64)
        return tf.reshape(truth, [-1]), tf.reshape(tf.argmax(pred, axis=-1), [-1])

    def run_chunk(xs: Any, ys: Any) -> Any:
        loss_sum = tf.constant(0.0, tf.float64)
        for i in tf.range(tf.shape(xs)[0]):
            x, y = xs[i], ys[i]
            pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=pred, training=False)
            model.compute_metrics(x, y, pred, sample_weight=None)
            if spec is not None:
                truth, guess = classes_of(y, pred)
                confusion.assign_add(tf.math.confusion_matrix(truth, guess, num_classes=spec.classes,
                                                              dtype=tf.int64))
            loss_sum += tf.cast(loss, tf.float64) * tf.cast(tf.shape(x)[0], tf.float64)
        return loss_sum

    return tf.function(run_chunk, input_signature=[x_spec, y_spec]).get_concrete_function()
