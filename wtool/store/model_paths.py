"""Canonical weight paths for a live keras.Model: the same paths the weight store gives its file.

`weight_paths(model)` walks the model the way Keras saves it: nested models by layer
name (`features/d1/kernel`), RNN cells and TimeDistributed's inner layer without a
level of their own (`lstm/kernel`), other sub-layers by name (`bidir/forward_lstm/kernel`,
`mha/query/kernel`). Train (freezing by glob), surgery and graph loading map store
paths to variables with it. Keras is never imported here: the model brings its classes.
"""

from __future__ import annotations

from typing import Any

from wtool.store.naming import stable_var_name

_RNN_WRAPPERS = ("RNN",)


def _is_model(layer: Any) -> bool:
    return any(cls.__name__ in ("Functional", "Sequential", "Model") for cls in type(layer).__mro__) \
        and hasattr(layer, "layers")


def _own_variables(layer: Any) -> list[Any]:
    trainable = list(getattr(layer, "_trainable_variables", []) or [])
    non_trainable = list(getattr(layer, "_non_trainable_variables", []) or [])
    return trainable + non_trainable


def _sublayers(layer: Any) -> list[Any]:
    return list(getattr(layer, "_layers", []) or [])


def _transparent(layer: Any, sub: Any) -> bool:
    """RNN cells and TimeDistributed's wrapped layer add no level to the path."""
    if getattr(layer, "cell", None) is sub and any(c.__name__ in _RNN_WRAPPERS for c in type(layer).__mro__):
        return True
    return type(layer).__name__ == "TimeDistributed" and getattr(layer, "layer", None) is sub


def weight_paths(model: Any) -> list[tuple[str, Any]]:
    """[(canonical path, keras.Variable)] for every weight Keras would save, in model order."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, path: str) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if _is_model(layer):
            for var in _own_variables(layer):
                out.append((f"{path or layer.name}/{var.name}", var))
            for sub in layer.layers:
                walk(sub, f"{path}/{sub.name}" if path else sub.name)
            return
        collect(layer, path, "")

    def collect(layer: Any, path: str, rel: str) -> None:
        for var in _own_variables(layer):
            out.append((f"{path}/{rel}{stable_var_name(var.name, type(layer).__name__)}", var))
        for sub in _sublayers(layer):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            collect(sub, path, rel if _transparent(layer, sub) else f"{rel}{sub.name}/")

    walk(model, "")
    return out


def variables_by_path(model: Any) -> dict[str, Any]:
    return dict(weight_paths(model))
