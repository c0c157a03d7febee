"""Reader for the legacy HDF5 layout: `layer_names` on the weights group, `weight_names` per layer.

Written by Keras 1, Keras 2, tf.keras 2.x and Keras 3 (`model.save("x.h5")`), either as a
full model (`model_weights` group + `model_config` attribute) or weights only (at the root).
Attributes may be split in chunks (`layer_names0`, `layer_names1`, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wtool.errors import InputError
from wtool.safety import guards as safety
from wtool.store.collector import Collector
from wtool.store.config import LayerNode, wrapped_trainable
from wtool.store.naming import (
    KNOWN_VAR_NAMES,
    NON_TRAINABLE,
    clean_relative,
    legacy_relative_name,
)
from wtool.store.types import LayerInfo


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def read_attr_list(group: Any, name: str, where: str) -> list[str] | None:
    """A list-of-strings attribute, joining Keras's chunks; None when absent."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    out: list[str] = []
    for chunk in chunks:
        safety.check_h5_attr_size(chunk, where, name)
        values = np.atleast_1d(np.asarray(chunk)) if not isinstance(chunk, (str, bytes)) else [chunk]
        out.extend(_text(v) for v in values)
    return out


def read_text_attr(group: Any, name: str, where: str) -> str | None:
    if name not in group.attrs:
        return None
    value = group.attrs[name]
    safety.check_h5_attr_size(value, where, name)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    return _text(value)


def get_member(group: Any, name: str, where: str) -> Any:
    """group[name] for a name that may contain '/', refusing links at every level; None if absent."""
    current = group
    for part in [p for p in name.split("/") if p != ""]:
        if not hasattr(current, "keys") or part not in current:
            return None
        safety.check_h5_link(current, part, where)
        current = current[part]
    return current


WRAPPERS = ("TimeDistributed", "Bidirectional")


class LegacyReader(Collector):
    def __init__(self, h5: Any, root: LayerNode | None, where: str) -> None:
        super().__init__(h5, where)
        self.root = root

    def weights_group(self) -> Any:
        import h5py

        if "model_weights" in self.h5:
            safety.check_h5_link(self.h5, "model_weights", self.where)
            group = self.h5["model_weights"]
            if isinstance(group, h5py.Group):
                return group
        return self.h5

    def read(self) -> None:
        import h5py

        group = self.weights_group()
        layer_names = read_attr_list(group, "layer_names", self.where)
        if layer_names is None:
            raise InputError(f"{self.where}: HDF5 file without Keras weights (no layer_names attribute)",
                             "is this a Keras model or weights file?")
        nodes = {c.name: c for c in self.root.children} if self.root is not None else {}
        missing = []
        for layer_name in layer_names:
            node = nodes.get(layer_name)
            class_name = node.class_name if node is not None else None
            trainable = node.trainable if node is not None else True
            info = LayerInfo(path=layer_name, name=layer_name, class_name=class_name, depth=0,
                             trainable=trainable)
            self.layers.append(info)
            if node is not None and node.is_model:
                self._add_children(node, layer_name + "/", 1)
            layer_group = get_member(group, layer_name, self.where)
            if not isinstance(layer_group, h5py.Group):
                info.missing = True
                missing.append(layer_name)
                continue
            weight_names = read_attr_list(layer_group, "weight_names", self.where) or []
            self._read_layer(layer_group, layer_name, node, weight_names)
        if missing:
            self.warnings.append(f"the file lists {len(missing)} layer(s) whose weights are missing: "
                                 f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")

    def _add_children(self, node: LayerNode, prefix: str, depth: int) -> None:
        for child in node.children:
            self.layers.append(LayerInfo(path=prefix + child.name, name=child.name, class_name=child.class_name,
                                         depth=depth, trainable=child.trainable))
            if child.is_model:
                self._add_children(child, prefix + child.name + "/", depth + 1)

    def _read_layer(self, layer_group: Any, layer_name: str, node: LayerNode | None, weight_names: list[str]) -> None:
        import h5py

        entries = []
        if len(set(weight_names)) != len(weight_names):
            twice = sorted({n for n in weight_names if weight_names.count(n) > 1})
            raise InputError(f"{self.where}: layer {layer_name} lists weight {twice[0]} more than once "
                             "(a malformed file)")
        for weight_name in weight_names:
            ds = get_member(layer_group, weight_name, self.where)
            if not isinstance(ds, h5py.Dataset):
                self.warnings.append(f"layer {layer_name}: weight {weight_name} is listed but missing")
                continue
            safety.check_h5_dataset(ds, self.where)
            rel = legacy_relative_name(layer_name, weight_name, layer_is_model=bool(node and node.is_model))
            layer_path, owner, rel = self._owner(layer_name, node, rel)
            rel = clean_relative(rel, owner.class_name if owner is not None else None)
            trainable = owner.trainable if owner is not None else True
            if owner is not None and owner.class_name in WRAPPERS:
                trainable = trainable and wrapped_trainable(owner, rel)
            entries.append([layer_path, rel, ds, trainable])
        self._name_opaque(entries)
        for layer_path, rel, ds, trainable in entries:
            self.add_weight(layer_path, rel, ds, trainable and rel.split("/")[-1] not in NON_TRAINABLE)

    @staticmethod
    def _owner(layer_name: str, node: LayerNode | None, rel: str) -> tuple[str, LayerNode | None, str]:
        """Descend into nested models: `dense_1/kernel` in model `model_1` belongs to `model_1/dense_1`."""
        path = layer_name
        while node is not None and node.is_model:
            match = None
            for child in node.children:
                if rel.startswith(child.name + "/") and (match is None or len(child.name) > len(match.name)):
                    match = child
            if match is None:
                break
            rel = rel[len(match.name) + 1:]
            path = f"{path}/{match.name}"
            node = match
        return path, node, rel

    @staticmethod
    def _name_opaque(entries: list[list[Any]]) -> None:
        """Keras 1 files may name a kernel after its initializer (`uniform1`): call it `kernel`."""
        if len(entries) != 2 or entries[1][1] != "bias":
            return
        rel, ds = entries[0][1], entries[0][2]
        if "/" not in rel and rel not in KNOWN_VAR_NAMES and len(ds.shape) >= 2:
            entries[0][1] = "kernel"
