"""`wtool train`: parse options -> wtool.train.loop.train -> render progress and the summary."""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

import click

from wtool.cli.commands.common import (
    DirPath,
    InputPath,
    OutputPath,
    array_options,
    column_options,
    common_options,
    folder_options,
    loss_options,
    unsafe_option,
)
from wtool.cli.render import Output, TextWriter, fmt_float, fmt_int, fmt_plural, one_line
from wtool.errors import UsageError

# Non-terminal progress: one line per epoch, but no more than one per this many seconds (plus the last).
LINE_INTERVAL_S = 1.0
# Terminal progress: bars redrawn (and finished epochs' lines printed) at most this many times a second.
REFRESH_PER_S = 4


def _floats(text: str | None, option: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers (not '{text}')") from None


def _one(items: tuple[str, ...]) -> str | None:
    """The value of a one-input/one-output option (given once, without NAME=); else None."""
    return items[0] if len(items) == 1 and "=" not in items[0] else None


def _metrics_text(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if key in ("epoch", "seconds", "lr"):
            continue
        parts.append(f"{key} {fmt_float(value)}")
    return "  ".join(parts)


class LineReporter:
    """One line per epoch on stderr (throttled when epochs are very short)."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.last = 0.0
        self.pending: dict[str, Any] | None = None
        self.plan: Any = None

    def begin(self, plan: Any) -> None:
        self.plan = plan
        for note in plan.notes:
            self.out.info(note)
        self.out.info(f"training {fmt_plural(plan.samples, 'sample')} ({fmt_plural(plan.steps_per_epoch, 'step')} of "
                      f"{plan.batch_size}{f', validating on {fmt_int(plan.val_samples)}' if plan.val_samples else ''})"
                      f" for {fmt_plural(plan.epochs, 'epoch')}: {plan.optimizer}, loss {plan.loss}; "
                      f"{plan.trainable_weights} trainable and {plan.frozen_weights} frozen weights; seed {plan.seed}"
                      + ("; compiled with XLA (--jit off to run without)" if plan.jit else ""))

    def epoch_begin(self, epoch: int) -> None:
        pass

    def progress(self, epoch: int, steps_done: int, loss: float) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        now = time.monotonic()
        first = record["epoch"] == self.plan.start_epoch + 1
        if first or now - self.last >= LINE_INTERVAL_S or record["epoch"] == self.plan.epochs:
            self._line(record)
            self.last = now
            self.pending = None
        else:
            self.pending = record

    def _line(self, record: dict[str, Any]) -> None:
        rate = self.plan.samples / record["seconds"] if record.get("seconds") else 0
        self.out.info(f"epoch {record['epoch']}/{self.plan.epochs}  {_metrics_text(record)}  "
                      f"{record['seconds']:.2f}s  {fmt_int(int(rate))} samples/s")

    def end(self) -> None:
        if self.pending is not None:
            self._line(self.pending)


class RichReporter(LineReporter):
    """On a terminal: a bar for the running epoch and one for the whole run, each with an ETA (rich Progress,
    redrawn a few times a second), above them every finished epoch's line, kept in the scrollback."""

    def __init__(self, out: Output) -> None:
        super().__init__(out)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress_bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TextColumn("eta"), TimeRemainingColumn(),
                                     console=out.stderr, transient=True, refresh_per_second=REFRESH_PER_S,
                                     redirect_stdout=False, redirect_stderr=False)
        self.run_task: Any = None
        self.epoch_task: Any = None
        self.t0 = 0.0
        self.shown = 0.0  # when the bars were last updated
        self.steps_before = 0  # this run's steps in finished epochs
        self.lines: list[str] = []  # finished epochs' lines not printed yet

    def begin(self, plan: Any) -> None:
        super().begin(plan)
        self.progress_bar.start()
        steps = (plan.epochs - plan.start_epoch) * plan.steps_per_epoch
        self.run_task = self.progress_bar.add_task("run", total=steps, stats="")
        self.epoch_task = self.progress_bar.add_task("epoch", total=plan.steps_per_epoch, stats="")

    def epoch_begin(self, epoch: int) -> None:
        self.t0 = time.perf_counter()
        self.progress_bar.reset(self.epoch_task, total=self.plan.steps_per_epoch,
                                description=f"epoch {epoch + 1}/{self.plan.epochs}", stats="")

    def progress(self, epoch: int, steps_done: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.shown < 1 / REFRESH_PER_S:
            return
        self.shown = now
        rate = min(steps_done * self.plan.batch_size, self.plan.samples) / max(1e-9, now - self.t0)
        self.progress_bar.update(self.epoch_task, completed=steps_done,
                                 stats=f"loss {fmt_float(loss)}  {fmt_int(int(rate))} samples/s")
        self._run_done(epoch, steps_done)

    def _run_done(self, epoch: int, steps_done: int) -> None:
        first = self.plan.start_epoch
        done = (epoch - first) * self.plan.steps_per_epoch + steps_done
        self.progress_bar.update(self.run_task, completed=done, description=f"run {epoch + 1 - first}/"
                                 f"{self.plan.epochs - first} epochs")

    def epoch_end(self, record: dict[str, Any]) -> None:
        rate = self.plan.samples / record["seconds"] if record.get("seconds") else 0
        self.lines.append(one_line(f"epoch {record['epoch']}/{self.plan.epochs}  {_metrics_text(record)}  "
                                   f"{record['seconds']:.2f}s  {fmt_int(int(rate))} samples/s"))
        now = time.monotonic()
        if now - self.last >= 1 / REFRESH_PER_S or record["epoch"] == self.plan.epochs:
            self._flush()
            self._run_done(record["epoch"] - 1, self.plan.steps_per_epoch)
            self.last = now

    def _flush(self) -> None:
        """Print the pending epoch lines at once: one redraw of the bars for many lines."""
        if self.lines:
            self.progress_bar.console.print("\n".join(self.lines), highlight=False, markup=False)
            self.lines = []

    def end(self) -> None:
        self._flush()
        self.progress_bar.stop()


def _resume_command(ctx: click.Context) -> str:
    """The command line that resumes this run: the given options, plus --checkpoint-dir and --resume."""
    args = ["wtool", "train"]
    params = ctx.params
    for param in ctx.command.params:
        name = param.name
        if name is None or name in ("resume", "json_mode", "quiet", "debug"):
            continue
        value = params.get(name)
        if isinstance(param, click.Argument):
            args.append(str(value))
            continue
        if value is None or value == param.default or value == () or value is False and not param.secondary_opts:
            continue
        assert isinstance(param, click.Option)
        if param.is_flag:
            if param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                args.append(param.opts[0])
        elif param.multiple:
            for item in value:
                args += [param.opts[0], str(item)]
        else:
            args += [param.opts[0], str(value)]
    if params.get("checkpoint_dir") is None:
        args += ["--checkpoint-dir", "{CHECKPOINT_DIR}"]
    args.append("--resume")
    return shlex.join(args).replace("'{CHECKPOINT_DIR}'", "{CHECKPOINT_DIR}")


def _render(summary: dict[str, Any]) -> Any:
    def human(writer: TextWriter) -> None:
        rows: list[tuple[str, str]] = []
        last = summary["last_epoch"]
        first = last - summary["epochs_run"] + 1
        epochs = f"{summary['epochs_run']} run ({first}..{last} of {summary['epochs']})"
        if summary["stopped_early"]:
            epochs += ", stopped early"
        if summary["best_epoch"] is not None:
            epochs += f"; best epoch {summary['best_epoch']} ({summary['monitor']} {fmt_float(summary['best'])})"
            if summary["restored_best_weights"]:
                epochs += ", its weights written"
        rows.append(("epochs", epochs))
        final = summary["final"]
        rows.append(("final", "  ".join(f"{k} {fmt_float(v)}" for k, v in final.items() if k != "lr")
                     + (f"  (lr {fmt_float(final['lr'])})" if "lr" in final else "")))
        rate = summary["samples_per_s"]
        rows.append(("time", f"{summary['wall_time_s']:.1f} s wall"
                     + (f", {fmt_int(int(rate))} samples/s steady state" if rate else "")))
        steps = f"{summary['optimizer']}, {fmt_plural(summary['optimizer_steps'], 'step')}"
        if summary["restored_optimizer_steps"]:
            steps += f" ({fmt_int(summary['restored_optimizer_steps'])} before this run)"
        rows.append(("optimizer", steps))
        lora = summary.get("lora")
        if lora:
            rows.append(("lora", (f"rank {lora['rank']} (alpha {lora['alpha']:g}) on {len(lora['layers'])} "
                         f"layer{'s' if len(lora['layers']) != 1 else ''}; trainable parameters "
                         f"{fmt_int(lora['trainable_params_before'])} -> {fmt_int(lora['trainable_params'])} "
                         "(adapters only), merged into OUT")))
        frozen = summary["frozen"]["weights"]
        rows.append(("frozen", f"{frozen} frozen weights unchanged" if frozen else "no frozen weights"))
        rows.append(("seed", str(summary["seed"])))
        if summary.get("history_file"):
            rows.append(("history", str(summary["history_file"])))
        if summary.get("plot"):
            rows.append(("plot", str(summary["plot"])))
        dist = summary.get("strategy") or {}
        if dist.get("kind", "one-device") != "one-device":
            rows.append(("strategy", str(dist.get("description"))))
        target = summary["output"] or "(written by the chief)"
        writer.line(f"trained {summary['model']} -> {target}")
        for key, value in rows:
            writer.line(value, head=f"{key:<11}")

    return human


@click.command(name="train")
@click.argument("model", type=InputPath)
@click.option("-o", "--output", "out_file", type=OutputPath, help="Where to write the trained model (.keras, .h5, .weights.h5).")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself (atomically) instead of writing -o OUT.")
@click.option("--arch", type=InputPath, help="Architecture (.keras/.h5) for a weights-only MODEL.")
@unsafe_option
@click.option("--data", type=InputPath, help="Training data: .npz (arrays x, y), .csv (with --target), a folder "
              "with one subfolder per class of images (DIR/<class>/*.png|jpg) or, for a model that takes strings, "
              "of text files (DIR/<class>/*.txt), or - for batches on stdin as they arrive (JSON lines or .npy x, y "
              "arrays; README 'Training from a stream').")
@array_options(x="Features as .npy (memory-mapped); with --y. Several inputs: NAME=FILE per input (repeat).",
               y="Labels as .npy (memory-mapped); with --x. Several outputs: NAME=FILE per output (repeat).",
               x_key="Feature array of a .npz (default x; with --data -, the JSON lines field). Several inputs: "
               "NAME=KEY per input, or KEY in input order.",
               y_key="Label array of a .npz (default y; with --data -, the JSON lines field). Several outputs: "
               "NAME=KEY per output, or KEY in output order.")
@column_options
@click.option("--target", help="Label column of a .csv (header name or 0-based index; numbers, or strings such as "
              "cat/dog, which are encoded and saved with the model); the rest are features.")
@click.option("--drop", multiple=True, metavar="COLUMNS",
              help="CSV columns that are not features, e.g. an id (names or 0-based numbers, comma-separated; "
                   "repeatable).")
@folder_options
@click.option("--mixed-precision", type=click.Choice(["bfloat16", "float16"]),
              help="Compute in 16 bits with float32 weights (Keras's mixed_bfloat16 / mixed_float16 policy; float16 "
              "with loss scaling). OUT keeps float32 weights and the model's own dtype policy.")
@click.option("--val-data", "--validation-data", "val_data", type=InputPath,
              help="Validation data, in the same form as --data.")
@click.option("--val-split", "--validation-split", "val_split", type=float,
              help="Validate on the last FRACTION of the rows (before shuffling), as Keras's fit(validation_split); "
              "of a folder, on the files Keras's image/text_dataset_from_directory(validation_split=FRACTION, "
              "subset='validation', seed=SEED) gives: shuffled with --seed (or the drawn seed) first.")
@click.option("--epochs", type=int, default=1, show_default=True, help="Epochs to train (the total, when resuming).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--shuffle/--no-shuffle", default=True, show_default=True, help="Shuffle rows every epoch.")
@click.option("--seed", type=int, help="Seed everything: the same command twice gives bitwise-identical weights.")
@click.option("--optimizer", help="sgd, adam, adamw, rmsprop, adagrad, nadam, ... (default: the model's saved "
              "optimizer, else adam).")
@click.option("--lr", "--learning-rate", "lr", type=float, help="Learning rate (initial rate for a schedule).")
@click.option("--momentum", type=float, help="Momentum (sgd, rmsprop).")
@click.option("--weight-decay", type=float, help="Decoupled weight decay.")
@click.option("--clip-norm", type=float, help="Clip gradients to this global norm.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine", "cosine-restarts", "exponential", "step",
                                                  "inverse-time", "polynomial", "piecewise"]),
              help="Learning-rate schedule (Keras's own).")
