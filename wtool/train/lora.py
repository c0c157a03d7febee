"""`wtool train --lora RANK`: low-rank adapters through Keras's own `layer.enable_lora`, and models saved
with `lora_rank` in their config (Keras writes the merged kernel and no adapters).

With --lora only the adapters train: every other variable (biases, other layers, BatchNormalization
statistics) is frozen for the run and checked unchanged afterwards like --freeze's; Keras's saving
writes `kernel + (alpha / rank) * A @ B`. The adapters start as `enable_lora` makes them (A he_uniform,
B zeros) right after `keras.utils.set_random_seed(SEED)`, so a Keras script with the same seed makes the
same ones. Without --lora, a layer saved with `lora_rank` trains its (merged) kernel as a plain layer
would: Keras's own loaded state (kernel frozen, A = B = 0) would never move the kernel.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.graph.model import import_keras

ADAPTERS = ("lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b")  # Embedding's are _embeddings_


def _adapters(layer: Any) -> list[Any]:
    return [getattr(layer, name) for name in ADAPTERS if getattr(layer, name, None) is not None]


def _base_kernel(layer: Any) -> Any:
    """The variable enable_lora freezes: Dense/EinsumDense/conv `_kernel`, Embedding `_embeddings`."""
    kernel = getattr(layer, "_kernel", None)
    return kernel if kernel is not None else getattr(layer, "_embeddings", None)


@dataclass
class LoraOptions:
    """--lora RANK, --lora-layers GLOB (repeatable), --lora-alpha A (default: RANK, as Keras)."""

    rank: int
    layers: tuple[str, ...] = ()
    alpha: float | None = None


def make_options(rank: int | None, layers: tuple[str, ...], alpha: float | None, freeze: tuple[str, ...],
                 unfreeze: tuple[str, ...]) -> LoraOptions | None:
    """--lora, --lora-layers and --lora-alpha checked without a model (exit 2 before TensorFlow starts)."""
    if rank is None:
        if layers or alpha is not None:
            raise UsageError("--lora-layers and --lora-alpha need --lora RANK")
        return None
    if rank <= 0:
        raise UsageError(f"--lora RANK must be at least 1 (not {rank})")
    if alpha is not None and not (alpha > 0 and np.isfinite(alpha)):
        raise UsageError(f"--lora-alpha must be a positive number (not {alpha})")
    if freeze or unfreeze:
        raise UsageError("--lora trains only the adapters and freezes everything else: --freeze/--unfreeze do not "
                         "apply", "choose the adapted layers with --lora-layers GLOB")
    return LoraOptions(rank, layers, alpha)


@dataclass
class LoraRun:
    """The adapted layers of one run and what to put back before OUT is written."""

    options: LoraOptions
    layers: list[str]
    adapters: list[Any]
    params_before: int
    params_after: int
    frozen: list[tuple[str, Any]] = field(default_factory=list)
    flags: list[tuple[Any, bool]] = field(default_factory=list)  # (layer or variable, trainable as loaded)

    def summary(self) -> dict[str, Any]:
        alpha = self.options.alpha if self.options.alpha is not None else self.options.rank
        return {"rank": self.options.rank, "alpha": alpha, "layers": self.layers,
                "trainable_params_before": self.params_before, "trainable_params": self.params_after,
                "merged": True}

    def note(self) -> str:
        s = self.summary()
        shown = ", ".join(self.layers[:8]) + (f", ... ({len(self.layers)} in all)" if len(self.layers) > 8 else "")
        return (f"LoRA rank {s['rank']} (alpha {s['alpha']:g}) on {shown}: trainable parameters "
                f"{self.params_before:,} -> {self.params_after:,} (adapters only; merged into the kernels when saved)")


def _count(variables: list[Any]) -> int:
    return int(sum(int(np.prod(v.shape, dtype=np.int64)) for v in variables))


def _saved_lora_layers(model: Any) -> list[Any]:
    return [layer for layer in model._flatten_layers(include_self=False) if getattr(layer, "lora_enabled", False)]


def train_saved_lora_as_plain(model: Any) -> list[str]:
    """Without --lora: a layer loaded with `lora_rank` trains its kernel (its zero adapters stay out)."""
    notes = []
    for layer in _saved_lora_layers(model):
        if not layer.trainable:  # frozen (by its file or --freeze): its variables stay frozen
            continue
        kernel = _base_kernel(layer)
        if kernel is not None:
            kernel.trainable = True
        for var in _adapters(layer):
            var.trainable = False
        notes.append(layer.name)
    if not notes:
        return []
    return [(f"{', '.join(notes)}: saved with lora_rank (merged kernels): trained as plain layers "
            "(pass --lora RANK to train adapters instead)")]


def rebuild_without_lora(model: Any, unsafe: bool) -> Any:
    """The same model with `lora_rank`/`lora_alpha` left out of every layer config and the same (merged)
    weights: Keras enables LoRA only once per layer, so new adapters need a plain layer."""
    if not _saved_lora_layers(model):
        return model
    keras = import_keras()
    config = _strip(keras.saving.serialize_keras_object(model))
    plain = keras.saving.deserialize_keras_object(config, safe_mode=not unsafe)
    old = {v.path: v for v in model.weights if v.name not in ADAPTERS}
    new = list(plain.weights)
    if sorted(old) != sorted(v.path for v in new):
        raise IncompatibleError("the model saved with lora_rank cannot be rebuilt without it "
                                "(its weights do not match); train it without --lora")
    for var in new:
        var.assign(old[var.path])
    return plain


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in ("lora_rank", "lora_alpha")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def enable(model: Any, nodes: dict[str, Any], options: LoraOptions, seed: int,
           names: dict[int, str]) -> LoraRun:
    """Adapters on the chosen layers (Keras's enable_lora), everything else frozen for the run."""
    keras = import_keras()
    chosen = _choose(nodes, options.layers)
    before = _count(list(model.trainable_variables))
    flags: list[tuple[Any, bool]] = [(node.layer, node.layer.trainable) for node in nodes.values()]
    flags += [(v, v.trainable) for v in model.weights]
    keras.utils.set_random_seed(seed)  # A is drawn here, in layer order, as a script seeded alike draws it
    adapters: list[Any] = []
    for path in chosen:
        layer = nodes[path].layer
        try:
            layer.enable_lora(options.rank, lora_alpha=options.alpha)
        except (ValueError, NotImplementedError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IncompatibleError(f"--lora: Keras cannot enable LoRA on {path} ({type(layer).__name__}): "
                                    f"{text[:200]}", "leave it out with --lora-layers") from None
        adapters += _adapters(layer)
    ids = {id(v) for v in adapters}
    for node in nodes.values():
        node.layer.trainable = node.path in chosen or any(p in chosen for p in _below(nodes, node.path))
    for var in model.weights:
        var.trainable = id(var) in ids
    frozen = [(names.get(id(v), v.path), v) for v in model.weights if id(v) not in ids]
    return LoraRun(options, chosen, adapters, before, _count(adapters), frozen, flags)


def _below(nodes: dict[str, Any], path: str) -> list[str]:
    out: list[str] = []
    for child in nodes[path].children:
        out += [child, *_below(nodes, child)]
    return out


def _choose(nodes: dict[str, Any], patterns: tuple[str, ...]) -> list[str]:
    """Layer paths to adapt: every layer Keras can adapt, or those matching --lora-layers."""
    eligible = [p for p, node in nodes.items() if callable(getattr(node.layer, "enable_lora", None))]
    if not patterns:
        if not eligible:
            raise IncompatibleError("--lora: no layer of this model can take LoRA adapters",
                                    "Keras adapts Dense, EinsumDense, Embedding and convolution layers")
        return eligible
    chosen: list[str] = []
    for pattern in patterns:
        hits = [p for p in nodes if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            shown = ", ".join(list(nodes)[:20]) + (f", ... ({len(nodes)} in all)" if len(nodes) > 20 else "")
            raise UsageError(f"--lora-layers '{pattern}' matches no layer", f"layer paths: {shown}")
        usable = [p for p in hits if p in eligible]
        if not usable:
            kinds = ", ".join(sorted({type(nodes[p].layer).__name__ for p in hits}))
            raise IncompatibleError(f"--lora-layers '{pattern}' matches only layers that cannot take LoRA "
                                    f"adapters ({kinds})",
                                    "Keras adapts Dense, EinsumDense, Embedding and convolution layers")
        chosen += [p for p in usable if p not in chosen]
    return [p for p in nodes if p in chosen]


def before_save(model: Any, run: LoraRun) -> None:
    """Trainable flags back as loaded, and a fresh optimizer: the adapters' moments have no weight to belong
    to once merged, so OUT carries no optimizer state (its next run starts fresh)."""
    for obj, trainable in run.flags:  # layers (parents first), then variables: a layer's flag sets its variables'
        obj.trainable = trainable
    for var in run.adapters:
        var.trainable = True
    optimizer = model.optimizer
    model.optimizer = type(optimizer).from_config(optimizer.get_config())
