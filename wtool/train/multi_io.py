"""`wtool train` for models with several inputs or outputs (Functional, list or dict structured).

The data are named arrays (wtool.train.named_data, as `wtool eval` reads them); the model side is
wtool.train.evaluate's ModelSide. The loss is Keras's multi-output loss: one loss per output
(`--loss NAME=LOSS`, else the model's compiled ones), each resolved by Keras's compile_utils,
cast to float32, times its `--loss-weight` (compile's loss_weights), summed, plus the model's
own losses, as Keras's CompileLoss computes it. Per-output losses and metrics are logged with
Keras's names (`kind_loss`, `kind_accuracy`, `val_kind_loss`, ...). TensorFlow is imported
inside functions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.train.batches import Batches
from wtool.train.data import LabelledData, fmt_shape
from wtool.train.evaluate import ModelSide, check_fit, loss_name, parse_loss_weights, per_output
from wtool.train.named_data import NamedData, check_finite_named, load_named, split_named
from wtool.train.objectives import y_dtype
from wtool.train.options import TrainOptions
from wtool.train.steps import Functions


def named_options(opts: TrainOptions) -> bool:
    """Whether the data options name arrays per model input/output (NAME=KEY, several, or CSV column groups)."""
    if opts.x_cols or opts.y_cols:
        if opts.target is not None:
            raise UsageError("--target names the one label column; with --x-cols/--y-cols name the labels with --y-cols")
        if opts.drop:
            raise UsageError("--drop is for --target; with --x-cols/--y-cols name the columns each input takes")
        return True
    items = (*opts.x_keys, *opts.y_keys, *opts.x_files, *opts.y_files, *opts.losses, *opts.metrics)
    return bool(opts.loss_weights) or any("=" in item for item in items) or max(
        len(opts.x_keys), len(opts.y_keys), len(opts.x_files), len(opts.y_files), len(opts.losses)) > 1


def refuse_unnamed(opts: TrainOptions) -> None:
    """A model with several inputs or outputs given one x and y is refused (exit 4) before any data is read.

    Its inputs and outputs come from the file's config (no TensorFlow); a config that does not say is
    left to the load."""
    from wtool.store import open_model
    from wtool.store.shapes import io_shapes

    with open_model(opts.arch or opts.model) as mf:
        shapes = io_shapes(mf.config)
    if not shapes or (len(shapes["inputs"]) <= 1 and len(shapes["outputs"]) <= 1):
        return
    ins = [str(i.get("name")) for i in shapes["inputs"]]
    outs = [str(o.get("name")) for o in shapes["outputs"]]
    raise IncompatibleError(f"the model has {len(ins)} input{'s' * (len(ins) != 1)} ({', '.join(ins)}) and "
                            f"{len(outs)} output{'s' * (len(outs) != 1)} ({', '.join(outs)}); name an array for each",
                            f"--x-key {ins[0]}=KEY ... --y-key {outs[0]}=KEY ... for a .npz, --x-cols/--y-cols "
                            "NAME=COLS for a .csv (README 'train': several inputs or outputs)")


def _items(opts: TrainOptions, side: ModelSide) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The data options that name arrays; a .npz of a one-input (one-output) model defaults to key x (y)."""
    if opts.x_cols or opts.y_cols:
        return opts.x_cols, opts.y_cols
    if not opts.data:
        return opts.x_files, opts.y_files
    csv = Path(opts.data).suffix.lower() in (".csv", ".tsv")
    x_keys = opts.x_keys or (("x",) if len(side.input_names) == 1 and not csv else ())
    return x_keys, opts.y_keys or (("y",) if len(side.output_names) == 1 and not csv else ())


def load_data(opts: TrainOptions, side: ModelSide) -> tuple[NamedData, NamedData | None]:
    """Training (and validation) arrays named by the model's inputs and outputs, checked for NaN/Inf."""
    if opts.data is not None and Path(opts.data).is_dir():
        raise UsageError(f"{opts.data}: a folder of images feeds a model with one input and one output")
    x_items, y_items = _items(opts, side)
    data = load_named(opts.data, x_items, y_items, side.input_names, side.output_names)
    val = None
    if opts.val_data:
        if opts.data is None:
            raise UsageError("--val-data with --x/--y NAME=FILE.npy: the keys of a validation .npz are unknown",
                             "use --val-split, or give both as .npz with --x-key/--y-key NAME=KEY")
        val = load_named(opts.val_data, x_items, y_items, side.input_names, side.output_names)
    elif opts.val_split:
        data, val = split_named(data, opts.val_split)
    check_finite_named(data)
    if val is not None:
        check_finite_named(val)
    return data, val