@click.option("--decay-steps", type=int, help="Schedule period in steps (default: the run, or one epoch).")
@click.option("--decay-rate", type=float, help="Decay factor (exponential 0.96, step 0.5, inverse-time 0.5).")
@click.option("--warmup-steps", type=int, default=0, help="Linear warm-up steps (cosine).")
@click.option("--min-lr", type=float, default=0.0, help="Floor of cosine/polynomial schedules.")
@click.option("--boundaries", help="piecewise: step boundaries, e.g. 1000,2000.")
@click.option("--lr-values", help="piecewise: rates, one more than boundaries, e.g. 0.1,0.01,0.001.")
@loss_options(loss="mse, mae, binary_crossentropy, sparse_categorical_crossentropy, ... (default: the model's "
              "saved loss); NAME=LOSS per output (repeat).",
              loss_weight="Weight of an output's loss in the total (repeatable; default: the saved loss_weights, "
              "else 1).",
              metric="A Keras metric by name (repeatable; default: saved ones); NAME=METRIC for one output only.")
@click.option("--freeze", multiple=True, help="Freeze layers whose path matches GLOB (repeatable).")
@click.option("--unfreeze", multiple=True, help="Unfreeze layers whose path matches GLOB (repeatable; after --freeze).")
@click.option("--lora", "lora_rank", type=int, metavar="RANK",
              help="Fine-tune only LoRA adapters of this rank (Keras's enable_lora); everything else is frozen and "
              "OUT holds the merged kernels.")
