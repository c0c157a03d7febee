"""The training loop behind `wtool train`: tf.GradientTape inside a tf.function.

Several train steps run per tf.function call (as Keras's `steps_per_execution`), batches
are numpy slices through a per-epoch index permutation (seeded by seed and epoch, so a
resumed run sees the same batches), and Keras's own optimizers, schedules, losses and
metrics are used by name. TensorFlow and Keras are imported inside functions only.

The library knows nothing of click: `train(options, reporter)` returns a TrainResult and
raises WtoolError subclasses; the command renders.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import os
import secrets
import shutil
import signal
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import (
    DivergedError,
    IncompatibleError,
    InputError,
    InternalError,
    Interrupted,
    UsageError,
)
from wtool.fileio import atomic_output, check_input_file
from wtool.train import distribute
from wtool.train.data import (
    LabelledData,
    ModelIO,
    check_finite,
    check_fits,
    load_labelled,
    split_validation,
)

# Rows gathered per tf.function call are capped at this many bytes (steps_per_execution "auto").
CHUNK_BYTES = 64 * 1024 * 1024
MAX_STEPS_PER_CALL = 64
# --jit auto compiles with XLA only for runs of at least this many steps (see _auto_jit).
AUTO_JIT_MIN_STEPS = 5000
SCHEDULES = ("constant", "cosine", "cosine-restarts", "exponential", "step", "inverse-time", "polynomial",
             "piecewise")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl", "lion",
                   "lamb", "adafactor")


# ---------------------------------------------------------------------------------------------- options


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
    target: str | None = None
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


# ------------------------------------------------------------------------------------- saved training


@dataclass
class SavedOptimizerState:
    """Optimizer variables stored in a model file, in the optimizer's own order."""

    values: list[np.ndarray]
    names: list[str] | None  # tf.keras 2: `iteration` or `WEIGHT/PATH::slot`; None: the optimizer's own order
    legacy: bool = False  # Keras 1/2 names that cannot be mapped
    source: str = ""

    @property
    def iterations(self) -> int:
        if self.names:
            for key, value in zip(self.names, self.values, strict=False):
                if key in ("iteration", "iterations"):
                    return int(value)
        if self.values and np.asarray(self.values[0]).shape == ():
            return int(self.values[0])
        return 0


@dataclass
class SavedTraining:
    compile_config: dict[str, Any] | None
    optimizer_state: SavedOptimizerState | None


_LEGACY_SLOTS = {"m": "momentum", "v": "velocity", "vhat": "velocity_hat", "momentum": "momentum",
                 "rms": "velocity", "mg": "average_gradient", "accumulator": "accumulator"}


def _decode(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _h5_state(h5: Any, source: str) -> SavedOptimizerState | None:
    """Keras 3 `optimizer/vars/<i>` or legacy `optimizer_weights` (with `weight_names`)."""
    if "optimizer" in h5 and "vars" in h5["optimizer"]:
        group = h5["optimizer"]["vars"]
        order = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
        return SavedOptimizerState([np.asarray(group[k]) for k in order], None, source=source)
    if "optimizer_weights" in h5:
        group = h5["optimizer_weights"]
        raw = group.attrs.get("weight_names")
        if raw is None:
            return None
        names = [_decode(n) for n in raw]
        if not names:
            return None
        values = [np.asarray(group[n]) for n in names]
        if all(":" not in n for n in names):  # Keras 3: in the optimizer's own order, like `optimizer/vars`
            return SavedOptimizerState(values, None, source=source)
        keys: list[str] = []
        for n in names:  # tf.keras 2: `Adam/iter:0`, `Adam/hidden/kernel/m:0`
            base = n.rsplit(":", 1)[0]
            parts = base.split("/")
            if parts[-1] in ("iter", "iterations"):
                keys.append("iteration")
            elif len(parts) >= 4 and parts[-1] in _LEGACY_SLOTS:
                keys.append("/".join(parts[1:-1]) + "::" + _LEGACY_SLOTS[parts[-1]])
            else:
                return SavedOptimizerState(values, None, legacy=True, source=source)
        return SavedOptimizerState(values, keys, source=source)
    return None


def read_saved_training(path: str, arch: str | None = None) -> SavedTraining:
    """Compile config and optimizer state stored in a model file (h5py and zipfile only)."""
    import h5py

    p = check_input_file(path)
    name = p.name.lower()
    compile_config: dict[str, Any] | None = None
    state: SavedOptimizerState | None = None
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
                if "config.json" in names:
                    cfg = json.loads(zf.read("config.json"))
                    compile_config = cfg.get("compile_config") or None
                if "model.weights.h5" in names:
                    with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
                        state = _h5_state(h5, str(p))
        else:
            with h5py.File(p, "r") as h5:
                raw = h5.attrs.get("training_config")
                if raw is not None:
                    tc = json.loads(_decode(raw))
                    compile_config = {
                        "optimizer": tc.get("optimizer_config"),
                        "loss": tc.get("loss"),
                        "metrics": tc.get("metrics"),
                    }
                state = _h5_state(h5, str(p))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read the saved training state ({str(exc).splitlines()[0][:200]})") from None
    if name.endswith(".weights.h5") and arch is not None and compile_config is None:
        compile_config = read_saved_training(arch).compile_config
    return SavedTraining(compile_config, state)


# ------------------------------------------------------------------------------------------ the model


@dataclass
class LayerNode:
    path: str
    layer: Any
    parent: str | None
    children: list[str] = field(default_factory=list)


def layer_tree(model: Any) -> dict[str, LayerNode]:
    """Layers by path, parents before children, named like weight paths (wtool.store.model_paths): models are
    walked into (`features/d1`), so are other layers' sub-layers (`bidir/forward_lstm`), except RNN cells
    and TimeDistributed's inner layer, which add no level."""
    from wtool.store.model_paths import _sublayers, _transparent

    keras = _keras()
    nodes: dict[str, LayerNode] = {}

    def add(layer: Any, path: str, parent: str | None) -> None:
        nodes[path] = LayerNode(path, layer, parent)
        if parent is not None:
            nodes[parent].children.append(path)
        if isinstance(layer, keras.Model):
            for sub in layer.layers:
                if not isinstance(sub, keras.layers.InputLayer):
                    add(sub, f"{path}/{sub.name}", path)
            return
        for sub in _sublayers(layer):
            if not _transparent(layer, sub) and sub.weights and f"{path}/{sub.name}" not in nodes:
                add(sub, f"{path}/{sub.name}", path)

    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            add(layer, layer.name, None)
    return nodes


def _effective(nodes: dict[str, LayerNode], path: str) -> bool:
    node: LayerNode | None = nodes[path]
    while node is not None:
        if not node.layer.trainable:
            return False
        node = nodes[node.parent] if node.parent else None
    return True


def _matching(nodes: dict[str, LayerNode], pattern: str, option: str) -> list[str]:
    hits = [p for p in nodes if fnmatch.fnmatchcase(p, pattern)]
    if not hits:
        paths = list(nodes)
        shown = ", ".join(paths[:20]) + (f", ... ({len(paths)} in all)" if len(paths) > 20 else "")
        raise UsageError(f"{option} '{pattern}' matches no layer", f"layer paths: {shown}")
    return hits


def apply_freezing(nodes: dict[str, LayerNode], freeze: tuple[str, ...], unfreeze: tuple[str, ...]) -> None:
    """--freeze then --unfreeze globs on layer paths, on top of the trainable flags saved in the model."""
    desired = {p: _effective(nodes, p) for p in nodes}

    def subtree(path: str) -> Iterator[str]:
        yield path
        for child in nodes[path].children:
            yield from subtree(child)

    for pattern in freeze:
        for hit in _matching(nodes, pattern, "--freeze"):
            for p in subtree(hit):
                desired[p] = False
    for pattern in unfreeze:
        for hit in _matching(nodes, pattern, "--unfreeze"):
            for p in subtree(hit):
                desired[p] = True
    if not freeze and not unfreeze:
        return
    for path, node in nodes.items():  # parents first: setting a parent re-sets its children
        wanted = any(desired[p] for p in subtree(path))
        if node.layer.trainable != wanted or node.children:
            node.layer.trainable = wanted


def frozen_weights(model: Any, nodes: dict[str, LayerNode]) -> list[tuple[str, Any]]:
    """(path, variable) of every weight of a frozen layer (trainable or not: none of them may move)."""
    names = _weight_names(model)
    out = []
    seen: set[int] = set()
    for path, node in nodes.items():
        if _effective(nodes, path):
            continue
        below = {id(w) for child in node.children for w in nodes[child].layer.weights}
        for w in node.layer.weights:
            if id(w) in seen or id(w) in below:
                continue
            seen.add(id(w))
            out.append((names.get(id(w), f"{path}/{w.name}"), w))
    return out


def _weight_names(model: Any) -> dict[int, str]:
    """Canonical weight paths from wtool.store.model_paths (the store helper's module), or Keras's own paths."""
    try:
        from wtool.store.model_paths import weight_paths
    except ImportError:
        return {id(v): v.path for v in model.weights}
    try:
        return {id(v): p for p, v in weight_paths(model)}
    except Exception:  # noqa: BLE001 - naming only; never let it stop training
        return {id(v): v.path for v in model.weights}


def model_io(model: Any) -> ModelIO:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise IncompatibleError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                "train handles models with one input and one output")
    inp = model.inputs[0]
    outp = model.outputs[0]
    return ModelIO(tuple(inp.shape[1:]), str(inp.dtype), tuple(outp.shape[1:]))


