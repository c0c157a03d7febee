"""`wtool train MODEL --data - -o OUT`: online updates from batches on stdin, one step per batch as it arrives.

A long-lived process pays TensorFlow's start-up once and updates the model as data comes in:
the batches (JSON lines or an .npy stream, `wtool.data.stream`) each run one step of the same
compiled train step as `train` (`wtool.train.steps`, one batch per call), so the result is
Keras's `train_on_batch` over the same batches. Memory holds one batch. `--save-every N`
writes OUT atomically (with the optimizer state) every N batches, so a kill loses at most N
batches; at EOF OUT is written with the optimizer state, so the next run continues it.

Epoch options mean nothing on a stream and are refused (exit 2). A bad line or batch stops at
once (exit 3, or 4 when it does not fit the model) naming it; OUT is then left as the last
--save-every save wrote it (or not written). SIGINT/SIGTERM stop after the running batch and
write OUT with every finished batch (exit 130).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from wtool.data.stream import StreamBatch, buffered, read_batches, sniff
from wtool.errors import DivergedError, IncompatibleError, InputError, Interrupted, UsageError
from wtool.fileio import check_input_file
from wtool.graph.model import import_keras
from wtool.train import steps
from wtool.train.checkpoints import SignalGuard
from wtool.train.data import LabelledData, check_fits, model_io, saved_class_names
from wtool.train.loop import check_frozen_unchanged, load_train_model, prepare_model
from wtool.train.objectives import y_dtype
from wtool.train.optim import describe_optimizer
from wtool.train.options import TrainOptions, check_options, resolve_out

# Progress lines without --save-every: one per this many batches.
DEFAULT_LOG_EVERY = 100

# TrainOptions fields that only make sense for data of known length (epochs, validation, shuffling order,
# epoch checkpoints), with the option that sets each.
EPOCH_OPTIONS = {
    "x": "--x", "y": "--y", "target": "--target", "drop": "--drop", "image_size": "--image-size",
    "color_mode": "--color-mode", "max_length": "--max-length", "x_files": "--x", "y_files": "--y",
    "x_cols": "--x-cols", "y_cols": "--y-cols", "val_data": "--val-data", "val_split": "--val-split",
    "early_stopping": "--early-stopping", "monitor": "--monitor", "min_delta": "--min-delta",
    "checkpoint_dir": "--checkpoint-dir", "checkpoint_every": "--checkpoint-every",
    "keep_checkpoints": "--keep-checkpoints", "resume": "--resume", "history": "--history",
    "tensorboard": "--tensorboard", "steps_per_execution": "--steps-per-execution", "workers": "--workers",
    "task_index": "--task-index", "replicas": "--replicas",
}
# ... and those a stream does not do yet.
NOT_YET = {"mixed_precision": "--mixed-precision", "lora": "--lora", "loss_weights": "--loss-weight"}


@dataclass
class StreamOptions:
    """What a stream run adds to TrainOptions: saves, progress lines, and where the bytes come from."""

    save_every: int | None = None
    log_every: int | None = None  # default: save_every, else DEFAULT_LOG_EVERY
    stdin: Any = None  # default: sys.stdin.buffer
    given: tuple[str, ...] = ()  # options the user set that a stream refuses even at their defaults


class StreamReporter:
    """Receives the stream run's progress; the default reports nothing."""

    def begin(self, header: dict[str, Any]) -> None:
        pass

    def progress(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class _Counts:
    batches: int = 0
    rows: int = 0
    saves: int = 0
    saved_at: int | None = None  # batches in OUT's last save
    window: list[float] = field(default_factory=lambda: [0.0, 0.0])  # loss sum, rows since the last line
    t_window: float = 0.0
    last_loss: float | None = None  # the mean loss of the last progress line's batches


def check_stream_options(opts: TrainOptions, stream: StreamOptions) -> None:
    """Refuse (exit 2) what a stream cannot do: epochs, validation, early stopping, shuffling, epoch checkpoints."""
    defaults = TrainOptions(model="")
    for f in fields(TrainOptions):
        option = EPOCH_OPTIONS.get(f.name)
        if option is not None and getattr(opts, f.name) != getattr(defaults, f.name):
            raise UsageError(f"{option} does not apply to --data - (a stream has no epochs or known length)",
                             "a stream trains each batch once as it arrives; see README 'Training from a stream'")
    for name, option in NOT_YET.items():
        if getattr(opts, name) not in (None, ()):
            raise UsageError(f"{option} does not apply to --data - yet", "train on a file of batches for it")
    for option in stream.given:
        raise UsageError(f"{option} does not apply to --data - (rows train in the order they arrive)")
    if opts.epochs != 1:
        raise UsageError(f"--epochs {opts.epochs}: a stream is read once (each batch is one step)",
                         "send the data again to train on it again")
    if opts.strategy not in ("auto", "one-device"):
        raise UsageError(f"--strategy {opts.strategy} does not apply to --data -")
    from wtool.train.multi_io import named_options

    if named_options(opts):
        raise UsageError("--data - reads one x and one y per row: it trains models with one input and one output "
                         "for now",
                         "for several inputs or outputs, train on a .npz with --x-key/--y-key NAME=KEY")
    sched = opts.schedule
    if sched is not None and sched.name not in ("constant", "piecewise") and not sched.decay_steps:
        raise UsageError(f"--lr-schedule {sched.name} with --data - needs --decay-steps N",
                         "a stream's length is unknown, so the schedule's period must be given")
    for name, value in (("--save-every", stream.save_every), ("--log-every", stream.log_every)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1 (not {value})")


def train_stream(opts: TrainOptions, stream: StreamOptions, reporter: StreamReporter | None = None) -> dict[str, Any]:
    """Train on the batches of `stream.stdin` as they arrive; returns the run's summary. See the module doc."""
    reporter = reporter or StreamReporter()
    t_start = time.perf_counter()
    check_options(opts)
    check_stream_options(opts, stream)
    out_path = resolve_out(opts)
    check_input_file(opts.model)
    if stream.stdin is None:
        import sys

        stream.stdin = sys.stdin.buffer
    fh = buffered(stream.stdin)
    fmt = sniff(fh)
    if fmt is None:
        raise InputError("stdin: empty input (no batches)",
                         'send JSON lines ({"x": [...], "y": ...} per line) or .npy arrays (x, y, x, y, ...)')
    batches = read_batches(fh, fmt, opts.batch_size, opts.x_key, opts.y_key)
    with _Guard() as guard:
        first = guard.read(batches)  # before TensorFlow starts: an empty or bad stream fails fast
        if first is None:
            raise InputError("stdin: no rows (only blank lines)")
        return _Stream(opts, stream, reporter, out_path, fmt, guard).run(first, batches, t_start)


class _Stop(Exception):
    """A signal arrived while waiting for input."""


class _Guard(SignalGuard):
    """SIGINT/SIGTERM: while a read is blocked, stop at once; during a step or a save, stop after it."""

    unnamed = "a signal"

    def __init__(self) -> None:
        super().__init__()
        self.reading = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.reading:
            self.reading = False
            raise _Stop

    def read(self, batches: Iterator[StreamBatch]) -> StreamBatch | None:
        """The next batch (None at EOF); raises _Stop when a signal comes first."""
        self.reading = True
        try:
            if self.signum is not None:
                raise _Stop
            return next(batches, None)
        finally:
            self.reading = False


class _Stream:
    """One stream run: the model made from the first batch, then one compiled step per batch."""

    def __init__(self, opts: TrainOptions, stream: StreamOptions, reporter: StreamReporter, out_path: Path,
                 fmt: str, guard: _Guard) -> None:
        self.opts, self.stream, self.reporter, self.out_path, self.fmt, self.guard = (
            opts, stream, reporter, out_path, fmt, guard)
        self.log_every = stream.log_every or stream.save_every or DEFAULT_LOG_EVERY
        self.counts = _Counts()
        self.class_names = saved_class_names(opts.model)

    def run(self, first: StreamBatch, batches: Iterator[StreamBatch], t_start: float) -> dict[str, Any]:
        opts = self.opts
        seed = opts.seed if opts.seed is not None else secrets.randbelow(2**31)
        import_keras().utils.set_random_seed(seed)
        data = LabelledData(first.x, first.y, f"stdin ({first.where})")
        model = load_train_model(opts)
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            n_in, n_out = len(model.inputs), len(model.outputs)
            raise IncompatibleError(f"{opts.model} has {n_in} input{'s' * (n_in != 1)} and {n_out} output"
                                    f"{'s' * (n_out != 1)}; "
                                    "--data - trains models with one input and one output for now",
                                    "for several, write the batches to a .npz and use --x-key/--y-key NAME=KEY")
        m = prepare_model(opts, data, None, seed, model)  # loss, metrics, optimizer (the saved state), checks
        self.m = m
        self.io_ = io_ = model_io(m.model)
        self.x_dtype = io_.input_dtype if io_.input_dtype != "float64" else "float32"
        self.y_dtype = y_dtype(np.asarray(first.y), m.loss_name)
        self.row_shapes = (tuple(data.x.shape[1:]), tuple(data.y.shape[1:]))
        jit = opts.jit == "on"
        self.fns = steps.make_functions(m.model, m.loss_obj, m.train_metrics, [], m.optimizer, m.trainable,
                                        self.row_shapes[0], self.row_shapes[1], self.x_dtype, self.y_dtype, jit,
                                        False)
        snapshot = {path: np.array(w.numpy(), copy=True) for path, w in m.frozen}
        self.reporter.begin({"format": self.fmt, "optimizer": describe_optimizer(m.optimizer), "loss": m.loss_name,
                             "batch_size": opts.batch_size, "save_every": self.stream.save_every, "seed": seed,
                             "jit": jit, "notes": m.notes, "trainable_weights": len(m.trainable),
                             "frozen_weights": len(m.frozen)})
        self.counts.t_window = time.perf_counter()
        batch: StreamBatch | None = first
        try:
            while batch is not None:
                self._step(batch, data if batch is first else None)
                self._after_step()
                batch = self.guard.read(batches)
        except _Stop:
            self._interrupted("while waiting for input")
        except (InputError, IncompatibleError, DivergedError) as exc:
            raise type(exc)(f"{exc.message}; {self._kept()}", exc.hint) from None
        if self.counts.window[1]:
            self._line()
        check_frozen_unchanged(m.frozen, snapshot)
        self._save()
        return self._summary(seed, jit, t_start)

    def _checked(self, batch: StreamBatch, data: LabelledData | None) -> tuple[np.ndarray, np.ndarray]:
        """The batch as the step takes it: fitted to the model (as the first was), finite, in the step's dtypes."""
        if data is None:
            data = LabelledData(batch.x, batch.y, f"stdin ({batch.where})")
            try:
                check_fits(data, self.io_, self.m.loss_name)
            except IncompatibleError as exc:
                raise IncompatibleError(f"stdin: {batch.where}: {exc.message}", exc.hint) from None
        for what, arr, want in (("x", data.x, self.row_shapes[0]), ("y", data.y, self.row_shapes[1])):
            if tuple(arr.shape[1:]) != want:
                raise IncompatibleError(f"stdin: {batch.where}: {what} has rows of shape {arr.shape[1:]}; the first "
                                        f"batch's have {want}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                row = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0])
                where = (f"line {batch.first_line + row}" if self.fmt == "jsonl" else f"{batch.where}, row {row}")
                raise InputError(f"stdin: {where}: {what} holds NaN or Inf", "remove or impute such rows")
        if self.y_dtype.startswith("int") and data.y.dtype.kind == "f" and not np.all(data.y == np.round(data.y)):
            raise IncompatibleError(f"stdin: {batch.where}: y holds fractional class labels")
        return (np.asarray(data.x, dtype=self.x_dtype)[None], np.asarray(data.y, dtype=self.y_dtype)[None])

    def _step(self, batch: StreamBatch, data: LabelledData | None) -> None:
        xs, ys = self._checked(batch, data)
        ok, _done, loss_sum = self.fns.train(xs, ys).numpy()
        counts = self.counts
        if not bool(ok):
            raise DivergedError(f"training diverged at {batch.where} (batch {counts.batches + 1}): the loss became "
                                "NaN or Inf", "lower the learning rate (--lr) or clip gradients (--clip-norm 1.0)")
        counts.batches += 1
        counts.rows += int(xs.shape[1])
        counts.window[0] += float(loss_sum)
        counts.window[1] += int(xs.shape[1])

    def _after_step(self) -> None:
        counts, every = self.counts, self.stream.save_every
        if every and counts.batches % every == 0:
            self._save()
        if counts.batches % self.log_every == 0:
            self._line()
        if self.guard.signum is not None:
            self._interrupted("")

    def _line(self) -> None:
        counts = self.counts
        now = time.perf_counter()
        loss = counts.window[0] / max(1.0, counts.window[1])
        rate = counts.window[1] / max(1e-9, now - counts.t_window)
        counts.last_loss = loss
        self.reporter.progress({"batches": counts.batches, "rows": counts.rows, "loss": loss, "rows_per_s": rate,
                                "saved": counts.saved_at == counts.batches})
        counts.window = [0.0, 0.0]
        counts.t_window = now

    def _save(self) -> None:
        from wtool.graph.model import save_model

        save_model(self.m.model, self.out_path, class_names=self.class_names)
        self.counts.saves += 1
        self.counts.saved_at = self.counts.batches

    def _kept(self) -> str:
        at = self.counts.saved_at
        return (f"{self.out_path} holds the model after batch {at} (the last --save-every save)" if at
                else f"{self.out_path} was not written")

    def _interrupted(self, when: str) -> None:
        self._save()
        raise Interrupted(f"interrupted ({self.guard.name()}){' ' + when if when else ''} after batch "
                          f"{self.counts.batches}; {self.out_path} written with every finished batch",
                          "send the rest to a new run with -o on the written file to continue")

    def _summary(self, seed: int, jit: bool, t_start: float) -> dict[str, Any]:
        m, counts = self.m, self.counts
        final = {metric.name: float(metric.result().numpy()) for metric in m.train_metrics}
        return {"model": str(self.opts.model), "output": str(self.out_path), "format": self.fmt,
                "batches": counts.batches, "rows": counts.rows, "saves": counts.saves,
                "save_every": self.stream.save_every, "final_loss": counts.last_loss, "metrics": final, "loss": m.loss_name,
                "optimizer": describe_optimizer(m.optimizer), "optimizer_steps": int(m.optimizer.iterations.numpy()),
                "restored_optimizer_steps": m.restored_steps, "seed": seed, "jit": jit,
                "wall_time_s": round(time.perf_counter() - t_start, 3), "trainable_weights": len(m.trainable),
                "frozen": {"weights": len(m.frozen), "unchanged": True}, "notes": m.notes}