@click.option("--lora-layers", multiple=True, metavar="GLOB",
              help="With --lora: the layers to adapt, by path (repeatable; default: every Dense, EinsumDense, "
              "Embedding and convolution layer).")
@click.option("--lora-alpha", type=float, metavar="A", help="With --lora: scale the adapters by A / RANK "
              "(default: RANK).")
@click.option("--reset-optimizer", is_flag=True, help="Start the optimizer fresh instead of continuing its saved state.")
@click.option("--early-stopping", type=int, metavar="PATIENCE",
              help="Stop after PATIENCE epochs without improvement; the best epoch's weights are written.")
@click.option("--monitor", help="What early stopping watches (default val_loss, or loss without validation).")
@click.option("--min-delta", type=float, default=0.0, help="Smallest change that counts as an improvement.")
@click.option("--checkpoint-dir", type=DirPath,
              help="Keep checkpoints (model, optimizer, epoch, RNG state) here.")
@click.option("--checkpoint-every", type=int, help="Checkpoint every N epochs (default 1 with --checkpoint-dir).")
@click.option("--keep-checkpoints", type=int, default=3, show_default=True, help="How many checkpoints to keep.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --checkpoint-dir.")
@click.option("--history", "history_file", type=OutputPath, help="Write per-epoch metrics to FILE.csv or FILE.json.")
@click.option("--plot", "plot_path", type=OutputPath, metavar="FILE.png",
              help="Draw loss and metrics per epoch (train and validation) to FILE (.png, .svg, .pdf; needs "
              "matplotlib: wtool[plot]).")
