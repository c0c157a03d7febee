"""Reader for the Keras 3 weights layout (`layers/<group>/vars/<i>`), also tf.keras 2.13-2.15 zips.

Groups are named after layer classes (`dense_1`), not layers: the layer names come
from the `name` attribute Keras writes on each `vars` group, else from the model
config (matching Keras's own class-name de-duplication in config order), else
from the group name. Variable names come from the layer class (naming.VAR_RULES).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from wtool.safety import guards as safety
from wtool.store.collector import Collector
from wtool.store.config import LayerNode, parse_node, wrapped_layer
from wtool.store.naming import (
    MHA_SUBLAYERS,
    NON_TRAINABLE,
    QUANTIZED_CLASSES,
    RNN_CELLS,
    class_from_group,
    guess_kernel_bias,
    keras3_var_names,
    quantization_mode,
    quantized_trainable,
    to_snake_case,
)
from wtool.store.quantized import check_shapes
from wtool.store.types import LayerInfo

CONTAINERS = ("layers", "_layer_checkpoint_dependencies")
ROOT_SKIP = {"optimizer", "vars", "compile_metrics", "metrics", "loss", "compiled_loss", "compiled_metrics",
             "_compile_metrics", "_compile_loss", "_loss_tracker", "loss_tracker", "seed_generator"}


def natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class VNode:
    """A group of the weights file, with tf.keras's backslash-joined names split into levels."""

    key: str
    group: Any = None
    children: dict[str, VNode] = field(default_factory=dict)

    @property
    def vars_group(self) -> Any:
        child = self.children.get("vars")
        return child.group if child is not None else None

    @property
    def saved_name(self) -> str | None:
        g = self.vars_group
        if g is None or "name" not in g.attrs:
            return None
        value = g.attrs["name"]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    @property
    def container(self) -> VNode | None:
        for name in CONTAINERS:
            if name in self.children:
                return self.children[name]
        return None


def build_tree(h5: Any, where: str) -> VNode:
    import h5py

    root = VNode("", h5)

    def fill(node: VNode, group: Any, depth: int) -> None:
        for key in group.keys():
            if depth == 0 and key == "optimizer":
                continue
            safety.check_h5_link(group, key, where)
            obj = group[key]
            if not isinstance(obj, h5py.Group):
                continue
            parts = key.split("\\")
            target = node
            for part in parts[:-1]:
                target = target.children.setdefault(part, VNode(part))
            leaf = target.children.setdefault(parts[-1], VNode(parts[-1]))
            leaf.group = obj
            if parts[-1] != "vars":
                fill(leaf, obj, depth + 1)

    fill(root, h5, 0)
    return root


