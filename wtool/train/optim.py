"""The run's optimizer: Keras's own optimizers and learning-rate schedules by name, the saved one rebuilt
from a compile config (Keras 3 or tf.keras 2), and a one-line description for the run header."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from wtool.errors import UsageError
from wtool.graph.model import import_keras
from wtool.train.options import ScheduleOptions, TrainOptions

SCHEDULES = ("constant", "cosine", "cosine-restarts", "exponential", "step", "inverse-time", "polynomial",
             "piecewise")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl", "lion",
                   "lamb", "adafactor")


def _clean_optimizer_config(cls: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Drop tf.keras 2 arguments Keras 3 refuses (`decay`, `lr`...)."""
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
    keras = import_keras()
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
    keras = import_keras()
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
    keras = import_keras()
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
        lr_text = _describe_schedule(lr)
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


def _describe_schedule(schedule: Any) -> str:
    """`CosineDecay(0.01) over 90 steps, warm-up 10`: the rate it starts from (after a warm-up), its period."""
    cfg = schedule.get_config()
    start = cfg.get("warmup_target") or cfg.get("initial_learning_rate")
    if start is None and cfg.get("values"):
        start = cfg["values"][0]
    text = f"{type(schedule).__name__}({_num(start) if start is not None else '?'})"
    steps = cfg.get("decay_steps") or cfg.get("first_decay_steps")
    if steps:
        text += f" over {_num(steps)} steps"
    if cfg.get("warmup_steps"):
        text += f", warm-up {_num(cfg['warmup_steps'])}"
    return text


def check_learning_rate(optimizer: Any, planned_steps: int, done_steps: int) -> None:
    """Refuse a run whose learning rate is 0 throughout (a finished schedule continued): it would change nothing."""
    rate = optimizer._learning_rate
    points = [done_steps + planned_steps * i // 4 for i in range(5)]
    values = [float(np.asarray(rate(step))) for step in points] if callable(rate) else [float(np.asarray(rate))]
    if any(v > 0 for v in values):
        return
    where = (f"its {type(rate).__name__} schedule has ended (the saved optimizer is at step {done_steps})"
             if callable(rate) and done_steps else "it is 0")
    raise UsageError(f"the learning rate is 0 for the whole run: {where}; training would leave the weights unchanged",
                     "pass --lr RATE for a new constant rate, or --reset-optimizer --lr-schedule cosine --lr RATE "
                     "to start a new schedule")


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def current_lr(optimizer: Any) -> float:
    try:
        lr = optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)
    except (TypeError, ValueError):
        return float("nan")