@click.option("--tensorboard", type=DirPath,
              help="Write TensorBoard scalars and weight histograms to DIR.")
@click.option("--steps-per-execution", type=int, help="Train steps per tf.function call (default: auto).")
@click.option("--jit", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="XLA compilation (auto: on for long runs of models without convolutions or recurrent layers).")
@click.option("--save-every", type=int, metavar="N", help="--data -: write OUT (atomically, with the optimizer "
              "state) every N batches, so a kill loses at most N.")
@click.option("--log-every", type=int, metavar="N", help="--data -: a progress line every N batches (default: "
              "--save-every, else 100).")
@click.option("--strategy", type=click.Choice(["auto", "one-device", "mirrored", "multi-worker"]), default="auto",
              show_default=True, help="tf.distribute strategy (auto: mirrored over GPUs when there are several, "
              "else one device). README 'cluster'.")
@click.option("--workers", metavar="HOST:PORT,...", help="multi-worker: every worker's address, the same list on "
              "each (instead of TF_CONFIG); worker 0 is the chief.")
@click.option("--task-index", type=int, metavar="I", help="multi-worker: this worker's position in --workers.")
@click.option("--replicas", type=int, metavar="N", help="mirrored: replicas on this host (default: every GPU; "
              "without GPUs the CPU is split into N logical devices, for testing).")