class Keras3Reader(Collector):
    def __init__(self, h5: Any, root: LayerNode | None, where: str) -> None:
        super().__init__(h5, where)
        self.root = root

    def read(self) -> None:
        tree = build_tree(self.h5, self.where)
        model_name = (self.root.name if self.root else None) or tree.saved_name or "model"
        self._walk_model(tree, self.root, "", 0, True, is_root=True)
        if tree.vars_group is not None and len(tree.vars_group):
            self._add_layer(model_name, model_name, self.root.class_name if self.root else None, 0, True)
            self._collect(tree, None, None, model_name, "", True)

    # -- models and layers ------------------------------------------------------------------

    def _walk_model(self, vnode: VNode, node: LayerNode | None, prefix: str, depth: int, trainable: bool,
                    is_root: bool = False) -> None:
        container = vnode.container
        if container is not None:
            for child, child_node in self._match(container, node):
                if child is None and child_node is not None:
                    self._add_layer(prefix + child_node.name, child_node.name, child_node.class_name, depth,
                                    trainable and child_node.trainable)
                    continue
                assert child is not None
                self._walk_layer(child, child_node, prefix, depth, trainable)
        for key in sorted(vnode.children, key=natural_key):
            if key in CONTAINERS or key == "vars" or (is_root and (key in ROOT_SKIP or key.endswith("_tracker"))):
                continue
            self._walk_layer(vnode.children[key], None, prefix, depth, trainable)

    def _match(self, container: VNode, node: LayerNode | None) -> list[tuple[VNode | None, LayerNode | None]]:
        """Pair the container's groups with the config's layers, in config order."""
        keys = sorted(container.children, key=lambda k: (_address(container.children[k]), natural_key(k)))
        pairs: list[tuple[VNode | None, LayerNode | None]] = []
        used: set[str] = set()
        if node is not None and node.children:
            by_saved_name = {container.children[k].saved_name: k for k in keys if container.children[k].saved_name}
            counters: dict[str, int] = {}
            for child in node.children:
                if node.class_name == "Sequential" and child.class_name == "InputLayer":
                    continue
                base = to_snake_case(child.class_name)
                count = counters.get(base, -1) + 1
                counters[base] = count
                guess = base if count == 0 else f"{base}_{count}"
                key = by_saved_name.get(child.name)
                if key is None and not by_saved_name and guess in container.children:
                    key = guess
                if key is not None and key not in used:
                    used.add(key)
                    pairs.append((container.children[key], child))
                else:
                    pairs.append((None, child))
        for key in keys:
            if key not in used:
                pairs.append((container.children[key], None))
        return pairs

    def _walk_layer(self, vnode: VNode, node: LayerNode | None, prefix: str, depth: int,
                    parent_trainable: bool) -> None:
        name = node.name if node is not None else (vnode.saved_name or vnode.key)
        class_name = node.class_name if node is not None else class_from_group(vnode.key)
        path = prefix + name
        trainable = parent_trainable and (node.trainable if node is not None else True)
        self._add_layer(path, name, class_name, depth, trainable)
        self.layers[-1].group = getattr(vnode.group, "name", None)
        if node is not None and class_name in QUANTIZED_CLASSES:
            self.layers[-1].quantization = quantization_mode(node.config)
        if node is not None and isinstance(node.config.get("lora_rank"), int):
            self.layers[-1].lora_rank = node.config["lora_rank"]
        if (node is not None and node.is_model) or vnode.container is not None:
            self._walk_model(vnode, node, path + "/", depth + 1, trainable)
            self._collect_vars(vnode, None, None, path, "", trainable)
            return
        self._collect(vnode, class_name, node.config if node is not None else None, path, "", trainable)

    def _add_layer(self, path: str, name: str, class_name: str | None, depth: int, trainable: bool) -> None:
        if class_name == "?":
            class_name = None
        self.layers.append(LayerInfo(path=path, name=name, class_name=class_name, depth=depth, trainable=trainable))

    # -- variables --------------------------------------------------------------------------

    def _collect(self, vnode: VNode, class_name: str | None, config: dict[str, Any] | None, layer: str,
                 rel: str, trainable: bool) -> None:
        """The weights of one layer (and of its sub-layers, named below it)."""
        self._collect_vars(vnode, class_name, config, layer, rel, trainable)
        cfg = config or {}
        for attr in sorted(vnode.children, key=lambda k: (k.startswith("_"), SUBLAYER_ORDER.get(k.lstrip("_"), 0),
                                                          natural_key(k))):
            if attr == "vars":
                continue
            child = vnode.children[attr]
            if attr == "cell" and (class_name in RNN_CELLS or class_name == "RNN" or class_name is None):
                cell = cfg.get("cell") if isinstance(cfg.get("cell"), dict) else None
                cell_class = RNN_CELLS.get(class_name or "") or (cell or {}).get("class_name") \
                    or class_from_group(child.saved_name or "")
                cell_config = (cell or {}).get("config") if cell else config
                self._collect(child, cell_class, cell_config, layer, rel, trainable)
            elif attr == "layer" and class_name == "TimeDistributed":
                inner = wrapped_layer_of(cfg)
                inner_class = inner.class_name if inner else class_from_group(child.saved_name or "")
                self._collect(child, inner_class, inner.config if inner else None, layer, rel,
                              trainable and (inner.trainable if inner else True))
            elif attr in ("forward_layer", "backward_layer") and class_name == "Bidirectional":
                inner = wrapped_layer_of(cfg, "backward_layer") if attr == "backward_layer" else None
                inner = inner or wrapped_layer_of(cfg)
                sub = child.saved_name or (f"{attr.split('_')[0]}_{inner.name}" if inner else attr)
                sub_class = inner.class_name if inner else class_from_group(
                    re.sub(r"^(forward|backward)_", "", child.saved_name or ""))
                self._collect(child, sub_class, inner.config if inner else None, layer, f"{rel}{sub}/",
                              trainable and (inner.trainable if inner else True))
            elif attr in MHA_SUBLAYERS and class_name == "MultiHeadAttention":
                sub = child.saved_name or MHA_SUBLAYERS[attr]
                sub_cfg = {"bias_axes": "x" if cfg.get("use_bias", True) else None} if config is not None else None
                self._collect(child, "EinsumDense", sub_cfg, layer, f"{rel}{sub}/", trainable)
            elif attr in CONTAINERS:  # a model inside a wrapper (TimeDistributed(Sequential(...)))
                model_node = parse_node({"class_name": class_name or "?", "config": config}) \
                    if isinstance(cfg.get("layers"), list) else None
                for item, node in self._match(child, model_node):
                    if item is None:
                        continue
                    sub = node.name if node is not None else (item.saved_name or item.key)
                    self._collect(item, node.class_name if node is not None else class_from_group(item.key),
                                  node.config if node is not None else None, layer, f"{rel}{sub}/",
                                  trainable and (node.trainable if node is not None else True))
            else:
                sub = child.saved_name or attr.lstrip("_")
                guess = class_from_group(child.saved_name) if child.saved_name else None
                self._collect(child, guess, None, layer, f"{rel}{sub}/", trainable)

    def _collect_vars(self, vnode: VNode, class_name: str | None, config: dict[str, Any] | None, layer: str,
                      rel: str, trainable: bool) -> None:
        group = vnode.vars_group
        if group is None:
            return
        import h5py

        items = []
        for key in sorted(group.keys(), key=natural_key):
            safety.check_h5_link(group, key, self.where)
            obj = group[key]
            if isinstance(obj, h5py.Dataset):
                safety.check_h5_dataset(obj, self.where)
                items.append((key, obj))
        if not items:
            return
        names = keras3_var_names(class_name, config, len(items))
        if names is None and class_name is None and config is None:
            names = guess_kernel_bias([tuple(ds.shape) for _, ds in items])
        if names is None:
            names = [f"vars/{key}" for key, _ in items]
        mode = quantization_mode(config) if class_name in QUANTIZED_CLASSES else None
        if mode is not None and class_name is not None:
            check_shapes(self.where, layer + ("/" + rel.rstrip("/") if rel else ""), class_name, mode,
                         {var: tuple(int(d) for d in ds.shape) for (_, ds), var in zip(items, names, strict=True)})
        for (_, ds), var in zip(items, names, strict=True):
            self.add_weight(layer, rel + var, ds, trainable and var not in NON_TRAINABLE
                            and quantized_trainable(mode, var))



# Keras 3 files keep sub-layers sorted by attribute name; list them in `layer.weights` order, as a
# legacy .h5 of the same model does (query, key, value, output; forward before backward).
SUBLAYER_ORDER = {"query_dense": 1, "key_dense": 2, "value_dense": 3, "output_dense": 4,
                  "forward_layer": 1, "backward_layer": 2}


def _address(vnode: VNode) -> int:
    """Where a group's header lies in the file: Keras writes layers in order, so this is (nearly) saved order."""
    import h5py

    if vnode.group is None:
        return 0
    try:
        return int(h5py.h5o.get_info(vnode.group.id).addr)
    except Exception:  # noqa: BLE001 - only an ordering hint
        return 0


def wrapped_layer_of(config: dict[str, Any], key: str = "layer") -> LayerNode | None:
    node = LayerNode(name="", class_name="", config=config)
    inner = wrapped_layer(node, key)
    if inner is None or inner.class_name == "?":
        return None
    return inner
