"""Checkpoints and resume: one tf.train.Checkpoint of everything a run needs to go on bit for bit (model,
optimizer, RNG state, metric accumulators, best weights, run metadata), kept by a
tf.train.CheckpointManager, and the signal guard that turns Ctrl-C/SIGTERM into a checkpoint."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any, TypeVar

from wtool.errors import IncompatibleError, InputError, UsageError
from wtool.train import distribute
from wtool.train.history import RunState
from wtool.train.options import TrainOptions


def default_checkpoint_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def read_checkpoint_meta(directory: Path) -> tuple[str, dict[str, Any]]:
    """The newest checkpoint in `directory` and the run metadata stored in it."""
    import tensorflow as tf

    if not directory.is_dir():
        raise InputError(f"--resume: checkpoint directory {directory} does not exist",
                         "pass the --checkpoint-dir of the interrupted run")
    latest = tf.train.latest_checkpoint(str(directory))
    if latest is None:
        raise InputError(f"--resume: no checkpoint in {directory}")
    try:
        reader = tf.train.load_checkpoint(latest)
        raw = reader.get_tensor("meta/.ATTRIBUTES/VARIABLE_VALUE")
    except (tf.errors.OpError, ValueError) as exc:
        raise InputError(f"--resume: {latest} is not a wtool checkpoint ({str(exc).splitlines()[0][:160]})") from None
    return latest, json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))


def latest_checkpoint(directory: Path) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None


def fmt_resume(opts: TrainOptions, ckpt_dir: Path) -> str:
    if opts.resume_command:
        return opts.resume_command.replace("{CHECKPOINT_DIR}", str(ckpt_dir))
    return f"wtool train {opts.model} ... --checkpoint-dir {ckpt_dir} --resume"


_Guarded = TypeVar("_Guarded", bound="SignalGuard")


class SignalGuard:
    """SIGINT/SIGTERM set a flag the loop checks between calls; a second SIGINT aborts at once."""

    unnamed = "a signal on another worker"  # what name() says when the signal came to another process

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self: _Guarded) -> _Guarded:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else self.unnamed


class RunCheckpoints:
    """The run's checkpoint; its directory and CheckpointManager are made at the first save."""

    def __init__(self, model: Any, optimizer: Any, train_metrics: list[Any], early_stopping: bool,
                 dist: distribute.Distribution, directory: Path, out_path: Path, keep: int) -> None:
        import tensorflow as tf

        self.model = model
        self.optimizer = optimizer
        self.dist = dist
        self.directory = directory
        self.out_path = out_path
        self.keep = keep
        from wtool.store.model_paths import weight_paths

        names = {id(v): path for path, v in weight_paths(model)}
        # In the run metadata: `wtool inspect DIR` names the `weights` list by these paths (wtool.store.tf_checkpoint).
        self.weight_paths = [names.get(id(w), "") for w in model.weights]
        weight_ids = {id(w) for w in model.weights}
        rng_vars = [v for v in model.variables if id(v) not in weight_ids]
        metric_vars = [v for m in train_metrics for v in m.variables]
        self.best_vars = ([tf.Variable(w, trainable=False, name="best") for w in model.weights]
                          if early_stopping else [])
        # The best epoch's optimizer state too: OUT gets weights and moments of the same epoch.
        self.best_optimizer = ([tf.Variable(v, trainable=False, name="best_optimizer") for v in optimizer.variables]
                               if early_stopping else [])
        self.meta_var = (distribute.host_string() if dist.workers > 1  # no string broadcasts between workers
                         else tf.Variable("", dtype=tf.string, trainable=False))
        items: dict[str, Any] = {"model": model, "optimizer": optimizer, "weights": list(model.weights),
                                 "rng": rng_vars, "metrics": metric_vars, "meta": self.meta_var}
        if self.best_vars:
            items["best"] = self.best_vars
            items["best_optimizer"] = self.best_optimizer
        self.ckpt = tf.train.Checkpoint(**items)
        self.manager: Any = None

    def _get_manager(self) -> Any:
        import tensorflow as tf

        if self.manager is None:
            # Every worker saves (saving may read replicated state collectively); only the chief's are kept.
            directory = self.directory if self.dist.is_chief else Path(self.dist.scratch_dir(self.out_path))
            directory.mkdir(parents=True, exist_ok=True)
            self.manager = tf.train.CheckpointManager(self.ckpt, str(directory), max_to_keep=max(1, self.keep))
        return self.manager

    def save(self, meta_doc: dict[str, Any], number: int) -> str:
        self.meta_var.assign(json.dumps({**meta_doc, "weight_paths": self.weight_paths}))
        saved_to = str(self._get_manager().save(checkpoint_number=number))
        return saved_to if self.dist.is_chief else str(self.directory / Path(saved_to).name)  # the chief's is kept

    def kept(self) -> str | None:
        if self.manager is not None and self.dist.is_chief:
            return str(self.manager.latest_checkpoint) if self.manager.latest_checkpoint else None
        return latest_checkpoint(self.directory)

    def keep_best(self) -> None:
        for b, w in zip(self.best_vars, self.model.weights, strict=True):
            b.assign(w)
        for b, v in zip(self.best_optimizer, self.optimizer.variables, strict=True):
            b.assign(v)

    def restore_best(self) -> None:
        for w, b in zip(self.model.weights, self.best_vars, strict=False):
            w.assign(b)
        for v, b in zip(self.optimizer.variables, self.best_optimizer, strict=True):
            v.assign(b)


def check_epochs_left(latest: str, meta: dict[str, Any], epochs: int) -> None:
    """--epochs counts all epochs, those done included: a resume must leave some to run."""
    done, step = int(meta["epoch"]), int(meta["step"])
    if epochs < done or (epochs == done and step == 0):
        raise UsageError(f"--resume: {latest} is at the end of epoch {done}; --epochs {epochs} leaves nothing to run",
                         f"--epochs is the total count, the epochs done included: pass --epochs {done + 1} or more "
                         f"(the interrupted run had --epochs {meta.get('epochs', '?')})")


def resume(ckpts: RunCheckpoints, latest: str, meta: dict[str, Any], opts: TrainOptions, rows: int,
           batch: int, optimizer: Any) -> RunState:
    """Restore the interrupted run's checkpoint into this run's objects; refuse one made for other data."""
    import tensorflow as tf

    if meta.get("rows") != rows or meta.get("batch_size") != batch:
        raise IncompatibleError(f"--resume: the checkpoint was made with {meta.get('rows')} rows and batch size "
                                f"{meta.get('batch_size')}; this run has {rows} rows and batch size {batch}",
                                "resume with the data and --batch-size of the interrupted run")
    if bool(meta.get("early_stopping")) != bool(ckpts.best_vars):
        raise UsageError("--resume: pass --early-stopping exactly when the interrupted run had it")
    try:
        ckpts.ckpt.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise IncompatibleError(f"--resume: {latest} does not fit this model and options "
                                f"({str(exc).splitlines()[0][:200]})",
                                "resume with the model, --freeze and --metric options of the interrupted run") from None
    lr_var: Any = getattr(optimizer, "_learning_rate", None)
    if opts.lr is not None and hasattr(lr_var, "assign"):  # e.g. resuming a diverged run with a lower rate
        lr_var.assign(float(opts.lr))
    state = RunState(history=meta.get("history", []), start_epoch=int(meta["epoch"]), start_step=int(meta["step"]))
    state.es = meta.get("es", state.es)
    state.partial = list(meta.get("partial", state.partial))
    return state
