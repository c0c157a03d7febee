"""`wtool quantize`: Keras's own `model.quantize`, with a per-layer account of what changed.

Keras quietly skips a layer it cannot quantize (a warning, at best); the report names every
layer that holds weights, what happened to it and why, and the file size before and after.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wtool.errors import IncompatibleError, UsageError
from wtool.store.select import matches

MODES = ("int8", "int4", "float8")


@dataclass
class LayerOutcome:
    path: str
    class_name: str
    quantized: bool
    detail: str  # the new dtype policy, or why the layer was left as it was


@dataclass
class QuantizeReport:
    model: str
    output: str
    mode: str
    layers: list[LayerOutcome] = field(default_factory=list)
    size_before: int = 0
    size_after: int = 0

    @property
    def quantized_count(self) -> int:
        return sum(layer.quantized for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "output": self.output, "mode": self.mode,
                "layers": [asdict(layer) for layer in self.layers], "quantized": self.quantized_count,
                "size_before": self.size_before, "size_after": self.size_after}


def _leaf_layers(model: Any) -> list[tuple[str, Any]]:
    """Layers that own weights, by wtool path (`features/d1`), as `model.quantize` visits them."""
    found: list[tuple[str, Any]] = []

    def walk(layer: Any, prefix: str) -> None:
        for sub in getattr(layer, "layers", None) or []:
            path = prefix + sub.name
            if getattr(sub, "layers", None):
                walk(sub, path + "/")
            elif sub.weights:
                found.append((path, sub))

    walk(model, "")
    return found


def _why_skipped(layer: Any, mode: str, before: str | None, selected: bool, messages: list[str]) -> str:
    if not selected:
        return "not selected by --layers"
    if before is not None:
        return f"already quantized ({before})"
    cls = layer.__class__.__name__
    said = next((m for m in messages if cls in m or layer.name in m), None)
    if said is None or "does not have a `quantize` method" in said:
        return f"Keras has no {mode} form of {cls}"
    return f"Keras: {said.splitlines()[0].rstrip('.')}"


def quantize_model(model_path: str, output: str, mode: str, layer_globs: list[str] | None = None, *,
                   unsafe: bool = False) -> QuantizeReport:
    """Load MODEL, quantize the selected layers with Keras, write OUT atomically (.keras only)."""
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if not output.endswith(".keras"):
        raise UsageError(f"{output}: a quantized model is written as a .keras file",
                         "only .keras keeps the quantized dtype policy that Keras needs to load the layers")
    from wtool.graph.model import load_model, save_model

    model = load_model(model_path, unsafe=unsafe)
    leaves = _leaf_layers(model)
    if layer_globs:
        for glob in layer_globs:
            if not any(matches(path, glob) for path, _ in leaves):
                raise UsageError(f"--layers {glob!r} matches no layer with weights",
                                 "layers are named like: " + ", ".join(p for p, _ in leaves[:4]))
    chosen = {id(layer) for path, layer in leaves if not layer_globs or any(matches(path, g) for g in layer_globs)}
    before = {id(layer): getattr(layer, "quantization_mode", None) for _, layer in leaves}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.quantize(mode, filters=lambda layer: id(layer) in chosen and before.get(id(layer)) is None)
        except (ValueError, NotImplementedError, TypeError) as exc:
            raise IncompatibleError(f"{model_path}: Keras cannot quantize this model to {mode}: "
                                    f"{str(exc).splitlines()[0]}") from None
    messages = [str(w.message) for w in caught]
    report = QuantizeReport(model=model_path, output=output, mode=mode, size_before=os.path.getsize(model_path))
    for path, layer in leaves:
        now = getattr(layer, "quantization_mode", None)
        done = now is not None and before[id(layer)] is None
        detail = layer.dtype_policy.name if done else _why_skipped(
            layer, mode, before[id(layer)], id(layer) in chosen, messages)
        report.layers.append(LayerOutcome(path, layer.__class__.__name__, done, detail))
    if report.quantized_count == 0:
        raise IncompatibleError(f"{model_path}: no layer was quantized to {mode}; nothing written",
                                "; ".join(f"{o.path}: {o.detail}" for o in report.layers[:4]) or None)
    save_model(model, output)
    report.size_after = Path(output).stat().st_size
    return report
