"""The state of Keras preprocessing layers, read from the file without TensorFlow.

Normalization keeps its statistics as weights; Discretization its bin boundaries, Hashing
and CategoryEncoding their sizes in the config; an adapted IntegerLookup, StringLookup or
TextVectorization keeps its vocabulary in the .keras archive's assets
(`assets/<layer group>/vocabulary.txt`), or in the config when it was given at
construction. A legacy .h5 and a .weights.h5 have no assets: that vocabulary is not there.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.safety import limits
from wtool.store import ModelFile
from wtool.store.config import LayerNode, parse_model_config

PREPROCESSING_CLASSES = frozenset({"Normalization", "Discretization", "IntegerLookup", "StringLookup",
                                   "TextVectorization", "Hashing", "CategoryEncoding"})
LOOKUP_CLASSES = frozenset({"IntegerLookup", "StringLookup", "TextVectorization"})
HEAD = 5  # entries shown of a vocabulary or a statistic


@dataclass
class LayerState:
    """One preprocessing layer's state: what it is and where it came from."""

    layer: str
    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "class": self.class_name, **self.state}


def _configs(node: LayerNode | None, prefix: str = "") -> dict[str, LayerNode]:
    """Every layer's config node by its path (`outer/inner`), as the weight store names layers."""
    found: dict[str, LayerNode] = {}
    for child in node.children if node is not None else []:
        found[prefix + child.name] = child
        if child.is_model:
            found.update(_configs(child, prefix + child.name + "/"))
    return found


def _head(values: Any) -> list[Any]:
    flat = np.asarray(values).reshape(-1)[:HEAD]
    return [v.item() if hasattr(v, "item") else v for v in flat]


def _asset_vocabulary(mf: ModelFile, group: str | None) -> tuple[int, list[str]] | None:
    """(size, first entries) of `vocabulary.txt` beside the layer's group in a .keras archive."""
    if mf.format != "keras" or not group:
        return None
    member = "assets" + group.rstrip("/") + "/vocabulary.txt"
    with zipfile.ZipFile(mf.path) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            return None
        if info.file_size > limits.current().max_bytes:
            return info.file_size, []
        lines = zf.read(info).decode("utf-8", "replace").splitlines()
    while lines and lines[-1] == "":
        lines.pop()
    return len(lines), lines[:HEAD]


def _typed(entries: list[str], class_name: str) -> list[Any]:
    """IntegerLookup's vocabulary file holds integers: shown as numbers, like get_vocabulary()."""
    if class_name != "IntegerLookup":
        return entries
    try:
        return [int(e) for e in entries]
    except ValueError:
        return entries


def _lookup_state(mf: ModelFile, layer: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    given = cfg.get("vocabulary")
    if isinstance(given, list):
        return {"vocabulary_size": len(given), "vocabulary_head": given[:HEAD], "source": "config"}
    if isinstance(given, str):
        return {"vocabulary_size": None, "vocabulary_head": [], "source": f"file {given}"}
    found = _asset_vocabulary(mf, layer.group)
    if found is None:
        return {"vocabulary_size": None, "vocabulary_head": [], "source": None}
    return {"vocabulary_size": found[0], "vocabulary_head": _typed(found[1], layer.class_name), "source": "assets"}


def _normalization_state(mf: ModelFile, layer: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key in ("mean", "variance"):
        if cfg.get(key) is not None:
            state[key] = _head(cfg[key])
    for path in layer.weights:
        key = path.rsplit("/", 1)[-1]
        if key in ("mean", "variance") and key not in state:  # `count` stays 0 after adapt: not shown
            value = mf.read(path)
            state[key] = _head(value)
            if key == "mean":
                state["features"] = int(value.size)
    return state


def layer_states(mf: ModelFile) -> list[LayerState]:
    """The state of every preprocessing layer in the file, in layer order."""
    configs = _configs(parse_model_config(mf.config) if mf.config is not None else None)
    states = []
    for layer in mf.layers:
        if layer.class_name not in PREPROCESSING_CLASSES:
            continue
        node = configs.get(layer.path)
        cfg = node.config if node is not None else {}
        if layer.class_name in LOOKUP_CLASSES:
            state = _lookup_state(mf, layer, cfg)
        elif layer.class_name == "Normalization":
            state = _normalization_state(mf, layer, cfg)
        elif layer.class_name == "Discretization":
            bounds = cfg.get("bin_boundaries")
            state = {"bins": len(bounds) + 1 if isinstance(bounds, list) else cfg.get("num_bins"),
                     "bin_boundaries_head": _head(bounds) if isinstance(bounds, list) else []}
        elif layer.class_name == "Hashing":
            state = {"num_bins": cfg.get("num_bins"), "salt": cfg.get("salt")}
        else:
            state = {"num_tokens": cfg.get("num_tokens"), "output_mode": cfg.get("output_mode")}
        states.append(LayerState(layer.path, layer.class_name, state))
    return states
