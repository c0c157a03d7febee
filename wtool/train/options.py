"""What a run of `wtool train` is asked to do (TrainOptions), what it is about to do (RunPlan), and the
checks on options that need no model: they fail before TensorFlow starts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtool.errors import UsageError

CHUNK_BYTES = 64 * 1024 * 1024
MAX_STEPS_PER_CALL = 64




@dataclass
class ScheduleOptions:
    """A learning-rate schedule by name with its parameters (None: a default from the run's length)."""

    name: str = "constant"
    decay_steps: int | None = None
    decay_rate: float | None = None
    warmup_steps: int = 0
    min_lr: float = 0.0
    boundaries: tuple[int, ...] = ()
    values: tuple[float, ...] = ()


@dataclass
class TrainOptions:
    """Everything `wtool train` can be asked to do."""

    model: str
    out: str | None = None
    in_place: bool = False
    arch: str | None = None
    unsafe: bool = False
    data: str | None = None
    x: str | None = None
    y: str | None = None
    x_key: str = "x"
    y_key: str = "y"
    # Several inputs or outputs (wtool.train.multi_io): [NAME=]VALUE per model input / output
    x_files: tuple[str, ...] = ()  # --x FILE.npy
    y_files: tuple[str, ...] = ()
    x_keys: tuple[str, ...] = ()  # --x-key KEY of a .npz
    y_keys: tuple[str, ...] = ()
    x_cols: tuple[str, ...] = ()  # --x-cols COLS of a .csv
    y_cols: tuple[str, ...] = ()
    losses: tuple[str, ...] = ()  # --loss as given ([NAME=]LOSS); `loss` is the one loss of a one-output run
    loss_weights: tuple[str, ...] = ()  # --loss-weight NAME=W
    target: str | None = None
    drop: tuple[str, ...] = ()  # CSV columns that are not features (an id)
    image_size: str | None = None  # a folder of images: HxW (default: the model's input)
    color_mode: str | None = None
    max_length: int | None = None  # a folder of text files: characters kept per file (Keras's max_length)
    mixed_precision: str | None = None  # bfloat16 | float16: Keras's mixed dtype policy (wtool.train.precision)
    val_data: str | None = None
    val_split: float | None = None
    epochs: int = 1
    batch_size: int = 32
    shuffle: bool = True
    seed: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    clip_norm: float | None = None
    schedule: ScheduleOptions | None = None
    loss: str | None = None
    metrics: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    unfreeze: tuple[str, ...] = ()
    reset_optimizer: bool = False
    early_stopping: int | None = None
    monitor: str | None = None
    min_delta: float = 0.0
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    resume: bool = False
    history: str | None = None
    tensorboard: str | None = None
    steps_per_execution: int | None = None
    jit: str = "auto"
    resume_command: str | None = None
    strategy: str = "auto"  # auto | one-device | mirrored | multi-worker (wtool.train.distribute)
    workers: tuple[str, ...] = ()
    task_index: int | None = None
    replicas: int | None = None
    collective_timeout: float = 120.0
    lora: Any = None  # wtool.train.lora.LoraOptions: --lora RANK [--lora-layers GLOB] [--lora-alpha A]


@dataclass
class RunPlan:
    """What is about to happen; given to the reporter before the first step."""

    epochs: int
    start_epoch: int
    steps_per_epoch: int
    samples: int
    val_samples: int
    batch_size: int
    steps_per_call: int
    trainable_weights: int
    frozen_weights: int
    optimizer: str
    loss: str
    metrics: list[str]
    seed: int
    jit: bool
    notes: list[str] = field(default_factory=list)


class Reporter:
    """Receives progress from the loop. The default reports nothing."""

    def begin(self, plan: RunPlan) -> None:
        pass

    def epoch_begin(self, epoch: int) -> None:
        pass

    def progress(self, epoch: int, steps_done: int, loss: float) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class TrainResult:
    summary: dict[str, Any]
    history: list[dict[str, Any]]


def resolve_out(opts: TrainOptions) -> Path:
    model = Path(opts.model)
    if opts.out is None:
        if not opts.in_place:
            raise UsageError("no output file", "pass -o OUT (or --in-place to replace the input model)")
        return model
    out = Path(opts.out)
    same = out.exists() and model.exists() and os.path.samefile(out, model)
    if same and not opts.in_place:
        raise UsageError(f"-o {opts.out} is the input model", "write elsewhere, or pass --in-place to replace it")
    if opts.in_place and not same:
        raise UsageError("--in-place replaces the input model; do not also pass a different -o")
    if not out.name.lower().endswith((".keras", ".h5", ".hdf5")):
        raise UsageError(f"-o {out}: the output must end in .keras, .h5 or .weights.h5")
    for target in (out, Path(opts.history) if opts.history else None):
        if target is not None and not (target.parent if str(target.parent) else Path(".")).is_dir():
            raise UsageError(f"{target}: directory {target.parent} does not exist")
    return out


def check_options(opts: TrainOptions) -> None:
    if opts.epochs < 1:
        raise UsageError(f"--epochs must be at least 1 (not {opts.epochs})")
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (not {opts.batch_size})")
    if opts.val_data and opts.val_split:
        raise UsageError("give either --val-data or --val-split, not both")
    if opts.checkpoint_every is not None and opts.checkpoint_every < 1:
        raise UsageError("--checkpoint-every must be at least 1")
    if opts.early_stopping is not None and opts.early_stopping < 0:
        raise UsageError("--early-stopping PATIENCE must be 0 or more")
    if opts.steps_per_execution is not None and opts.steps_per_execution < 1:
        raise UsageError("--steps-per-execution must be at least 1")
    if opts.jit not in ("auto", "on", "off"):
        raise UsageError(f"--jit must be auto, on or off (not {opts.jit})")
    if opts.history and not opts.history.lower().endswith((".csv", ".json")):
        raise UsageError(f"--history {opts.history}: the file must end in .csv or .json")
    if opts.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package",
                             "pip install tensorboard (or: pip install 'wtool[tensorboard]')")
    if opts.lr is not None and not (opts.lr > 0 and math.isfinite(opts.lr)):
        raise UsageError(f"--lr must be a positive number (not {opts.lr})")
