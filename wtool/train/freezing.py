"""--freeze / --unfreeze: the model's layers as a tree of paths, trainable flags set by glob, and the
weights that must not move (checked after the run)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wtool.errors import UsageError
from wtool.graph.model import import_keras


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

    keras = import_keras()
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


def effective(nodes: dict[str, LayerNode], path: str) -> bool:
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
    desired = {p: effective(nodes, p) for p in nodes}

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
        if effective(nodes, path):
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


weight_names = _weight_names  # for wtool.train.lora: the same canonical paths the frozen check names