# ---------------------------------------------------------------------------------- optimizer & loss


def _keras() -> Any:
    from wtool.graph.model import import_keras

    return import_keras()


def _clean_optimizer_config(cls: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Drop tf.keras 2 arguments Keras 3 refuses (`decay`, `lr`...)."""
    import inspect

    config = dict(config)
    if "lr" in config and "learning_rate" not in config:
        config["learning_rate"] = config.pop("lr")
    allowed: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            allowed.update(inspect.signature(init).parameters)
    return {k: v for k, v in config.items() if k in allowed}


def saved_optimizer(compile_config: dict[str, Any] | None) -> Any | None:
    """The optimizer described by a saved compile config (Keras 3 or tf.keras 2), or None."""
    if not compile_config or not compile_config.get("optimizer"):
        return None
    keras = _keras()
    cfg = compile_config["optimizer"]
    if isinstance(cfg, str):
        try:
            return keras.optimizers.get(cfg)
        except ValueError:
            return None
    class_name = str(cfg.get("class_name", ""))
    cls = keras.optimizers.get(class_name.lower()).__class__ if class_name.lower() in OPTIMIZER_NAMES else None
    try:
        if cls is None:
            return keras.optimizers.deserialize(cfg)
        inner = _clean_optimizer_config(cls, cfg.get("config", {}))
        lr = inner.get("learning_rate")
        if isinstance(lr, dict):
            inner["learning_rate"] = keras.optimizers.schedules.deserialize(lr)
        return cls.from_config(inner)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"the model's saved optimizer ({class_name}) cannot be rebuilt: "
                         f"{str(exc).splitlines()[0][:200]}", "pass --optimizer NAME (and --lr)") from None


def make_schedule(lr: float, sched: ScheduleOptions, total_steps: int, steps_per_epoch: int) -> Any:
    """A Keras LearningRateSchedule by name; decay steps default to the run's length or one epoch."""
    keras = _keras()
    S = keras.optimizers.schedules
    name = sched.name.replace("_", "-")
    if name not in SCHEDULES:
        raise UsageError(f"--lr-schedule '{sched.name}' is unknown", f"expected one of {', '.join(SCHEDULES)}")
    if name == "constant":
        return lr
    total = max(1, total_steps)
    if name == "cosine":
        steps = sched.decay_steps or max(1, total - sched.warmup_steps)
        if sched.warmup_steps:
            return S.CosineDecay(0.0, steps, alpha=sched.min_lr / lr if lr else 0.0, warmup_target=lr,
                                 warmup_steps=sched.warmup_steps)
        return S.CosineDecay(lr, steps, alpha=sched.min_lr / lr if lr else 0.0)
    if name == "cosine-restarts":
        return S.CosineDecayRestarts(lr, sched.decay_steps or max(1, steps_per_epoch),
                                     alpha=sched.min_lr / lr if lr else 0.0)
    if name == "exponential":
        return S.ExponentialDecay(lr, sched.decay_steps or max(1, steps_per_epoch), sched.decay_rate or 0.96)
    if name == "step":
        return S.ExponentialDecay(lr, sched.decay_steps or max(1, 10 * steps_per_epoch), sched.decay_rate or 0.5,
                                  staircase=True)
    if name == "inverse-time":
        return S.InverseTimeDecay(lr, sched.decay_steps or max(1, steps_per_epoch), sched.decay_rate or 0.5)
    if name == "polynomial":
        return S.PolynomialDecay(lr, sched.decay_steps or total, end_learning_rate=sched.min_lr)
    if not sched.boundaries or len(sched.values) != len(sched.boundaries) + 1:
        raise UsageError("--lr-schedule piecewise needs --boundaries B1,B2,... and --lr-values V0,V1,V2,... "
                         "(one more value than boundaries)")
    return S.PiecewiseConstantDecay(list(sched.boundaries), list(sched.values))


def build_optimizer(opts: TrainOptions, base: Any | None, total_steps: int, steps_per_epoch: int) -> Any:
    """The run's optimizer: --optimizer (or the saved one, or adam), with --lr/--momentum/... applied."""
    keras = _keras()
    if opts.optimizer is not None:
        name = opts.optimizer.lower()
        try:
            fresh = keras.optimizers.get(name)
        except ValueError:
            raise UsageError(f"--optimizer '{opts.optimizer}' is unknown",
                             f"expected one of {', '.join(OPTIMIZER_NAMES)}") from None
        if base is not None and type(base) is type(fresh):
            fresh = base
        base = fresh
    if base is None:
        base = keras.optimizers.Adam()
    config = base.get_config()
    cls = type(base)
    if opts.momentum is not None:
        if "momentum" not in config:
            raise UsageError(f"--momentum does not apply to {cls.__name__}", "it applies to sgd and rmsprop; "
                             "adam-like optimizers have beta_1")
        config["momentum"] = opts.momentum
    if opts.weight_decay is not None:
        config["weight_decay"] = opts.weight_decay
    if opts.clip_norm is not None:
        config["global_clipnorm"] = opts.clip_norm
        config["clipnorm"] = None
    lr_value = float(opts.lr) if opts.lr is not None else None
    sched = opts.schedule
    if lr_value is not None or (sched is not None and sched.name != "constant"):
        if lr_value is None:
            current = base.learning_rate
            lr_value = float(np.asarray(current)) if not callable(current) else 1e-3
        config["learning_rate"] = make_schedule(lr_value, sched or ScheduleOptions(), total_steps, steps_per_epoch)
    elif isinstance(config.get("learning_rate"), dict):
        config["learning_rate"] = keras.optimizers.schedules.deserialize(config["learning_rate"])
    try:
        return cls.from_config(config)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot make the optimizer {cls.__name__}: {str(exc).splitlines()[0][:200]}") from None


def describe_optimizer(opt: Any) -> str:
    lr = opt._learning_rate
    if hasattr(lr, "get_config"):
        lr_text = f"{type(lr).__name__}({_num(lr.get_config().get('initial_learning_rate', ''))})"
    else:
        lr_text = _num(float(np.asarray(lr)))
    extra = ""
    cfg = opt.get_config()
    if cfg.get("momentum"):
        extra += f", momentum {_num(cfg['momentum'])}"
    if cfg.get("weight_decay"):
        extra += f", weight decay {_num(cfg['weight_decay'])}"
    if cfg.get("global_clipnorm"):
        extra += f", clip norm {_num(cfg['global_clipnorm'])}"
    return f"{type(opt).__name__.lower()} (lr {lr_text}{extra})"


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _slot_key(var: Any) -> str:
    return var.path.split("/", 1)[-1]


def _slot_owners(opt_vars: list[Any], refs: list[Any]) -> list[tuple[int, str] | None]:
    """(index into refs, slot name) of each optimizer variable; None for iteration/learning_rate.

    Keras names a slot `<optimizer>/<weight path with _>_<slot>`; the longest matching weight
    prefix wins, and weights with the same path are taken in order."""
    prefixes = [ref.path.replace("/", "_") + "_" for ref in refs]
    used: dict[tuple[str, str], int] = {}
    owners: list[tuple[int, str] | None] = []
    for var in opt_vars:
        key = _slot_key(var)
        hits = [(len(p), i) for i, p in enumerate(prefixes) if key.startswith(p)]
        if not hits:
            owners.append(None)
            continue
        longest = max(h[0] for h in hits)
        same = [i for n, i in hits if n == longest]
        slot = key[longest:]
        nth = used.get((prefixes[same[0]], slot), 0)
        used[(prefixes[same[0]], slot)] = nth + 1
        owners.append((same[min(nth, len(same) - 1)], slot))
    return owners


def restore_optimizer_state(optimizer: Any, state: SavedOptimizerState, saved_base: Any | None,
                            saved_trainable: list[Any], trainable: list[Any]) -> list[str]:
    """Continue from saved optimizer variables; anything present that cannot be restored is an error (exit 4).

    Slots are matched to weights by identity (Keras 3 files, whose state is in the optimizer's
    own order for the saved trainable weights) or by weight path (tf.keras 2 names), so a run
    that freezes or unfreezes layers keeps the moments of the weights it still trains.
    """
    hint = "pass --reset-optimizer to start the optimizer fresh"
    src = state.source
    if state.legacy:
        raise IncompatibleError(f"{src}: the saved optimizer state uses Keras 1/2 variable names that cannot be "
                                "matched to this model's weights", hint)
    if saved_base is None:
        raise IncompatibleError(f"{src}: the file has optimizer state but no optimizer config to read it with", hint)
    if type(saved_base) is not type(optimizer):
        raise IncompatibleError(f"{src}: the saved optimizer state is {type(saved_base).__name__}'s; "
                                f"{type(optimizer).__name__} cannot continue it", hint)
    values = state.values
    saved: dict[tuple[int, str], np.ndarray] = {}  # (id of weight, slot) -> value
    iteration: np.ndarray | None = None
    if state.names is None:
        reader = type(saved_base).from_config(saved_base.get_config())
        with _keras().name_scope(reader.name, caller=reader):
            reader.build(saved_trainable)
        layout = reader.variables
        if len(layout) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(layout, values, strict=True)):
            raise IncompatibleError(f"{src}: the saved optimizer state ({len(values)} arrays) does not fit "
                                    f"{type(optimizer).__name__} on this model ({len(layout)} variables)", hint)
        for var, owner, value in zip(layout, _slot_owners(layout, saved_trainable), values, strict=True):
            if owner is not None:
                saved[(id(saved_trainable[owner[0]]), owner[1])] = value
            elif _slot_key(var) == "iteration":
                iteration = value
    else:
        for key, value in zip(state.names, values, strict=True):
            if key == "iteration":
                iteration = value
                continue
            weight, _, slot = key.partition("::")
            found = [v for v in saved_trainable if v.path == weight or v.path.endswith("/" + weight)]
            if len(found) != 1:
                raise IncompatibleError(f"{src}: saved optimizer variable for '{weight}' matches "
                                        f"{len(found) or 'no'} weights of this model", hint)
            saved[(id(found[0]), slot)] = value
    opt_vars = optimizer.variables
    used = 0
    missing = 0
    for var, owner in zip(opt_vars, _slot_owners(opt_vars, trainable), strict=True):
        if owner is None:
            if _slot_key(var) == "iteration" and iteration is not None:
                var.assign(iteration)
            continue
        saved_value = saved.get((id(trainable[owner[0]]), owner[1]))
        if saved_value is None:
            missing += 1
            continue
        if tuple(var.shape) != saved_value.shape:
            raise IncompatibleError(f"{src}: saved optimizer variable {_slot_key(var)} has shape {saved_value.shape}, "
                                    f"this model needs {tuple(var.shape)}", hint)
        var.assign(saved_value)
        used += 1
    if saved and not used:
        raise IncompatibleError(f"{src}: none of the {len(saved)} saved optimizer variables belongs to a weight "
                                "this run trains", hint)
    notes = []
    if missing:
        notes.append(f"{missing} optimizer variables had no saved value (newly trainable weights) and start at zero")
    if len(saved) > used:
        notes.append(f"{len(saved) - used} saved optimizer variables belong to weights frozen in this run")
    return notes


