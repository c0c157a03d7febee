"""The training loop behind `wtool train`: tf.GradientTape inside a tf.function.

Several train steps run per tf.function call (as Keras's `steps_per_execution`), batches
are numpy slices through a per-epoch index permutation (seeded by seed and epoch, so a
resumed run sees the same batches), and Keras's own optimizers, schedules, losses and
metrics are used by name. TensorFlow and Keras are imported inside functions only.

The library knows nothing of click: `train(options, reporter)` returns a TrainResult and
raises WtoolError subclasses; the command renders. This module is the run's order of steps;
each step's knowledge lives in its own module of `wtool.train` (see the package docstring).
"""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import DivergedError, InternalError, Interrupted, UsageError
from wtool.fileio import check_model_input
from wtool.graph import text_folders
from wtool.graph.folders import ImageOptions
from wtool.graph.model import import_keras
from wtool.graph.preprocessing import check_output_keeps_vocabularies
from wtool.train import distribute, multi_io, precision, steps
from wtool.train.batches import CHUNK_BYTES, MAX_STEPS_PER_CALL, Batches, prefetch
from wtool.train.checkpoints import (
    RunCheckpoints,
    SignalGuard,
    check_epochs_left,
    default_checkpoint_dir,
    fmt_resume,
    latest_checkpoint,
    read_checkpoint_meta,
    resume,
)
from wtool.train.data import (
    LabelledData,
    check_finite,
    check_fits,
    load_labelled,
    model_io,
    saved_class_names,
    split_validation,
    validation_cut,
)
from wtool.train.evaluate import ModelSide
from wtool.train.freezing import LayerNode, apply_freezing, frozen_weights, layer_tree, weight_names
from wtool.train.history import RunState, steady_rate, write_history
from wtool.train.lora import LoraRun, before_save, train_saved_lora_as_plain
from wtool.train.named_data import NamedData
from wtool.train.objectives import monitor_mode, resolve_loss, resolve_metrics, y_dtype
from wtool.train.optim import (
    build_optimizer,
    check_learning_rate,
    current_lr,
    describe_optimizer,
    saved_optimizer,
)
from wtool.train.options import (
    Reporter,
    RunPlan,
    TrainOptions,
    TrainResult,
    check_options,
    resolve_out,
)
from wtool.train.saved import read_saved_training, restore_optimizer_state