@click.option("--collective-timeout", type=float, default=120.0, show_default=True, metavar="SECONDS",
              help="multi-worker: how long to wait for the other workers (to join, and at each all-reduce) "
              "before stopping with exit 7.")
@common_options
def command(out: Output, model: str, out_file: str | None, in_place: bool, arch: str | None, unsafe: bool,
            data: str | None, x_files: tuple[str, ...], y_files: tuple[str, ...], x_keys: tuple[str, ...],
            y_keys: tuple[str, ...], x_cols: tuple[str, ...], y_cols: tuple[str, ...], target: str | None,
            drop: tuple[str, ...], image_size: str | None, color_mode: str | None,
            max_length: int | None, mixed_precision: str | None, val_data: str | None, val_split: float | None,
            epochs: int, batch_size: int,
            shuffle: bool,
            seed: int | None, optimizer: str | None, lr: float | None, momentum: float | None,
            weight_decay: float | None, clip_norm: float | None, lr_schedule: str | None, decay_steps: int | None,
            decay_rate: float | None, warmup_steps: int, min_lr: float, boundaries: str | None,
            lr_values: str | None, losses: tuple[str, ...], loss_weights: tuple[str, ...], metrics: tuple[str, ...],
            freeze: tuple[str, ...],
            unfreeze: tuple[str, ...], reset_optimizer: bool, early_stopping: int | None, monitor: str | None,
            min_delta: float, checkpoint_dir: str | None, checkpoint_every: int | None, keep_checkpoints: int,
            resume: bool, history_file: str | None, plot_path: str | None, tensorboard: str | None, steps_per_execution: int | None,
            jit: str, save_every: int | None, log_every: int | None, strategy: str, workers: str | None,
            task_index: int | None, replicas: int | None, collective_timeout: float, lora_rank: int | None,
            lora_layers: tuple[str, ...], lora_alpha: float | None) -> None:
    """Train MODEL on labelled data with a tf.GradientTape loop and write the result to -o OUT.

    Optimizer, loss and metrics default to the model's saved compile config; a model that was
    trained before continues from its saved optimizer state (--reset-optimizer to start fresh).
    Ctrl-C saves a checkpoint and prints the command that resumes (exit 130); a NaN/Inf loss
    stops at once (exit 6). A model with several inputs or outputs takes one array per input and
    output (--x-key NAME=KEY, --x-cols NAME=COLS, --x NAME=FILE.npy, and the --y forms) and a
    loss per output (--loss NAME=LOSS, --loss-weight NAME=W; default: the compiled ones).

    Examples:

    \b
      wtool train sample_models/xor.keras --data sample_models/xor.npz -o xor-trained.keras --lr 20 --epochs 5000 --seed 0
      wtool train sample_models/nested.keras --data sample_models/nested.npz -o tuned.keras --freeze features --epochs 5
      wtool train sample_models/mlp.keras --data sample_models/mlp.npz -o mlp.keras --val-split 0.2 --early-stopping 3 --epochs 50 --history hist.csv
      wtool train mlp.keras --data sample_models/mlp.npz -o mlp-more.keras       # continues the saved Adam state
      wtool train sample_models/texts.keras --data sample_models/texts/ -o texts-trained.keras --epochs 30 --lr 0.05
      wtool train sample_models/mlp.keras --data sample_models/mlp.npz -o mlp-fp16.keras --mixed-precision float16
      wtool train sample_models/mlp.keras --data sample_models/mlp.npz --lora 4 -o mlp-lora.keras  # adapters only
      cat sample_models/xor.jsonl | wtool train sample_models/xor.keras --data - -o xor2.keras --lr 5 --batch-size 4 --save-every 100
      wtool train sample_models/two_inputs.keras --data sample_models/two_inputs.npz -o two.keras \
          --x-key a=xa --x-key b=xb --y-key value=y_value --y-key kind=y_kind --loss-weight value=0.5
    """
    from wtool.train.distribute import check_options, parse_workers
    from wtool.train.loop import train
    from wtool.train.lora import make_options as lora_options
    from wtool.train.options import ScheduleOptions, TrainOptions

    worker_list = tuple(parse_workers(workers)) if workers is not None else ()
    if plot_path is not None:  # before training: a missing matplotlib must not cost a run
        from wtool.cli.plot import check_plot_target

        check_plot_target(plot_path)
    check_options(strategy, worker_list, task_index, replicas=replicas, timeout=collective_timeout)

    schedule = None
    if lr_schedule is not None:
        schedule = ScheduleOptions(lr_schedule, decay_steps, decay_rate, warmup_steps, min_lr,
                                   tuple(int(b) for b in _floats(boundaries, "--boundaries")),
                                   _floats(lr_values, "--lr-values"))
    elif boundaries or lr_values or decay_steps or decay_rate:
        raise UsageError("--decay-steps/--decay-rate/--boundaries/--lr-values need --lr-schedule")
    ctx = click.get_current_context()
    opts = TrainOptions(
        model=model, out=out_file, in_place=in_place, arch=arch, unsafe=unsafe, data=data,
        x=_one(x_files), y=_one(y_files), x_key=_one(x_keys) or "x", y_key=_one(y_keys) or "y", x_files=x_files,
        y_files=y_files, x_keys=x_keys, y_keys=y_keys, x_cols=x_cols, y_cols=y_cols, target=target,
        drop=tuple(c for item in drop for c in item.split(",") if c.strip()),
        image_size=image_size, color_mode=color_mode, max_length=max_length, mixed_precision=mixed_precision,
        val_data=val_data, val_split=val_split, epochs=epochs,
        batch_size=batch_size, shuffle=shuffle, seed=seed, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, clip_norm=clip_norm, schedule=schedule, loss=_one(losses), losses=losses,
        loss_weights=loss_weights, metrics=metrics,
        freeze=freeze, unfreeze=unfreeze, reset_optimizer=reset_optimizer, early_stopping=early_stopping,
        monitor=monitor, min_delta=min_delta, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, resume=resume, history=history_file, tensorboard=tensorboard,
        steps_per_execution=steps_per_execution, jit=jit, resume_command=_resume_command(ctx), strategy=strategy,
        workers=worker_list, task_index=task_index, replicas=replicas, collective_timeout=collective_timeout,
        lora=lora_options(lora_rank, lora_layers, lora_alpha, freeze, unfreeze))
    if data == "-":  # batches from stdin as they arrive: wtool.train.stream
        from wtool.cli import train_stream

        train_stream.run(out, opts, ctx, save_every, log_every)
        return
    if save_every is not None or log_every is not None:
        raise UsageError("--save-every/--log-every are for --data - (a stream)",
                         "for files, --checkpoint-dir DIR --checkpoint-every N keeps checkpoints by epoch")
    reporter: Any = None
    if out.show_progress:
        reporter = RichReporter(out)
    elif not out.quiet:
        reporter = LineReporter(out)
    result = train(opts, reporter)
    document = dict(result.summary)
    document["plot"] = None
    if plot_path is not None and result.summary.get("output") is not None:  # the chief's alone, as OUT
        from wtool.cli.plot import plot_curves

        plot_curves(plot_path, result.history)
        document["plot"] = plot_path
    document["history"] = result.history
    out.result_text(document, _render(document))
    sys.stdout.flush()