def resolve_loss(opts: TrainOptions, compile_config: dict[str, Any] | None, y_sample: np.ndarray,
                 pred_sample: np.ndarray) -> tuple[Any, Any, str]:
    """(identifier for compile, loss object, display name) from --loss or the saved compile config."""
    from keras.src.trainers import compile_utils

    keras = _keras()
    ident: Any = opts.loss
    if ident is None and compile_config:
        ident = compile_config.get("loss")
        if isinstance(ident, (list, tuple)) and len(ident) == 1:
            ident = ident[0]
        if isinstance(ident, dict) and "class_name" not in ident and len(ident) == 1:
            ident = next(iter(ident.values()))
    if ident is None:
        raise UsageError("the model has no saved loss", "pass --loss NAME (e.g. mse, sparse_categorical_crossentropy)")
    try:
        if isinstance(ident, dict):
            ident = keras.losses.deserialize(ident)
        obj = compile_utils.get_loss(ident, y_sample, pred_sample)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--loss '{ident}' is not a Keras loss ({str(exc).splitlines()[0][:120]})",
                         "e.g. mse, mae, binary_crossentropy, sparse_categorical_crossentropy") from None
    if obj is None:
        raise UsageError(f"--loss '{ident}' is not a Keras loss")
    name = ident if isinstance(ident, str) else getattr(obj, "name", type(obj).__name__)
    return ident, obj, str(name)