def train(opts: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train the model in `opts.model` on the data and write `opts.out` (atomically). See module doc."""
    reporter = reporter or Reporter()
    t_start = time.perf_counter()
    check_options(opts)
    precision.check_options(opts.mixed_precision, opts.strategy, opts.lora)
    out_path = resolve_out(opts)
    check_model_input(opts.model)
    ckpt_dir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else default_checkpoint_dir(out_path)
    # Data first: a bad file fails fast, before TensorFlow starts. Arrays named by the model's inputs and
    # outputs are read once the model is loaded (multi_io).
    named = multi_io.named_options(opts)
    multi_io.refuse_distributed(named and opts.strategy in ("mirrored", "multi-worker"))
    if not named:
        multi_io.refuse_unnamed(opts)
    data, val = (None, None) if named else _load_data(opts)

    # The strategy comes before TensorFlow runs anything (devices and collectives are fixed at start-up);
    # the model, optimizer, metrics and checkpoints are then made inside its scope.
    dist = distribute.make_strategy(opts.strategy, opts.workers, opts.task_index, replicas=opts.replicas,
                                    timeout=opts.collective_timeout)
    try:
        with dist.scope():
            return _train_in_scope(opts, reporter, dist, data, val, out_path, ckpt_dir, t_start)
    except Exception as exc:
        if dist.workers > 1 and distribute.is_cluster_failure(exc):
            raise distribute.cluster_error(exc, dist.cluster, dist.timeout, checkpoint=latest_checkpoint(ckpt_dir),
                                           resume=fmt_resume(opts, ckpt_dir)) from exc
        raise
    finally:
        dist.cleanup()


def _load_data(opts: TrainOptions) -> tuple[LabelledData, LabelledData | None]:
    saved_classes = saved_class_names(opts.model)  # string labels / class folders encode as first learnt
    images = ImageOptions(opts.image_size, opts.color_mode, opts.max_length)
    data = load_labelled(opts.data, x=opts.x, y=opts.y, x_key=opts.x_key, y_key=opts.y_key, target=opts.target,
                         drop=opts.drop, classes=saved_classes, model=opts.arch or opts.model, images=images)
    data.class_names = data.class_names or saved_classes  # carried into OUT either way
    val: LabelledData | None = None
    if opts.val_data:
        vpath = Path(opts.val_data)
        if vpath.suffix.lower() == ".csv":
            val = load_labelled(opts.val_data, target=opts.target, drop=opts.drop, classes=data.class_names)
        else:
            val = load_labelled(opts.val_data, x_key=opts.x_key, y_key=opts.y_key, classes=data.class_names,
                                model=opts.arch or opts.model, images=images)
    elif opts.val_split:
        if data.folder:  # shuffled with the run's seed, known once the workers agree (below)
            validation_cut(len(data), opts.val_split, folder=True)
        else:
            data, val = split_validation(data, opts.val_split)
    check_finite(data)
    if val is not None:
        check_finite(val)
    return data, val


def _train_in_scope(opts: TrainOptions, reporter: Reporter, dist: distribute.Distribution,
                    data: LabelledData | NamedData | None, val: LabelledData | NamedData | None, out_path: Path,
                    ckpt_dir: Path, t_start: float) -> TrainResult:
    precision.check_distribution(opts.mixed_precision, dist.distributed)
    latest, meta = read_checkpoint_meta(ckpt_dir) if opts.resume else (None, {})
    if latest is not None:
        check_epochs_left(latest, meta, opts.epochs)
        precision.check_resume(meta, opts.mixed_precision)
    loaded = None
    if data is None:  # several inputs or outputs: the arrays are named by the model's inputs and outputs
        multi_io.refuse_distributed(dist.distributed)
        loaded = load_train_model(opts)
        data, val = multi_io.load_data(opts, ModelSide.of(loaded))
    seed = _agree_on_seed(opts, dist, meta, data, val)
    if isinstance(data, LabelledData) and data.folder and opts.val_split and val is None:
        data, val = split_validation(data, opts.val_split, seed)  # Keras's shuffled split of the files
    m = prepare_model(opts, data, val, seed, loaded)
    feed = _prepare_feed(opts, dist, m, data, val, seed)
    ckpts = RunCheckpoints(m.model, m.model.optimizer, m.train_metrics, opts.early_stopping is not None, dist, ckpt_dir,
                           out_path, opts.keep_checkpoints)
    state = RunState()
    if latest is not None:
        state = resume(ckpts, latest, meta, opts, len(data), feed.batch, m.optimizer)
        m.notes.insert(0, f"resumed from {latest} (epoch {state.start_epoch + 1}, step {state.start_step})")
    monitor = _check_monitor(opts, m, val)
    snapshot = {path: np.array(w.numpy(), copy=True) for path, w in m.frozen}

    run = _Run(opts, reporter, dist, m, feed, ckpts, state, seed=seed, monitor=monitor, rows=len(data),
               val_rows=len(val) if val is not None else 0)
    run.run_epochs()
    restored_best = run.restore_best()
    check_frozen_unchanged(m.frozen, snapshot)
    if m.lora is not None:
        before_save(m.model, m.lora)
    saved = m.model if m.original is None else precision.copy_back(m.model, m.original)
    _write_outputs(opts, dist, saved, out_path, ckpt_dir, state.history, data.class_names,
                   automatic_dir=bool(meta.get("automatic_dir")))
    return TrainResult(run.summary(restored_best, out_path, t_start), state.history)


def _agree_on_seed(opts: TrainOptions, dist: distribute.Distribution, meta: dict[str, Any],
                   data: LabelledData | NamedData, val: LabelledData | NamedData | None) -> int:
    """The run's seed (the checkpoint's on resume; drawn when not given), the same on every worker, applied."""
    seed = int(meta["seed"]) if meta else (opts.seed if opts.seed is not None else secrets.randbelow(2**31))
    if dist.workers > 1:
        seed = distribute.agree_on_run(dist, seed, opts.seed is None and not meta, rows=len(data),
                                       validation_rows=len(val) if val is not None else 0, batch_size=opts.batch_size)
    import_keras().utils.set_random_seed(seed)
    return seed


@dataclass
class PreparedModel:
    """The model and everything that trains it, made inside the strategy's scope."""

    model: Any
    nodes: dict[str, LayerNode]
    trainable: list[Any]
    frozen: list[tuple[str, Any]]
    optimizer: Any
    loss_obj: Any
    loss_name: str
    train_metrics: list[Any]
    val_metrics: list[Any]
    restored_steps: int
    notes: list[str]
    lora: LoraRun | None = None
    objective: multi_io.Objective | None = None  # several inputs or outputs
    side: ModelSide | None = None
    original: Any = None  # --mixed-precision: the model as loaded (float32 policies), written as OUT