def refuse_distributed(distributed: bool) -> None:
    if distributed:
        raise IncompatibleError("--strategy mirrored/multi-worker trains models with one input and one output",
                                "train a model with several inputs or outputs with --strategy one-device")


# ------------------------------------------------------------------------------------------ objective


@dataclass
class Objective:
    """The losses, weights and metrics of every output, with Keras's names."""

    losses: list[tuple[int, Any, float | None]]  # (output index, loss object, weight or None)
    compile_args: dict[str, Any]  # loss / loss_weights / metrics for model.compile (saved with OUT)
    display: str
    train_trackers: list[Any]  # one Mean per loss (several outputs only): kind_loss, ...
    val_trackers: list[Any]
    train_metrics: list[tuple[int, Any]]  # (output index, metric)
    val_metrics: list[tuple[int, Any]]

    @property
    def logged_train(self) -> list[Any]:
        """Every train-side metric object, in Keras's order: per-output losses, then metrics."""
        return self.train_trackers + [m for _, m in self.train_metrics]

    @property
    def logged_val(self) -> list[Any]:
        return self.val_trackers + [m for _, m in self.val_metrics]


def _by_output(saved: Any, names: list[str]) -> dict[str, Any]:
    """A compiled setting (one for all, a list in output order, or a dict by name) as a dict by output name."""
    if saved is None:
        return {}
    if isinstance(saved, dict) and "class_name" not in saved:
        return {n: saved[n] for n in names if saved.get(n) is not None}
    if isinstance(saved, (list, tuple)):
        if len(saved) == len(names):
            return {n: v for n, v in zip(names, saved, strict=True) if v is not None}
        return {n: saved[0] for n in names} if len(saved) == 1 else {}
    return {n: saved for n in names}


def _once(given: dict[str, list[str]], option: str) -> dict[str, str]:
    twice = [name for name, values in given.items() if len(values) > 1]
    if twice:
        raise UsageError(f"{option} {twice[0]}=...: given twice ({', '.join(given[twice[0]])})",
                         f"give {option} once per output")
    return {name: values[0] for name, values in given.items()}


def _loss_idents(opts: TrainOptions, config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    given = per_output(opts.losses, names, "--loss")
    saved = _by_output(config.get("loss"), names)
    if isinstance(given, list):
        if len(given) > 1:
            raise UsageError("--loss: one loss for every output, or NAME=LOSS for each", f"outputs: {', '.join(names)}")
        return {n: given[0] for n in names}
    chosen = {**saved, **(_once(given, "--loss") if given else {})}
    missing = [n for n in names if n not in chosen]
    if len(missing) == len(names):
        raise UsageError("the model has no saved loss", "pass --loss LOSS for every output, or --loss NAME=LOSS for "
                         f"each of {', '.join(names)}")
    if missing:
        raise UsageError(f"no loss for the output '{missing[0]}' (the model's saved loss does not name it)",
                         f"add --loss {missing[0]}=LOSS")
    return chosen


def _metric_idents(opts: TrainOptions, config: dict[str, Any], names: list[str]) -> dict[str, list[Any]]:
    given = per_output(opts.metrics, names, "--metric")
    if isinstance(given, list):  # a plain --metric applies to every output (as in eval)
        return {n: list(given) for n in names}
    if isinstance(given, dict):
        return given
    saved = _by_output(config.get("metrics"), names)
    return {n: list(v) if isinstance(v, (list, tuple)) else [v] for n, v in saved.items()}


def _fresh(keras: Any, ident: Any) -> Any:
    return keras.metrics.deserialize(ident) if isinstance(ident, dict) else ident


def resolve_objective(opts: TrainOptions, config: dict[str, Any] | None, side: ModelSide,
                      data: NamedData) -> Objective:
    """Losses, loss weights and metrics per output from the options over the compiled ones, as Keras resolves them."""
    from keras.src.trainers import compile_utils

    from wtool.graph.model import import_keras

    keras = import_keras()
    config = config or {}
    names = side.output_names
    several = len(names) > 1
    idents = _loss_idents(opts, config, names)
    saved_weights = config.get("loss_weights")
    weights = parse_loss_weights(opts.loss_weights, names, saved_weights)
    if weights is None and saved_weights is not None:  # the compiled weights, when no --loss-weight
        by_name = _by_output(saved_weights, names)
        weights = {n: float(by_name.get(n, 1.0)) for n in names}
    elif weights is not None and not isinstance(weights, dict):
        weights = {n: float(weights) for n in names}
    samples = [(np.asarray(y[:2]), np.zeros((len(y[:2]), *[d or 1 for d in shape]), "float32"))
               for y, shape in zip(data.ys, side.output_shapes, strict=True)]
    losses: list[tuple[int, Any, float | None]] = []
    for i, name in enumerate(names):
        ident = keras.losses.deserialize(idents[name]) if isinstance(idents[name], dict) else idents[name]
        try:
            obj = compile_utils.get_loss(ident, *samples[i])
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--loss {name}={loss_name(ident)}: not a Keras loss ({str(exc).splitlines()[0][:120]})",
                             "e.g. mse, mae, binary_crossentropy, sparse_categorical_crossentropy") from None
        _try(obj, samples[i], f"--loss {name}={loss_name(ident)}", side.output_shapes[i])
        idents[name] = ident
        losses.append((i, obj, None if weights is None else float(weights.get(name, 1.0))))
    metric_idents = _metric_idents(opts, config, names)
    train_m, val_m = [], []
    for i, name in enumerate(names):
        for ident in metric_idents.get(name, []):
            try:
                pair = [compile_utils.get_metric(_fresh(keras, ident), *samples[i]) for _ in range(2)]
            except (ValueError, TypeError) as exc:
                raise UsageError(f"--metric {name}={ident}: not a Keras metric ({str(exc).splitlines()[0][:120]})",
                                 "e.g. accuracy, mae, mse, auc, precision, recall") from None
            _try(pair[0].update_state, samples[i], f"--metric {name}={ident}", side.output_shapes[i])
            pair[0].reset_state()
            for metric in pair:
                metric.name = f"{name}_{metric.name}" if several else metric.name
            train_m.append((i, pair[0]))
            val_m.append((i, pair[1]))
    trackers = [[keras.metrics.Mean(name=f"{names[i]}_loss") for i, _, _ in losses] if several else []
                for _ in range(2)]
    logged = [m.name for m in trackers[0]] + [m.name for _, m in train_m]
    if len(set(logged)) != len(logged) or "loss" in logged:
        raise UsageError(f"metric names must differ from each other and from 'loss' (got {', '.join(logged)})")
    compile_args = {"loss": dict(idents), "loss_weights": weights,
                    "metrics": {n: [_fresh(keras, m) for m in ms] for n, ms in metric_idents.items() if ms} or None}
    display = ", ".join(f"{n}={loss_name(idents[n])}" + (f" x{weights[n]:g}" if weights else "") for n in names)
    return Objective(losses, compile_args, display, trackers[0], trackers[1], train_m, val_m)


