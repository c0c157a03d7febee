"""The model config (config.json / model_config attribute) as a small tree of layers.

Handles the Keras 3 layout, tf.keras / Keras 2 (`Model`, `Functional`, `Sequential`
with a dict or a bare list of layers) and Keras 1 (`Sequential` whose config is a list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_CLASSES = {"Model", "Functional", "Sequential"}


@dataclass
class LayerNode:
    name: str
    class_name: str
    config: dict[str, Any]
    trainable: bool = True
    children: list[LayerNode] = field(default_factory=list)
    is_model: bool = False


def _layer_list(config: Any) -> list[Any] | None:
    if isinstance(config, list):
        return config
    if isinstance(config, dict) and isinstance(config.get("layers"), list):
        return config["layers"]
    return None


def parse_node(entry: Any, fallback_name: str = "model") -> LayerNode | None:
    """Turn one serialized layer (or model) into a LayerNode; None when it is not a dict."""
    if not isinstance(entry, dict):
        return None
    class_name = entry.get("class_name")
    config = entry.get("config")
    if not isinstance(class_name, str):
        class_name = "?"
    inner = config if isinstance(config, dict) else {}
    name = entry.get("name") or inner.get("name") or fallback_name
    if not isinstance(name, str):
        name = str(name)
    trainable = inner.get("trainable", True) is not False
    layers = _layer_list(config)
    node = LayerNode(name=name, class_name=class_name, config=inner, trainable=trainable)
    if layers is not None and (class_name in MODEL_CLASSES or "layers" in inner or isinstance(config, list)):
        node.is_model = True
        for i, sub in enumerate(layers):
            child = parse_node(sub, fallback_name=f"layer_{i}")
            if child is not None:
                if class_name == "Sequential" and child.class_name == "InputLayer":
                    continue  # Sequential.layers leaves its input out, in every format
                if not trainable:
                    _freeze(child)
                node.children.append(child)
    return node


def _freeze(node: LayerNode) -> None:
    node.trainable = False
    for child in node.children:
        _freeze(child)


def parse_model_config(config: Any) -> LayerNode | None:
    """The root node of a model config, or None when the config is missing or not a model."""
    node = parse_node(config)
    if node is None:
        return None
    return node


def wrapped_layer(node: LayerNode, key: str = "layer") -> LayerNode | None:
    """The inner layer of a wrapper (Bidirectional, TimeDistributed): config['layer']."""
    return parse_node(node.config.get(key), fallback_name=node.name)


def wrapped_trainable(node: LayerNode, rel: str) -> bool:
    """Whether a weight `rel` below a wrapper (TimeDistributed, Bidirectional) is trainable as saved:
    the wrapped layer, and the nested layers on the way down, may each be frozen."""
    inner = wrapped_layer(node)
    if inner is None:
        return node.trainable
    if not inner.trainable:
        return False
    current = inner
    for part in rel.split("/")[:-1]:
        child = next((c for c in current.children if c.name == part), None)
        if child is None:
            break
        if not child.trainable:
            return False
        current = child
    return True