def load_train_model(opts: TrainOptions) -> Any:
    """MODEL as a Keras model (its --arch, --unsafe), before anything is frozen or compiled."""
    from wtool.graph.model import load_model

    return load_model(opts.model, unsafe=opts.unsafe, arch=opts.arch)


def _objectives(opts: TrainOptions, config: dict[str, Any] | None, model: Any, data: LabelledData | NamedData,
                val: LabelledData | NamedData | None) -> tuple[dict[str, Any], Any, str, list[Any], list[Any],
                                                              multi_io.Objective | None]:
    """(compile arguments, loss object, loss name, train metrics, validation metrics, objective), data checked."""
    if isinstance(data, NamedData):
        side = ModelSide.of(model)
        obj = multi_io.resolve_objective(opts, config, side, data)
        multi_io.check_data_fits(data, val if isinstance(val, NamedData) else None, side, obj)
        return obj.compile_args, None, obj.display, obj.logged_train, obj.logged_val, obj
    io_ = model_io(model)
    pred_sample = np.zeros((1, *[d or 1 for d in io_.output_shape]), dtype="float32")
    y_sample = np.asarray(data.y[:1])
    loss_ident, loss_obj, loss_name = resolve_loss(opts, config, y_sample, pred_sample)
    check_fits(data, io_, loss_name)
    if isinstance(val, LabelledData):
        check_fits(val, io_, loss_name)
    metric_idents, train_metrics, val_metrics = resolve_metrics(opts, config, y_sample, pred_sample)
    return ({"loss": loss_ident, "metrics": metric_idents or None}, loss_obj, loss_name, train_metrics, val_metrics,
            None)