def _try(call: Any, sample: tuple[np.ndarray, np.ndarray], what: str, out_shape: tuple[int | None, ...]) -> None:
    """A loss or metric that cannot take these labels fails here, on two rows, not inside the compiled loop."""
    y = sample[0]
    try:
        call(*sample)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, TypeError or TF's InvalidArgumentError
        raise IncompatibleError(f"{what}: does not fit the output {fmt_shape((None, *out_shape))} and labels of shape "
                                f"{fmt_shape(tuple(y.shape[1:]))} ({str(exc).splitlines()[0][:120]})",
                                "integer class labels take sparse_categorical_crossentropy / accuracy") from None


def check_data_fits(data: NamedData, val: NamedData | None, side: ModelSide, objective: Objective) -> None:
    """Every array fits its model input or output and loss (exit 4 otherwise), as eval checks them."""
    idents = objective.compile_args["loss"]
    for part in (data, val):
        if part is not None:
            check_fit(part, side, idents)


def label_dtypes(data: NamedData, side: ModelSide, objective: Objective) -> list[str]:
    idents = objective.compile_args["loss"]
    return [y_dtype(y, loss_name(idents[name])) for y, name in zip(data.ys, side.output_names, strict=True)]


def input_dtypes(side: ModelSide) -> list[str]:
    """Each input as the model declares it (int64 stays int64), float64 fed as float32."""
    return [d if d != "float64" else "float32" for d in side.input_dtypes]


def row_bytes(data: NamedData, x_dtypes: list[str]) -> int:
    return sum(int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(d).itemsize
               for x, d in zip(data.xs, x_dtypes, strict=True))


# ------------------------------------------------------------------------------------ batches, steps