def resolve_metrics(opts: TrainOptions, compile_config: dict[str, Any] | None, y_sample: np.ndarray,
                    pred_sample: np.ndarray) -> tuple[list[Any], list[Any], list[Any]]:
    """(identifiers, train metric objects, validation metric objects)."""
    from keras.src.trainers import compile_utils

    keras = _keras()
    idents: list[Any] = list(opts.metrics)
    if not idents and compile_config and compile_config.get("metrics"):
        raw = compile_config["metrics"]
        if isinstance(raw, dict):
            raw = [m for v in raw.values() for m in (v if isinstance(v, list) else [v])]
        for m in raw:
            if isinstance(m, list):
                idents.extend(m)
            else:
                idents.append(m)
    train_m, val_m, for_compile = [], [], []
    for ident in idents:

        def fresh(ident: Any = ident) -> Any:  # a new object each time: train and validation keep apart states
            return keras.metrics.deserialize(ident) if isinstance(ident, dict) else ident

        try:
            train_m.append(compile_utils.get_metric(fresh(), y_sample, pred_sample))
            val_m.append(compile_utils.get_metric(fresh(), y_sample, pred_sample))
            for_compile.append(fresh())
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--metric '{ident}' is not a Keras metric ({str(exc).splitlines()[0][:120]})",
                             "e.g. accuracy, mae, mse, auc, precision, recall") from None
    names = [m.name for m in train_m]
    if len(set(names)) != len(names) or "loss" in names:
        raise UsageError(f"metric names must differ from each other and from 'loss' (got {', '.join(names)})")
    return for_compile, train_m, val_m


# -------------------------------------------------------------------------------------------- batches


