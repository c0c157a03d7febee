"""What the run minimises and reports: the loss and metrics from --loss/--metric or the saved compile
config (as Keras's compile would resolve them), the label dtype the loss wants, and the direction of a
monitored value."""

from __future__ import annotations

from typing import Any

import numpy as np

from wtool.errors import UsageError
from wtool.graph.model import import_keras
from wtool.train.options import TrainOptions


def resolve_loss(opts: TrainOptions, compile_config: dict[str, Any] | None, y_sample: np.ndarray,
                 pred_sample: np.ndarray) -> tuple[Any, Any, str]:
    """(identifier for compile, loss object, display name) from --loss or the saved compile config."""
    from keras.src.trainers import compile_utils

    keras = import_keras()
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

    keras = import_keras()
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


def y_dtype(y: np.ndarray, loss_name: str) -> str:
    if y.dtype.kind in "iu" and "sparse" in loss_name.lower().replace("_", ""):
        return "int64" if y.dtype.itemsize > 4 else "int32"
    return "float32"


def monitor_mode(name: str) -> str:
    low = name.lower()
    return "max" if any(k in low for k in ("acc", "auc", "precision", "recall", "f1", "iou")) else "min"
