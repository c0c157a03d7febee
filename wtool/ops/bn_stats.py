"""Re-estimating BatchNormalization moving statistics on data (`wtool merge --recompute-bn`).

An average of several models' moving means and variances is not the statistics of the
averaged model's activations (the averaged weights change what each BatchNormalization
layer sees), so model soups re-estimate them on a sample of training data, as
`torch.optim.swa_utils.update_bn` does: one pass in training mode with every
BatchNormalization layer's momentum set so that its moving statistics become the plain
average of the batch statistics, weighted by batch size. Frozen (trainable=False)
layers are made trainable for the pass, since Keras runs those in inference mode.
Nothing else of the model changes; only the moving statistics are returned.

Needs TensorFlow (imported through `wtool.graph`, lazily).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError


@dataclass
class BnEstimate:
    """New moving statistics by weight path, and what produced them."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    rows: int = 0
    batches: int = 0


def _batch_norm_layers(model: Any) -> list[Any]:
    import keras

    found: list[Any] = []
    seen: set[int] = set()

    def walk(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for sub in getattr(layer, "_layers", None) or getattr(layer, "layers", None) or []:
            walk(sub)
        for attr in ("layer", "forward_layer", "backward_layer"):  # wrappers
            inner = getattr(layer, attr, None)
            if inner is not None and hasattr(inner, "weights"):
                walk(inner)

    for layer in model.layers:
        walk(layer)
    return found


def _input_spec(model: Any, data: str) -> tuple[tuple[int, ...], str]:
    if len(model.inputs) != 1:
        raise IncompatibleError(f"--recompute-bn reads one input array from {data}, and the model has "
                                f"{len(model.inputs)} inputs")
    inp = model.inputs[0]
    shape = tuple(inp.shape[1:])
    return shape, str(inp.dtype)


def _fit_rows(batch: np.ndarray, shape: tuple[Any, ...], data: str) -> np.ndarray:
    """Flat rows (CSV) reshaped to the model's input shape, as `infer` does."""
    if len(shape) == batch.ndim - 1 and all(s is None or s == b for s, b in zip(shape, batch.shape[1:], strict=True)):
        return batch
    if all(s is not None for s in shape) and math.prod(batch.shape[1:]) == math.prod(shape):  # type: ignore[arg-type]
        return batch.reshape((len(batch), *shape))
    got = "(" + ", ".join(str(s) for s in batch.shape[1:]) + ")"
    want = "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"
    raise IncompatibleError(f"{data}: rows of shape {got} do not fit the model input {want}")


def estimate(model_path: str | os.PathLike[str], data: str, *, x_key: str | None = None,
             batch_size: int = 128, unsafe: bool = False) -> BnEstimate:
    """Moving mean and variance of every BatchNormalization layer of the model at `model_path`."""
    if batch_size < 2:
        raise UsageError(f"--batch-size must be at least 2 for batch statistics (not {batch_size})")
    from wtool.data.rows import open_rows
    from wtool.graph.model import load_model
    from wtool.store.model_paths import weight_paths

    model = load_model(model_path, unsafe=unsafe)
    layers = _batch_norm_layers(model)
    if not layers:
        raise IncompatibleError(f"{model_path}: --recompute-bn: the model has no BatchNormalization layer")
    shape, dtype = _input_spec(model, data)
    names = {id(v): p for p, v in weight_paths(model)}
    saved = [(layer, layer.momentum, layer.trainable) for layer in layers]
    for layer in layers:
        layer.trainable = True
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, layer.moving_variance.dtype))
    result = BnEstimate()
    try:
        with open_rows(data, key=x_key) as rows:
            for batch in rows.batches(batch_size, dtype=dtype):
                n = len(batch)
                keep = result.rows / (result.rows + n)  # running mean: old * seen/(seen+n) + new * n/(seen+n)
                for layer in layers:
                    layer.momentum = keep
                model(_fit_rows(batch, shape, data), training=True)
                result.rows += n
                result.batches += 1
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum, layer.trainable = momentum, trainable
    for layer in layers:
        for var in (layer.moving_mean, layer.moving_variance):
            result.values[names.get(id(var), var.path)] = np.asarray(var.numpy())
        path = names.get(id(layer.moving_mean), layer.name)
        result.layers.append(path.rsplit("/", 1)[0])
    return result