class Batches:
    """Epoch plans as numpy slices through an index permutation seeded by (seed, epoch)."""

    def __init__(self, data: LabelledData, batch_size: int, steps_per_call: int, x_dtype: str, y_dtype: str,
                 shuffle: bool, seed: int) -> None:
        self.x = data.x
        self.y = data.y
        self.n = len(data)
        self.b = batch_size
        self.k = steps_per_call
        self.x_dtype = np.dtype(x_dtype)
        self.y_dtype = np.dtype(y_dtype)
        self.shuffle = shuffle
        self.seed = seed
        self.full = self.n // self.b
        self.rem = self.n % self.b
        self.steps = self.full + (1 if self.rem else 0)

    def _take(self, arr: np.ndarray, order: np.ndarray | None, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
        block = arr[lo:hi] if order is None else arr[order[lo:hi]]
        return np.asarray(block, dtype=dtype)

    def order(self, epoch: int) -> np.ndarray | None:
        """The epoch's row permutation (None: rows in file order)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else None

    def chunks(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (steps, xs, ys) with xs shaped (steps, batch, ...), starting after `start_step` batches."""
        order = self.order(epoch)
        step = start_step
        while step < self.full:
            k = min(self.k, self.full - step)
            lo, hi = step * self.b, (step + k) * self.b
            xs = self._take(self.x, order, lo, hi, self.x_dtype)
            ys = self._take(self.y, order, lo, hi, self.y_dtype)
            yield k, xs.reshape(k, self.b, *xs.shape[1:]), ys.reshape(k, self.b, *ys.shape[1:])
            step += k
        if self.rem and step <= self.full:
            lo = self.full * self.b
            xs = self._take(self.x, order, lo, self.n, self.x_dtype)
            ys = self._take(self.y, order, lo, self.n, self.y_dtype)
            yield 1, xs[None], ys[None]


def _prefetch(it: Iterator[Any]) -> Iterator[Any]:
    """Gather the next chunk on a thread while TensorFlow runs the current one (TF releases the GIL)."""
    box: dict[str, Any] = {}
    sentinel = object()

    def fetch() -> None:
        try:
            box["item"] = next(it, sentinel)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    while True:
        worker.join()
        if "error" in box:
            raise box["error"]
        item = box.pop("item")
        if item is sentinel:
            return
        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        yield item


# ----------------------------------------------------------------------------------------- checkpoints


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
    return latest, json.loads(_decode(raw))


class _SignalGuard:
    """SIGINT/SIGTERM set a flag the loop checks between calls; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
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


# ------------------------------------------------------------------------------------------- the loop


def _resolve_out(opts: TrainOptions) -> Path:
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


def _check_options(opts: TrainOptions) -> None:
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


def _y_dtype(y: np.ndarray, loss_name: str) -> str:
    if y.dtype.kind in "iu" and "sparse" in loss_name.lower().replace("_", ""):
        return "int64" if y.dtype.itemsize > 4 else "int32"
    return "float32"


def _auto_jit(nodes: dict[str, LayerNode], planned_steps: int) -> bool:
    """XLA where it helps: no convolutions (XLA slows them on CPU) or recurrent layers, and a run long enough
    to repay compiling each chunk shape (seconds, and some hundreds of MB at peak)."""
    slow = ("Conv", "Pool", "LSTM", "GRU", "RNN", "Bidirectional", "TimeDistributed")
    if any(word in type(n.layer).__name__ for n in nodes.values() for word in slow):
        return False
    return planned_steps >= AUTO_JIT_MIN_STEPS


def _monitor_mode(name: str) -> str:
    low = name.lower()
    return "max" if any(k in low for k in ("acc", "auc", "precision", "recall", "f1", "iou")) else "min"


def _fmt_resume(opts: TrainOptions, ckpt_dir: Path) -> str:
    if opts.resume_command:
        return opts.resume_command.replace("{CHECKPOINT_DIR}", str(ckpt_dir))
    return f"wtool train {opts.model} ... --checkpoint-dir {ckpt_dir} --resume"


def train(opts: TrainOptions, reporter: Reporter | None = None) -> TrainResult:
    """Train the model in `opts.model` on the data and write `opts.out` (atomically). See module doc."""
    reporter = reporter or Reporter()
    t_start = time.perf_counter()
    _check_options(opts)
    out_path = _resolve_out(opts)
    check_input_file(opts.model)
    ckpt_dir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else default_checkpoint_dir(out_path)

    # Data first: a bad file fails fast, before TensorFlow starts.
    data = load_labelled(opts.data, x=opts.x, y=opts.y, x_key=opts.x_key, y_key=opts.y_key, target=opts.target)
    val: LabelledData | None = None
    if opts.val_data:
        vpath = Path(opts.val_data)
        if vpath.suffix.lower() == ".csv":
            val = load_labelled(opts.val_data, target=opts.target)
        else:
            val = load_labelled(opts.val_data, x_key=opts.x_key, y_key=opts.y_key)
    elif opts.val_split:
        data, val = split_validation(data, opts.val_split)
    check_finite(data)
    if val is not None:
        check_finite(val)

    # The strategy comes before TensorFlow runs anything (devices and collectives are fixed at start-up);
    # the model, optimizer, metrics and checkpoints are then made inside its scope.
    dist = distribute.make_strategy(opts.strategy, opts.workers, opts.task_index, replicas=opts.replicas,
                                    timeout=opts.collective_timeout)
    try:
        with dist.scope():
            return _train_in_scope(opts, reporter, dist, data, val, out_path, ckpt_dir, t_start)
    except Exception as exc:
        if dist.workers > 1 and distribute.is_cluster_failure(exc):
            raise distribute.cluster_error(exc, dist.cluster, dist.timeout, checkpoint=_latest_checkpoint(ckpt_dir),
                                           resume=_fmt_resume(opts, ckpt_dir)) from exc
        raise
    finally:
        dist.cleanup()


def _latest_checkpoint(directory: Path) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None


def _train_in_scope(opts: TrainOptions, reporter: Reporter, dist: distribute.Distribution, data: LabelledData,
                    val: LabelledData | None, out_path: Path, ckpt_dir: Path, t_start: float) -> TrainResult:
    keras = _keras()
    import tensorflow as tf

    from wtool.graph.model import load_model, save_model

    latest: str | None = None
    meta: dict[str, Any] = {}
    if opts.resume:
        latest, meta = read_checkpoint_meta(ckpt_dir)
    seed = int(meta["seed"]) if meta else (opts.seed if opts.seed is not None else secrets.randbelow(2**31))
    if dist.workers > 1:
        seed = distribute.agree_on_run(dist, seed, opts.seed is None and not meta, rows=len(data),
                                       validation_rows=len(val) if val is not None else 0, batch_size=opts.batch_size)
    keras.utils.set_random_seed(seed)

    model = load_model(opts.model, unsafe=opts.unsafe, arch=opts.arch)
    saved = read_saved_training(opts.model, arch=opts.arch)
    io_ = model_io(model)
    nodes = layer_tree(model)
    saved_trainable = list(model.trainable_variables)
    apply_freezing(nodes, opts.freeze, opts.unfreeze)
    trainable = list(model.trainable_variables)
    frozen = frozen_weights(model, nodes)

    n = len(data)
    batch = min(opts.batch_size, n)
    steps_per_epoch = -(-n // batch)
    pred_sample = np.zeros((1, *[d or 1 for d in io_.output_shape]), dtype="float32")
    y_sample = np.asarray(data.y[:1])
    loss_ident, loss_obj, loss_name = resolve_loss(opts, saved.compile_config, y_sample, pred_sample)
    check_fits(data, io_, loss_name)
    if val is not None:
        check_fits(val, io_, loss_name)
    metric_idents, train_metrics, val_metrics = resolve_metrics(opts, saved.compile_config, y_sample, pred_sample)

    base = saved_optimizer(saved.compile_config)
    optimizer = build_optimizer(opts, base, opts.epochs * steps_per_epoch, steps_per_epoch)
    with keras.name_scope(optimizer.name, caller=optimizer):
        optimizer.build(trainable)
    notes: list[str] = []
    state = saved.optimizer_state
    restored_steps = 0
    if state is not None and state.iterations > 0 and not opts.reset_optimizer and not opts.resume:
        notes += restore_optimizer_state(optimizer, state, base, saved_trainable, trainable)
        restored_steps = int(optimizer.iterations.numpy())
        notes.insert(0, f"continuing the saved optimizer state ({restored_steps} steps done)")
    elif state is not None and state.iterations > 0 and opts.reset_optimizer:
        notes.append(f"--reset-optimizer: the saved optimizer state ({state.iterations} steps) is not used")

    model.compile(optimizer=optimizer, loss=loss_ident, metrics=metric_idents or None)

    # Steps per call: whole epoch for small data, capped by rows in memory per call.
    x_row = int(np.prod(data.x.shape[1:], dtype=np.int64)) * np.dtype(io_.input_dtype).itemsize
    if opts.steps_per_execution:
        k = opts.steps_per_execution
    else:
        k = max(1, min(MAX_STEPS_PER_CALL, CHUNK_BYTES // max(1, x_row * batch)))
    k = min(k, max(1, n // batch))
    x_dtype = io_.input_dtype if io_.input_dtype != "float64" else "float32"
    y_dtype = _y_dtype(data.y, loss_name)
    batches: Any = Batches(data, batch, k, x_dtype, y_dtype, opts.shuffle, seed)  # or distribute.ShardedBatches
    val_batches: Any = Batches(val, min(batch, len(val)), k, x_dtype, y_dtype, False, seed) if val is not None else None
    planned = (opts.epochs - (int(meta["epoch"]) if meta else 0)) * steps_per_epoch
    jit = opts.jit == "on" or (opts.jit == "auto" and _auto_jit(nodes, planned))
    fns: Any
    if dist.distributed:  # the same global batches, each replica taking its slice of every one
        batches = distribute.ShardedBatches(batches, dist)
        if val_batches is not None:
            val_batches = distribute.ShardedBatches(val_batches, dist)
        fns = distribute.make_functions(dist, model, loss_obj, train_metrics, val_metrics, optimizer, trainable,
                                        jit)
        notes.append(dist.describe())
        if batches.skips_last:
            notes.append(f"the last {batches.rem} rows of each epoch are skipped: fewer than the {dist.replicas} "
                         "replicas (pick a --batch-size that leaves a larger last batch)")
    else:
        fns = _make_functions(tf, model, loss_obj, train_metrics, val_metrics, optimizer, trainable,
                              data.x.shape[1:], data.y.shape[1:], x_dtype, y_dtype, jit, val is not None)

    # Checkpoint state: model, optimizer, RNG (seed generators), metric accumulators, run metadata.
    weight_ids = {id(w) for w in model.weights}
    rng_vars = [v for v in model.variables if id(v) not in weight_ids]
    metric_vars = [v for m in train_metrics for v in m.variables]
    best_vars = ([tf.Variable(w, trainable=False, name="best") for w in model.weights]
                 if opts.early_stopping is not None else [])
    meta_var = (distribute.host_string() if dist.workers > 1  # no string broadcasts between workers
                else tf.Variable("", dtype=tf.string, trainable=False))
    ckpt_items: dict[str, Any] = {"model": model, "optimizer": optimizer, "weights": list(model.weights),
                                  "rng": rng_vars, "metrics": metric_vars, "meta": meta_var}
    if best_vars:
        ckpt_items["best"] = best_vars
    ckpt = tf.train.Checkpoint(**ckpt_items)
    manager: Any = None

    def get_manager() -> Any:
        nonlocal manager
        if manager is None:
            # Every worker saves (saving may read replicated state collectively); only the chief's are kept.
            directory = ckpt_dir if dist.is_chief else Path(dist.scratch_dir(out_path))
            directory.mkdir(parents=True, exist_ok=True)
            manager = tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=max(1, opts.keep_checkpoints))
        return manager

    history: list[dict[str, Any]] = []
    es: dict[str, Any] = {"best": None, "best_epoch": None, "wait": 0}
    start_epoch, start_step = 0, 0
    partial = [0.0, 0.0]  # loss sum and samples of the running epoch
    if opts.resume and latest is not None:
        if meta.get("rows") != n or meta.get("batch_size") != batch:
            raise IncompatibleError(f"--resume: the checkpoint was made with {meta.get('rows')} rows and batch size "
                                    f"{meta.get('batch_size')}; this run has {n} rows and batch size {batch}",
                                    "resume with the data and --batch-size of the interrupted run")
        if bool(meta.get("early_stopping")) != bool(best_vars):
            raise UsageError("--resume: pass --early-stopping exactly when the interrupted run had it")
        try:
            ckpt.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise IncompatibleError(f"--resume: {latest} does not fit this model and options "
                                    f"({str(exc).splitlines()[0][:200]})",
                                    "resume with the model, --freeze and --metric options of the interrupted run") from None
        lr_var: Any = getattr(optimizer, "_learning_rate", None)
        if opts.lr is not None and hasattr(lr_var, "assign"):  # e.g. resuming a diverged run with a lower rate
            lr_var.assign(float(opts.lr))
        history = meta.get("history", [])
        es = meta.get("es", es)
        start_epoch, start_step = int(meta["epoch"]), int(meta["step"])
        partial = list(meta.get("partial", partial))
        notes.insert(0, f"resumed from {latest} (epoch {start_epoch + 1}, step {start_step})")

    monitor = opts.monitor or ("val_loss" if val is not None else "loss")
    if opts.early_stopping is not None and monitor.startswith("val_") and val is None:
        raise UsageError(f"--monitor {monitor} needs validation data", "pass --val-data or --val-split")
    logged = ["loss", *(m.name for m in train_metrics)]
    logged += [f"val_{name}" for name in logged] if val is not None else []
    if monitor not in logged:
        raise UsageError(f"--monitor {monitor} is not logged by this run", f"logged: {', '.join(logged)}")
    mode = _monitor_mode(monitor)
    snapshot = {path: np.array(w.numpy(), copy=True) for path, w in frozen}

    tb = None
    if opts.tensorboard and dist.is_chief:
        tb = keras.callbacks.TensorBoard(log_dir=opts.tensorboard, histogram_freq=1, write_graph=False)
        tb.set_model(model)
        tb.on_train_begin()

    plan = RunPlan(epochs=opts.epochs, start_epoch=start_epoch, steps_per_epoch=steps_per_epoch, samples=n,
                   val_samples=len(val) if val is not None else 0, batch_size=batch, steps_per_call=k,
                   trainable_weights=len(trainable), frozen_weights=len(frozen),
                   optimizer=describe_optimizer(optimizer), loss=loss_name,
                   metrics=[m.name for m in train_metrics], seed=seed, jit=jit, notes=notes)

    def save_checkpoint(epoch: int, step: int) -> str:
        meta_doc = {"seed": seed, "rows": n, "batch_size": batch, "epoch": epoch, "step": step, "partial": partial,
                    "history": history, "es": es, "early_stopping": opts.early_stopping is not None,
                    "model": str(opts.model), "epochs": opts.epochs}
        meta_var.assign(json.dumps(meta_doc))
        saved_to = str(get_manager().save())
        return saved_to if dist.is_chief else str(ckpt_dir / Path(saved_to).name)  # the chief's copy is kept

    def kept_checkpoint() -> str | None:
        if manager is not None and dist.is_chief:
            return str(manager.latest_checkpoint) if manager.latest_checkpoint else None
        return _latest_checkpoint(ckpt_dir)

    def stop_requested() -> bool:
        """A signal arrived (multi-worker: on any worker, so that all stop after the same step)."""
        return distribute.any_worker(dist, guard.signum is not None)

    def signal_name() -> str:
        return signal.Signals(guard.signum).name if guard.signum is not None else "a signal on another worker"

    lr_varies = callable(getattr(optimizer, "_learning_rate", None))  # a schedule; a plain rate is fixed
    lr_fixed = _current_lr(optimizer)
    steady_samples = 0
    steady_seconds = 0.0
    seen_shapes: set[tuple[int, ...]] = set()
    epochs_run = 0
    stopped_early = False
    reporter.begin(plan)
    with _SignalGuard() as guard:
        for epoch in range(start_epoch, opts.epochs):
            resumed_mid = epoch == start_epoch and start_step > 0
            if not resumed_mid:
                for m in train_metrics:
                    m.reset_state()
                partial = [0.0, 0.0]
            steps_done = start_step if resumed_mid else 0
            reporter.epoch_begin(epoch)
            if tb is not None:
                tb.on_epoch_begin(epoch)
            t_epoch = time.perf_counter()
            chunks = batches.chunks(epoch, steps_done)
            for _steps, xs, ys in (_prefetch(chunks) if batches.steps > batches.k else chunks):
                t_call = time.perf_counter()
                ok_f, done_f, loss_sum = fns.train(xs, ys).numpy()
                ok = bool(ok_f)
                done = int(done_f)
                elapsed = time.perf_counter() - t_call
                rows = int(xs.shape[0] * xs.shape[1])
                if xs.shape in seen_shapes:  # the first call of a shape traces (and compiles, with XLA)
                    steady_samples += rows
                    steady_seconds += elapsed
                seen_shapes.add(xs.shape)
                partial[0] += float(loss_sum)
                partial[1] += done * xs.shape[1]
                steps_done += done
                if not ok:
                    if dist.is_chief:
                        _write_history(opts.history, history)
                    last = kept_checkpoint()
                    lr_now = _current_lr(optimizer)
                    kept = (f"; the last good checkpoint is kept: {last}" if last else
                            "; no checkpoint was saved (pass --checkpoint-dir DIR to keep one every epoch)")
                    again = (f"; to go on from the checkpoint, add --checkpoint-dir {ckpt_dir} --resume with a lower "
                             "--lr" if last else "")
                    raise DivergedError(
                        f"training diverged at epoch {epoch + 1}, step {steps_done + 1}: the loss became NaN or Inf"
                        f"{kept}; {opts.out or opts.model} was not written",
                        f"lower the learning rate (--lr, now {lr_now:g}) or clip gradients (--clip-norm 1.0){again}")
                if partial[1]:
                    reporter.progress(epoch, steps_done, partial[0] / partial[1])
                if stop_requested():
                    path = save_checkpoint(epoch, steps_done)
                    raise Interrupted(
                        f"interrupted ({signal_name()}) at epoch {epoch + 1}, step {steps_done}; "
                        f"checkpoint saved to {path}; {opts.out or opts.model} was not written",
                        f"resume with: {_fmt_resume(opts, ckpt_dir)}")
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": partial[0] / max(1.0, partial[1])}
            for m in train_metrics:
                record[m.name] = float(m.result().numpy())
            epoch_seconds = time.perf_counter() - t_epoch
            if val_batches is not None:
                for m in val_metrics:
                    m.reset_state()
                vsum = 0.0
                for _steps, xs, ys in val_batches.chunks(0):
                    vsum += float(fns.eval(xs, ys))
                record["val_loss"] = vsum / len(val_batches.x)
                for m in val_metrics:
                    record[f"val_{m.name}"] = float(m.result().numpy())
            record["lr"] = _current_lr(optimizer) if lr_varies else lr_fixed
            record["seconds"] = round(epoch_seconds, 4)
            history.append(record)
            epochs_run += 1
            if tb is not None:
                tb.on_epoch_end(epoch, {k2: v for k2, v in record.items() if k2 not in ("epoch", "seconds", "lr")})
            # Early stopping (Keras EarlyStopping semantics, with state that survives a resume).
            current = record[monitor]
            better = es["best"] is None or (current < es["best"] - opts.min_delta if mode == "min"
                                            else current > es["best"] + opts.min_delta)
            if better:
                es["best"], es["best_epoch"], es["wait"] = current, epoch + 1, 0
                if best_vars:
                    for b, w in zip(best_vars, model.weights, strict=True):
                        b.assign(w)
            else:
                es["wait"] = int(es["wait"]) + 1
            reporter.epoch_end(record)
            start_step = 0
            partial = [0.0, 0.0]
            if opts.early_stopping is not None and not better and es["wait"] >= max(1, opts.early_stopping):
                stopped_early = True
            every = opts.checkpoint_every or (1 if opts.checkpoint_dir else None)
            if every and ((epoch + 1) % every == 0 or stopped_early or epoch + 1 == opts.epochs):
                save_checkpoint(epoch + 1, 0)
            if stop_requested() and epoch + 1 < opts.epochs and not stopped_early:
                path = save_checkpoint(epoch + 1, 0)
                raise Interrupted(
                    f"interrupted ({signal_name()}) after epoch {epoch + 1}; checkpoint saved "
                    f"to {path}; {opts.out or opts.model} was not written",
                    f"resume with: {_fmt_resume(opts, ckpt_dir)}")
            if stopped_early:
                break
    reporter.end()
    if tb is not None:
        tb.on_train_end()

    restored_best = False
    if best_vars and es["best_epoch"] is not None and history and es["best_epoch"] != history[-1]["epoch"]:
        for w, b in zip(model.weights, best_vars, strict=False):
            w.assign(b)
        restored_best = True

    changed = [path for path, w in frozen if np.asarray(w.numpy()).tobytes() != snapshot[path].tobytes()]
    if changed:
        raise InternalError(f"frozen weight {changed[0]} changed during training"
                            + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""),
                            "this is a bug in wtool: run with --debug and report it; OUT was not written")

    if dist.is_chief:  # OUT, the history and the checkpoint clean-up are the chief's alone
        save_model(model, out_path)
        _write_history(opts.history, history)
        if opts.resume and not opts.checkpoint_dir and ckpt_dir.is_dir():
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    else:  # saving may create replicated state (collectively): every worker saves, the others to scratch
        save_model(model, Path(dist.scratch_dir(out_path)) / out_path.name)

    wall = time.perf_counter() - t_start
    final = {k2: v for k2, v in (history[-1] if history else {}).items() if k2 not in ("epoch", "seconds")}
    best_epoch = es["best_epoch"]
    summary = {
        "model": str(opts.model),
        "output": str(out_path) if dist.is_chief else None,
        "epochs_run": epochs_run,
        "epochs": opts.epochs,
        "last_epoch": history[-1]["epoch"] if history else start_epoch,
        "best_epoch": best_epoch,
        "monitor": monitor,
        "best": es["best"],
        "stopped_early": stopped_early,
        "restored_best_weights": restored_best,
        "final": final,
        "wall_time_s": round(wall, 3),
        "samples_per_s": _steady_rate(history[len(history) - epochs_run:], n, steady_samples, steady_seconds),
        "samples": n,
        "batch_size": batch,
        "steps_per_call": k,
        "jit": jit,
        "optimizer": describe_optimizer(optimizer),
        "optimizer_steps": int(optimizer.iterations.numpy()),
        "restored_optimizer_steps": restored_steps,
        "loss": loss_name,
        "seed": seed,
        "trainable_weights": len(trainable),
        "frozen": {"weights": len(frozen), "unchanged": True},
        "notes": notes,
        "history_file": opts.history,
        "checkpoint": kept_checkpoint() if manager is not None else None,
        "strategy": dist.summary(),
    }
    return TrainResult(summary, history)


def _steady_rate(records: list[dict[str, Any]], n: int, chunk_samples: int, chunk_seconds: float) -> float | None:
    """Samples/s after warm-up: epochs after this run's first, else calls after the first (tracing) one."""
    later = records[1:]
    seconds = sum(r["seconds"] for r in later)
    if later and seconds > 0:
        return round(n * len(later) / seconds, 1)
    return round(chunk_samples / chunk_seconds, 1) if chunk_seconds > 0 else None


def _current_lr(optimizer: Any) -> float:
    try:
        lr = optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)
    except (TypeError, ValueError):
        return float("nan")