class NamedBatches(Batches):
    """Batches of every input and label array through the same per-epoch permutation."""

    def __init__(self, data: NamedData, batch_size: int, steps_per_call: int, x_dtypes: list[str],
                 y_dtypes: list[str], shuffle: bool, seed: int) -> None:
        super().__init__(LabelledData(data.xs[0], data.ys[0], data.source), batch_size, steps_per_call, x_dtypes[0],
                         y_dtypes[0], shuffle, seed)
        self.arrays = [*data.xs, *data.ys]
        self.dtypes = [np.dtype(d) for d in (*x_dtypes, *y_dtypes)]
        self.n_inputs = len(data.xs)

    def _group(self, order: np.ndarray | None, lo: int, hi: int, shape: tuple[int, ...]
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        arrays = [self._take(a, order, lo, hi, d).reshape(*shape, *a.shape[1:])
                  for a, d in zip(self.arrays, self.dtypes, strict=True)]
        return arrays[:self.n_inputs], arrays[self.n_inputs:]

    def chunks(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, Any, Any]]:
        """(steps, [xs per input], [ys per output]), each shaped (steps, batch, ...), as Batches.chunks."""
        order = self.order(epoch)
        step = start_step
        while step < self.full:
            k = min(self.k, self.full - step)
            yield k, *self._group(order, step * self.b, (step + k) * self.b, (k, self.b))
            step += k
        if self.rem and step <= self.full:
            yield 1, *self._group(order, self.full * self.b, self.n, (1, self.n - self.full * self.b))


def make_functions(model: Any, side: ModelSide, objective: Objective, optimizer: Any, trainable: list[Any],
                   data: NamedData, x_dtypes: list[str], y_dtypes: list[str], jit: bool, with_eval: bool) -> Functions:
    """The train and eval tf.functions of wtool.train.steps, over lists of arrays, with per-output losses."""
    import tensorflow as tf

    x_specs = [tf.TensorSpec([None, None, *a.shape[1:]], d) for a, d in zip(data.xs, x_dtypes, strict=True)]
    y_specs = [tf.TensorSpec([None, None, *a.shape[1:]], d) for a, d in zip(data.ys, y_dtypes, strict=True)]

    def step_loss(xs: list[Any], ys: list[Any], training: bool) -> tuple[Any, list[Any], list[Any]]:
        preds = side.unpack_pred(model(side.pack_x(xs), training=training))
        parts = [tf.cast(fn(ys[i], preds[i]), tf.float32) for i, fn, _ in objective.losses]
        weighted = [p if w is None else p * w for p, (_, _, w) in zip(parts, objective.losses, strict=True)]
        loss = tf.add_n(weighted) if len(weighted) > 1 else weighted[0]
        if model.losses:
            loss = loss + tf.add_n([tf.cast(e, loss.dtype) for e in model.losses])
        return loss, parts, preds

    def track(trackers: list[Any], metrics: list[tuple[int, Any]], parts: list[Any], ys: list[Any],
              preds: list[Any], rows: Any) -> None:
        for tracker, part in zip(trackers, parts, strict=False):
            tracker.update_state(part, sample_weight=rows)  # a batch counts by its rows, as the total loss
        for i, metric in metrics:
            metric.update_state(ys[i], preds[i])

    def train_chunk(xs: Any, ys: Any) -> Any:
        ok = tf.constant(True)
        done = tf.constant(0)
        loss_sum = tf.constant(0.0)
        for i in tf.range(tf.shape(xs[0])[0]):
            x, y = [a[i] for a in xs], [b[i] for b in ys]
            with tf.GradientTape() as tape:
                loss, parts, preds = step_loss(x, y, True)
                scaled = optimizer.scale_loss(loss)  # as Keras's train_step: a LossScaleOptimizer's scale, else 1
            if trainable:
                optimizer.apply(tape.gradient(scaled, trainable), trainable)
            rows = tf.cast(tf.shape(x[0])[0], tf.float32)
            track(objective.train_trackers, objective.train_metrics, parts, y, preds, rows)
            if not tf.math.is_finite(loss):  # as steps.train_chunk: the call ends at a non-finite loss
                ok = tf.constant(False)
                break
            done += 1
            loss_sum += tf.cast(loss, tf.float32) * rows
        return tf.stack([tf.cast(ok, tf.float64), tf.cast(done, tf.float64), tf.cast(loss_sum, tf.float64)])

    def eval_chunk(xs: Any, ys: Any) -> Any:
        loss_sum = tf.constant(0.0)
        for i in tf.range(tf.shape(xs[0])[0]):
            x, y = [a[i] for a in xs], [b[i] for b in ys]
            loss, parts, preds = step_loss(x, y, False)
            rows = tf.cast(tf.shape(x[0])[0], tf.float32)
            track(objective.val_trackers, objective.val_metrics, parts, y, preds, rows)
            loss_sum += tf.cast(loss, tf.float32) * rows
        return loss_sum

    train_fn = tf.function(train_chunk, input_signature=[x_specs, y_specs], jit_compile=jit or None)
    eval_fn = tf.function(eval_chunk, input_signature=[x_specs, y_specs], jit_compile=jit or None)
    return Functions(train_fn.get_concrete_function(), eval_fn.get_concrete_function() if with_eval else None)