def prepare_model(opts: TrainOptions, data: LabelledData | NamedData, val: LabelledData | NamedData | None,
                   seed: int, model: Any = None) -> PreparedModel:
    """Load, freeze (or add LoRA adapters), resolve loss and metrics, build the optimizer (continuing the saved
    state), compile."""
    model = model if model is not None else load_train_model(opts)
    check_output_keeps_vocabularies(model, str(resolve_out(opts)))  # a .h5 would drop a TextVectorization's
    original, policy = None, ""
    if opts.mixed_precision:
        original = model
        model, policy = precision.rebuild(model, opts.mixed_precision, opts.unsafe)
    saved = read_saved_training(opts.model, arch=opts.arch)
    notes = train_saved_lora_as_plain(model) if opts.lora is None else []
    saved_trainable = list(model.trainable_variables)  # the saved optimizer state's order
    model, nodes, lora_run = _freeze_or_adapt(opts, model, seed, notes)
    compile_args, loss_obj, loss_name, train_metrics, val_metrics, objective = _objectives(
        opts, saved.compile_config, model, data, val)
    trainable = list(model.trainable_variables)
    frozen = lora_run.frozen if lora_run is not None else frozen_weights(model, nodes)

    batch = min(opts.batch_size, len(data))
    steps_per_epoch = -(-len(data) // batch)

    base = saved_optimizer(saved.compile_config)
    optimizer = build_optimizer(opts, base, opts.epochs * steps_per_epoch, steps_per_epoch)
    with import_keras().name_scope(optimizer.name, caller=optimizer):
        optimizer.build(trainable)
    state = saved.optimizer_state
    restored_steps = 0
    if state is not None and state.iterations > 0 and lora_run is not None:
        notes.append(f"--lora: the saved optimizer state ({state.iterations} steps) is not used (new adapters)")
    elif state is not None and state.iterations > 0 and not opts.reset_optimizer and not opts.resume:
        notes += restore_optimizer_state(optimizer, state, base, saved_trainable, trainable)
        restored_steps = int(optimizer.iterations.numpy())
        notes.insert(0, f"continuing the saved optimizer state ({restored_steps} steps done)")
    elif state is not None and state.iterations > 0 and opts.reset_optimizer:
        notes.append(f"--reset-optimizer: the saved optimizer state ({state.iterations} steps) is not used")

    check_learning_rate(optimizer, opts.epochs * steps_per_epoch, restored_steps)
    # the steps use model.optimizer: a LossScaleOptimizer around `optimizer` for float16
    model.compile(optimizer=precision.wrap_optimizer(optimizer, opts.mixed_precision, trainable), **compile_args)
    if original is not None:
        original.compile(optimizer=optimizer, **compile_args)
        notes.append(precision.describe(policy, model.optimizer))
    return PreparedModel(model, nodes, trainable, frozen, optimizer, loss_obj, loss_name, train_metrics, val_metrics,
                  restored_steps, notes, lora_run, objective, ModelSide.of(model) if objective is not None else None,
                  original)


def _freeze_or_adapt(opts: TrainOptions, model: Any, seed: int,
                     notes: list[str]) -> tuple[Any, dict[str, LayerNode], LoraRun | None]:
    """--lora: adapters on the chosen layers, the rest frozen (wtool.train.lora); else --freeze/--unfreeze."""
    from wtool.train import lora

    if opts.lora is None:
        nodes = layer_tree(model)
        apply_freezing(nodes, opts.freeze, opts.unfreeze)
        train_saved_lora_as_plain(model)  # again: a layer's trainable flag re-sets its variables'
        return model, nodes, None
    model = lora.rebuild_without_lora(model, opts.unsafe)
    nodes = layer_tree(model)
    run = lora.enable(model, nodes, opts.lora, seed, weight_names(model))
    notes.append(run.note())
    return model, nodes, run


@dataclass
class _Feed:
    """How data reaches the model: batches, steps per call, XLA or not, and the compiled calls."""

    batches: Any  # Batches, or distribute.ShardedBatches
    val_batches: Any
    batch: int
    steps_per_epoch: int
    steps_per_call: int
    jit: bool
    fns: Any  # steps.Functions or distribute.DistributedFunctions


def _steps_per_call(opts: TrainOptions, x_row: int, batch: int, n: int) -> int:
    """Whole epoch for small data, capped by rows in memory per call."""
    if opts.steps_per_execution:
        k = opts.steps_per_execution
    else:
        k = max(1, min(MAX_STEPS_PER_CALL, CHUNK_BYTES // max(1, x_row * batch)))
    return min(k, max(1, n // batch))


def _named_feed(opts: TrainOptions, m: PreparedModel, data: NamedData, val: NamedData | None, seed: int) -> _Feed:
    """Batches and compiled steps over every input and output array (multi_io)."""
    assert m.side is not None and m.objective is not None
    n = len(data)
    batch = min(opts.batch_size, n)
    steps_per_epoch = -(-n // batch)
    x_dtypes = multi_io.input_dtypes(m.side)
    y_dtypes = multi_io.label_dtypes(data, m.side, m.objective)
    k = _steps_per_call(opts, multi_io.row_bytes(data, x_dtypes), batch, n)
    batches = multi_io.NamedBatches(data, batch, k, x_dtypes, y_dtypes, opts.shuffle, seed)
    val_batches = (multi_io.NamedBatches(val, min(batch, len(val)), k, x_dtypes, y_dtypes, False, seed)
                   if val is not None else None)
    jit = opts.jit == "on" or (opts.jit == "auto" and steps.auto_jit(m.nodes, steps_per_epoch))
    fns = multi_io.make_functions(m.model, m.side, m.objective, m.model.optimizer, m.trainable, data, x_dtypes,
                                  y_dtypes, jit, val is not None)
    return _Feed(batches, val_batches, batch, steps_per_epoch, k, jit, fns)


def _prepare_feed(opts: TrainOptions, dist: distribute.Distribution, m: PreparedModel, data: LabelledData | NamedData,
                  val: LabelledData | NamedData | None, seed: int) -> _Feed:
    if isinstance(data, NamedData):
        return _named_feed(opts, m, data, val if isinstance(val, NamedData) else None, seed)
    assert val is None or isinstance(val, LabelledData)
    n = len(data)
    batch = min(opts.batch_size, n)
    steps_per_epoch = -(-n // batch)
    io_ = model_io(m.model)
    x_row = int(np.prod(data.x.shape[1:], dtype=np.int64)) * text_folders.numpy_dtype(io_.input_dtype).itemsize
    k = _steps_per_call(opts, x_row, batch, n)
    x_dtype = io_.input_dtype if io_.input_dtype != "float64" else "float32"
    y_type = y_dtype(data.y, m.loss_name)
    batches: Any = Batches(data, batch, k, x_dtype, y_type, opts.shuffle, seed)
    val_batches: Any = Batches(val, min(batch, len(val)), k, x_dtype, y_type, False, seed) if val is not None else None
    jit = opts.jit == "on" or (opts.jit == "auto" and steps.auto_jit(m.nodes, steps_per_epoch))
    if jit and text_folders.takes_text(io_.input_dtype):  # XLA compiles no string ops (TextVectorization)
        if opts.jit == "on":
            raise UsageError("--jit on: XLA cannot compile the string ops of a text model", "leave --jit at auto")
        jit = False
    fns: Any
    if dist.distributed:  # the same global batches, each replica taking its slice of every one
        batches = distribute.ShardedBatches(batches, dist)
        if val_batches is not None:
            val_batches = distribute.ShardedBatches(val_batches, dist)
        fns = distribute.make_functions(dist, m.model, m.loss_obj, m.train_metrics, m.val_metrics, m.optimizer,
                                        m.trainable, jit)
        m.notes.append(dist.describe())
        if batches.skips_last:
            m.notes.append(f"the last {batches.rem} rows of each epoch are skipped: fewer than the {dist.replicas} "
                           "replicas (pick a --batch-size that leaves a larger last batch)")
    else:
        fns = steps.make_functions(m.model, m.loss_obj, m.train_metrics, m.val_metrics, m.model.optimizer, m.trainable,
                                   data.x.shape[1:], data.y.shape[1:], x_dtype, y_type, jit, val is not None)
    return _Feed(batches, val_batches, batch, steps_per_epoch, k, jit, fns)


def _check_monitor(opts: TrainOptions, m: PreparedModel, val: LabelledData | NamedData | None) -> str:
    monitor = opts.monitor or ("val_loss" if val is not None else "loss")
    if opts.early_stopping is not None and monitor.startswith("val_") and val is None:
        raise UsageError(f"--monitor {monitor} needs validation data", "pass --val-data or --val-split")
    logged = ["loss", *(metric.name for metric in m.train_metrics)]
    logged += [f"val_{name}" for name in logged] if val is not None else []
    if monitor not in logged:
        raise UsageError(f"--monitor {monitor} is not logged by this run", f"logged: {', '.join(logged)}")
    return monitor


class _Run:
    """The epochs of one run: train, validate, early stopping, checkpoints, signals, progress."""

    def __init__(self, opts: TrainOptions, reporter: Reporter, dist: distribute.Distribution, m: PreparedModel,
                 feed: _Feed, ckpts: RunCheckpoints, state: RunState, *, seed: int, monitor: str, rows: int,
                 val_rows: int) -> None:
        self.opts, self.reporter, self.dist, self.m, self.feed = opts, reporter, dist, m, feed
        self.ckpts, self.state, self.seed, self.monitor = ckpts, state, seed, monitor
        self.rows, self.val_rows = rows, val_rows
        self.mode = monitor_mode(monitor)
        self.guard = SignalGuard()
        self.tb: Any = None
        self.lr_varies = callable(getattr(m.optimizer, "_learning_rate", None))  # a schedule; a plain rate is fixed
        self.lr_fixed = current_lr(m.optimizer)

    def plan(self) -> RunPlan:
        m, feed = self.m, self.feed
        return RunPlan(epochs=self.opts.epochs, start_epoch=self.state.start_epoch,
                       steps_per_epoch=feed.steps_per_epoch, samples=self.rows,
                       val_samples=self.val_rows,
                       batch_size=feed.batch, steps_per_call=feed.steps_per_call,
                       trainable_weights=len(m.trainable), frozen_weights=len(m.frozen),
                       optimizer=describe_optimizer(m.optimizer), loss=m.loss_name,
                       metrics=[metric.name for metric in m.train_metrics], seed=self.seed, jit=feed.jit,
                       notes=m.notes)

    def run_epochs(self) -> None:
        opts = self.opts
        if opts.tensorboard and self.dist.is_chief:
            self.tb = import_keras().callbacks.TensorBoard(log_dir=opts.tensorboard, histogram_freq=1,
                                                           write_graph=False)
            self.tb.set_model(self.m.model)
            self.tb.on_train_begin()
        self.reporter.begin(self.plan())
        try:
            with self.guard:
                for epoch in range(self.state.start_epoch, opts.epochs):
                    record, seconds = self._train_epoch(epoch)
                    self._validate(record, seconds)
                    if self._end_epoch(epoch, record):
                        break
        finally:  # also on an interrupt or divergence: the progress display ends before the message
            self.reporter.end()
        if self.tb is not None:
            self.tb.on_train_end()

    def _train_epoch(self, epoch: int) -> tuple[dict[str, Any], float]:
        """The epoch's training steps; its record so far and its seconds (validation not counted)."""
        state, feed = self.state, self.feed
        resumed_mid = epoch == state.start_epoch and state.start_step > 0
        if not resumed_mid:
            for metric in self.m.train_metrics:
                metric.reset_state()
            state.partial = [0.0, 0.0]
        steps_done = state.start_step if resumed_mid else 0
        self.reporter.epoch_begin(epoch)
        if self.tb is not None:
            self.tb.on_epoch_begin(epoch)
        t_epoch = time.perf_counter()
        chunks = feed.batches.chunks(epoch, steps_done)
        for _steps, xs, ys in (prefetch(chunks) if feed.batches.steps > feed.batches.k else chunks):
            steps_done += self._train_call(epoch, steps_done, xs, ys)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": state.partial[0] / max(1.0, state.partial[1])}
        for metric in self.m.train_metrics:
            record[metric.name] = float(metric.result().numpy())
        return record, time.perf_counter() - t_epoch

    def _train_call(self, epoch: int, steps_done: int, xs: Any, ys: Any) -> int:
        """One compiled call of several steps; returns the steps done. Stops on NaN/Inf and on a signal."""
        state = self.state
        t_call = time.perf_counter()
        ok_f, done_f, loss_sum = self.feed.fns.train(xs, ys).numpy()
        done = int(done_f)
        elapsed = time.perf_counter() - t_call
        shape = tuple((xs[0] if isinstance(xs, list) else xs).shape)  # several inputs: a list, one per input
        if shape in state.seen_shapes:  # the first call of a shape traces (and compiles, with XLA)
            state.steady_samples += int(shape[0] * shape[1])
            state.steady_seconds += elapsed
        state.seen_shapes.add(shape)
        state.partial[0] += float(loss_sum)
        state.partial[1] += done * shape[1]
        steps_done += done
        if not bool(ok_f):
            self._diverged(epoch, steps_done)
        if state.partial[1]:
            self.reporter.progress(epoch, steps_done, state.partial[0] / state.partial[1])
        if self._stop_requested():
            path = self._save(epoch, steps_done, number=epoch + 1)
            raise Interrupted(
                f"interrupted ({self.guard.name()}) at epoch {epoch + 1}, step {steps_done}; "
                f"checkpoint saved to {path}; {self.opts.out or self.opts.model} was not written",
                f"resume with: {fmt_resume(self.opts, self.ckpts.directory)}")
        return done

    def _diverged(self, epoch: int, steps_done: int) -> None:
        opts = self.opts
        if self.dist.is_chief:
            write_history(opts.history, self.state.history)
        last = self.ckpts.kept()
        lr_now = current_lr(self.m.optimizer)
        if last:
            kept = f"; the last good checkpoint is kept: {last}"
        elif opts.checkpoint_dir:
            kept = f"; no checkpoint was saved in {opts.checkpoint_dir} yet (it diverged before the first one)"
        else:
            kept = "; no checkpoint was saved (pass --checkpoint-dir DIR to keep one every epoch)"
        again = (f"; to go on from the checkpoint, add --checkpoint-dir {self.ckpts.directory} --resume with a lower "
                 "--lr" if last else "")
        raise DivergedError(
            f"training diverged at epoch {epoch + 1}, step {steps_done + 1}: the loss became NaN or Inf"
            f"{kept}; {opts.out or opts.model} was not written",
            f"lower the learning rate (--lr, now {lr_now:g}) or clip gradients (--clip-norm 1.0){again}")

    def _validate(self, record: dict[str, Any], seconds: float) -> None:
        """Validation loss and metrics, the learning rate and the epoch's seconds into its record."""
        val_batches = self.feed.val_batches
        if val_batches is not None:
            for metric in self.m.val_metrics:
                metric.reset_state()
            vsum = 0.0
            for _steps, xs, ys in val_batches.chunks(0):
                vsum += float(self.feed.fns.eval(xs, ys))
            record["val_loss"] = vsum / len(val_batches.x)
            for metric in self.m.val_metrics:
                record[f"val_{metric.name}"] = float(metric.result().numpy())
        record["lr"] = current_lr(self.m.optimizer) if self.lr_varies else self.lr_fixed
        record["seconds"] = round(seconds, 4)

    def _end_epoch(self, epoch: int, record: dict[str, Any]) -> bool:
        """Log the epoch, apply early stopping, checkpoint; True when the run stops here."""
        opts, state = self.opts, self.state
        state.history.append(record)
        state.epochs_run += 1
        if self.tb is not None:
            self.tb.on_epoch_end(epoch, {k: v for k, v in record.items() if k not in ("epoch", "seconds", "lr")})
        better = self._early_stopping(epoch, record[self.monitor])
        self.reporter.epoch_end(record)
        state.start_step = 0
        state.partial = [0.0, 0.0]
        if opts.early_stopping is not None and not better and state.es["wait"] >= max(1, opts.early_stopping):
            state.stopped_early = True
        every = opts.checkpoint_every or (1 if opts.checkpoint_dir else None)
        if every and ((epoch + 1) % every == 0 or state.stopped_early or epoch + 1 == opts.epochs):
            self._save(epoch + 1, 0, number=epoch + 1)
        if self._stop_requested() and epoch + 1 < opts.epochs and not state.stopped_early:
            path = self._save(epoch + 1, 0, number=epoch + 1)
            raise Interrupted(
                f"interrupted ({self.guard.name()}) after epoch {epoch + 1}; checkpoint saved "
                f"to {path}; {opts.out or opts.model} was not written",
                f"resume with: {fmt_resume(opts, self.ckpts.directory)}")
        return state.stopped_early

    def _early_stopping(self, epoch: int, current: float) -> bool:
        """Keras EarlyStopping semantics, with state that survives a resume; True when `current` is better."""
        es = self.state.es
        better = es["best"] is None or (current < es["best"] - self.opts.min_delta if self.mode == "min"
                                        else current > es["best"] + self.opts.min_delta)
        if better:
            es["best"], es["best_epoch"], es["wait"] = current, epoch + 1, 0
            if self.ckpts.best_vars:
                self.ckpts.keep_best()
        else:
            es["wait"] = int(es["wait"]) + 1
        return better

    def _save(self, epoch: int, step: int, number: int) -> str:
        """Checkpoint `ckpt-<number>`: the epoch it belongs to (a mid-epoch one is replaced when that epoch ends)."""
        opts, state = self.opts, self.state
        return self.ckpts.save({"seed": self.seed, "rows": self.rows, "batch_size": self.feed.batch, "epoch": epoch,
                                "step": step, "partial": state.partial, "history": state.history, "es": state.es,
                                "early_stopping": opts.early_stopping is not None, "model": str(opts.model),
                                "epochs": opts.epochs, "automatic_dir": not opts.checkpoint_dir,
                                "mixed_precision": opts.mixed_precision}, number)

    def _stop_requested(self) -> bool:
        """A signal arrived (multi-worker: on any worker, so that all stop after the same step)."""
        return distribute.any_worker(self.dist, self.guard.signum is not None)

    def restore_best(self) -> bool:
        """Early stopping's best weights back in the model when a later epoch was the last."""
        es, history = self.state.es, self.state.history
        if self.ckpts.best_vars and es["best_epoch"] is not None and history and es["best_epoch"] != history[-1]["epoch"]:
            self.ckpts.restore_best()
            return True
        return False

    def summary(self, restored_best: bool, out_path: Path, t_start: float) -> dict[str, Any]:
        opts, state, m, feed, dist = self.opts, self.state, self.m, self.feed, self.dist
        history = state.history
        final = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("epoch", "seconds")}
        return {
            "model": str(opts.model),
            "output": str(out_path) if dist.is_chief else None,
            "epochs_run": state.epochs_run,
            "epochs": opts.epochs,
            "last_epoch": history[-1]["epoch"] if history else state.start_epoch,
            "best_epoch": state.es["best_epoch"],
            "monitor": self.monitor,
            "best": state.es["best"],
            "stopped_early": state.stopped_early,
            "restored_best_weights": restored_best,
            "final": final,
            "wall_time_s": round(time.perf_counter() - t_start, 3),
            "samples_per_s": steady_rate(history[len(history) - state.epochs_run:], self.rows, state.steady_samples,
                                         state.steady_seconds),
            "samples": self.rows,
            "batch_size": feed.batch,
            "steps_per_call": feed.steps_per_call,
            "jit": feed.jit,
            "optimizer": describe_optimizer(m.optimizer),
            "optimizer_steps": int(m.optimizer.iterations.numpy()),
            "restored_optimizer_steps": m.restored_steps,
            "loss": m.loss_name,
            "seed": self.seed,
            "trainable_weights": len(m.trainable),
            "lora": m.lora.summary() if m.lora is not None else None,
            "frozen": {"weights": len(m.frozen), "unchanged": True},
            "notes": m.notes,
            "history_file": opts.history,
            "checkpoint": (self.ckpts.kept() if self.ckpts.manager is not None and self.ckpts.directory.is_dir()
                           else None),
            "strategy": dist.summary(),
        }


def check_frozen_unchanged(frozen: list[tuple[str, Any]], snapshot: dict[str, np.ndarray]) -> None:
    """A frozen weight that moved during the run is wtool's bug, not the user's: refuse to write OUT."""
    changed = [path for path, w in frozen if np.asarray(w.numpy()).tobytes() != snapshot[path].tobytes()]
    if changed:
        raise InternalError(f"frozen weight {changed[0]} changed during training"
                            + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""),
                            "this is a bug in wtool: run with --debug and report it; OUT was not written")


def _write_outputs(opts: TrainOptions, dist: distribute.Distribution, model: Any, out_path: Path, ckpt_dir: Path,
                   history: list[dict[str, Any]], class_names: list[str] | None = None,
                   automatic_dir: bool = False) -> None:
    """OUT and --history; after a resumed run, the automatic OUT.ckpt/ goes (named on resume or not)."""
    from wtool.graph.model import save_model

    if dist.is_chief:  # OUT, the history and the checkpoint clean-up are the chief's alone
        save_model(model, out_path, class_names=class_names)
        write_history(opts.history, history)
        if opts.resume and (not opts.checkpoint_dir or automatic_dir) and ckpt_dir.is_dir():
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    else:  # saving may create replicated state (collectively): every worker saves, the others to scratch
        save_model(model, Path(dist.scratch_dir(out_path)) / out_path.name)