def _write_history(target: str | None, history: list[dict[str, Any]]) -> None:
    if not target:
        return
    with atomic_output(target) as tmp:
        if target.lower().endswith(".json"):
            from wtool.text import jsonable

            tmp.write_text(json.dumps(jsonable(history), indent=1) + "\n")
        else:
            keys: list[str] = []
            for rec in history:
                keys += [k for k in rec if k not in keys]
            lines = [",".join(keys)]
            for rec in history:
                lines.append(",".join("" if rec.get(k) is None else repr(rec[k]) if isinstance(rec[k], float)
                                      else str(rec[k]) for k in keys))
            tmp.write_text("\n".join(lines) + "\n")


@dataclass
class _Functions:
    train: Any
    eval: Any


def _make_functions(tf: Any, model: Any, loss_obj: Any, train_metrics: list[Any], val_metrics: list[Any],
                    optimizer: Any, trainable: list[Any], x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                    x_dtype: str, y_dtype: str, jit: bool, with_eval: bool) -> _Functions:
    """Two tf.functions over chunks shaped (steps, batch, ...): train (stops at a non-finite loss) and eval.

    No tf.cond around the update: it costs 10-25% of a step (more with XLA); see the comment below."""
    x_spec = tf.TensorSpec([None, None, *x_shape], x_dtype)
    y_spec = tf.TensorSpec([None, None, *y_shape], y_dtype)

    def step_loss(x: Any, y: Any, training: bool) -> tuple[Any, Any]:
        pred = model(x, training=training)
        loss = loss_obj(y, pred)
        extra = model.losses
        if extra:
            loss = loss + tf.add_n([tf.cast(e, loss.dtype) for e in extra])
        return loss, pred

    def train_chunk(xs: Any, ys: Any) -> Any:
        k = tf.shape(xs)[0]
        ok = tf.constant(True)
        done = tf.constant(0)
        loss_sum = tf.constant(0.0)
        for i in tf.range(k):
            x = xs[i]
            y = ys[i]
            with tf.GradientTape() as tape:
                loss, pred = step_loss(x, y, True)
            if trainable:
                optimizer.apply(tape.gradient(loss, trainable), trainable)
            for m in train_metrics:
                m.update_state(y, pred)
            # A non-finite loss ends the call at once. Its update was applied, but a diverged model is
            # never written or checkpointed, so the last good checkpoint stays the last good state.
            if not tf.math.is_finite(loss):
                ok = tf.constant(False)
                break
            done += 1
            loss_sum += tf.cast(loss, tf.float32) * tf.cast(tf.shape(x)[0], tf.float32)
        # One small tensor back, so the host pays for one transfer per call: [ok, steps done, loss sum].
        return tf.stack([tf.cast(ok, tf.float64), tf.cast(done, tf.float64), tf.cast(loss_sum, tf.float64)])

    def eval_chunk(xs: Any, ys: Any) -> Any:
        k = tf.shape(xs)[0]
        loss_sum = tf.constant(0.0)
        for i in tf.range(k):
            x = xs[i]
            y = ys[i]
            loss, pred = step_loss(x, y, False)
            for m in val_metrics:
                m.update_state(y, pred)
            loss_sum += tf.cast(loss, tf.float32) * tf.cast(tf.shape(x)[0], tf.float32)
        return loss_sum

    # Concrete functions: one trace for every chunk shape, and calls skip tf.function's argument matching
    # (a third of the per-epoch overhead on tiny data sets).
    train_fn = tf.function(train_chunk, input_signature=[x_spec, y_spec], jit_compile=jit or None)
    eval_fn = tf.function(eval_chunk, input_signature=[x_spec, y_spec], jit_compile=jit or None)
    return _Functions(train_fn.get_concrete_function(), eval_fn.get_concrete_function() if with_eval else None)

