"""TensorFlow checkpoints (`tf.train.Checkpoint`, `CheckpointManager`, `wtool train --checkpoint-dir`,
tf.keras 2's `save_weights("prefix")`) as a read-only weights file, without TensorFlow.

The bundle itself is read by `wtool.store.tf_bundle`. This module finds the prefix (a
`DIR/ckpt-3` prefix, either of its files, or the folder whose `checkpoint` state file
names the latest), decodes the object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`, a
TrackableObjectGraph proto) and works out which variables are the model's: those
reachable from the root's `model` child (or its only other child, or the root itself when
it is the model), not through an `optimizer` edge. A variable is named by its Keras path (the graph's
`full_name`, less a Sequential's own name) when those names are unique, else by its
path in the graph below the model (`_functional/_operations/1/_kernel`). Everything else
(optimizer slots, save counters, wtool's run state) is counted, not listed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import wtool.store.tf_bundle as bundle
from wtool.errors import InputError
from wtool.fileio import check_input_file
from wtool.safety import guards as safety
from wtool.store.types import WeightInfo, WeightsOnlyFile, layers_from_paths

GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
META_KEY = "meta/.ATTRIBUTES/VARIABLE_VALUE"  # wtool train's run metadata
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
STATE_FILE = "checkpoint"
MAX_STATE_BYTES = 1 << 20
OPTIMIZER_EDGES = ("optimizer", "_optimizer")


# --------------------------------------------------------------------------- finding the prefix


def _latest_in(folder: Path) -> Path:
    """The prefix a `checkpoint` state file names (`model_checkpoint_path: "ckpt-3"`), inside the folder."""
    state = check_input_file(folder / STATE_FILE)
    if state.stat().st_size > MAX_STATE_BYTES:
        raise InputError(f"{state}: refused: a checkpoint state file of {state.stat().st_size:,} bytes")
    text = state.read_bytes().decode("utf-8", "replace")
    m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    if m is None:
        raise InputError(f"{state}: not a checkpoint state file (no model_checkpoint_path)")
    name = m.group(1)
    if os.path.isabs(name):  # TensorFlow writes absolute paths for some directories: keep only the name
        name = os.path.basename(name)
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise InputError(f"{state}: refused checkpoint name {name[:80]!r}: it must name a prefix in {folder}")
    return folder / name


def find_prefix(path: str | os.PathLike[str]) -> Path:
    """The checkpoint prefix for a prefix, an `.index`/`.data-*` file or a folder with a state file."""
    p = Path(os.fspath(path))
    if p.is_dir() and not p.is_symlink():
        prefix = _latest_in(p)
        if not os.path.lexists(f"{prefix}.index"):
            raise InputError(f"{p / STATE_FILE}: names the checkpoint {prefix.name}, but {prefix.name}.index is "
                             f"not in {p}", "the folder may be a partial copy: copy the whole checkpoint folder")
        return prefix
    name = p.name
    if name.endswith(".index"):
        prefix = p.with_name(name[: -len(".index")])
    elif ".data-" in name:
        prefix = p.with_name(name.split(".data-")[0])
    else:
        prefix = p
    if not os.path.lexists(f"{prefix}.index"):
        raise InputError(f"{path}: not a TensorFlow checkpoint (no {prefix.name}.index)",
                         "give the prefix (DIR/ckpt-3), its .index file, or the folder with its `checkpoint` file")
    return prefix


def data_files(prefix: Path, shards: int) -> list[Path]:
    files = []
    for i in range(shards):
        f = prefix.with_name(f"{prefix.name}.data-{i:05d}-of-{shards:05d}")
        if not f.exists():
            raise InputError(f"{prefix}: data shard {f.name} is missing (the index names {shards})",
                             "copy every .data-* file of the checkpoint, not the .index alone")
        files.append(check_input_file(f))
    return files


# --------------------------------------------------------------------------- the object graph


@dataclass
class Node:
    children: list[tuple[int, str]] = field(default_factory=list)
    key: str | None = None  # the VARIABLE_VALUE attribute's checkpoint key
    full_name: str | None = None


def parse_graph(raw: bytes, where: str) -> list[Node]:
    """TrackableObjectGraph: nodes (1) of children (1: node_id, local_name) and attributes (2: name, full_name,
    checkpoint_key); slot variables and the rest are not needed here."""
    what = f"{where}: the object graph"
    nodes: list[Node] = []
    for number, _, value in bundle.fields(raw, what):
        if number != 1 or not isinstance(value, bytes):
            continue
        node = Node()
        for n, _, v in bundle.fields(value, what):
            if not isinstance(v, bytes):
                continue
            sub = {k: x for k, _, x in bundle.fields(v, what)}
            if n == 1:
                node.children.append((bundle.as_int(sub.get(1, 0), what), _text(sub.get(2, b""))))
            elif n == 2 and _text(sub.get(1, b"")) == "VARIABLE_VALUE":
                node.key, node.full_name = _text(sub.get(3, b"")), _text(sub.get(2, b"")) or None
        nodes.append(node)
        if len(nodes) > bundle.MAX_ENTRIES:
            raise bundle.Malformed(f"{what}: refused: more than {bundle.MAX_ENTRIES:,} nodes")
    for node in nodes:
        for child, _ in node.children:
            if not 0 <= child < len(nodes):
                raise bundle.Malformed(f"{what}: a child reference to node {child} of {len(nodes)}")
    return nodes


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def model_edge(nodes: list[Node]) -> str | None:
    """The root's child that is the model: `model`, else its only child that is neither a variable nor the
    optimizer or save counter (`tf.train.Checkpoint(net=model)`); None when the root is the model itself
    (tf.keras `save_weights`) or cannot be told apart from it."""
    if not nodes:
        return None
    children = [(c, n) for c, n in nodes[0].children if n not in OPTIMIZER_EDGES and n != "save_counter"]
    if any(n == "model" for _, n in children):
        return "model"
    if len(children) == 1 and nodes[children[0][0]].key is None:
        return children[0][1]
    return None


def model_variables(nodes: list[Node]) -> tuple[dict[str, str], bool]:
    """{checkpoint key: path in the graph below the model}, in model order (depth first, children in saved
    order), for the model's variables; and whether the model is a Keras 3 Sequential (its variables' Keras
    names start with its own name). A key that lies under the model is its own path, as TensorFlow named it."""
    if not nodes:
        return {}, False
    root = {name: child for child, name in nodes[0].children}
    edge = model_edge(nodes)
    start = root[edge] if edge is not None else 0
    prefix = f"{edge}/" if edge is not None else ""
    found: dict[str, str] = {}
    seen = {start}
    stack: list[tuple[int, str]] = [(start, "")]
    while stack:
        node_id, path = stack.pop()
        node = nodes[node_id]
        if node.key is not None and node.key not in found:
            own = readable(node.key)
            found[node.key] = own[len(prefix):] if own.startswith(prefix) and not own.startswith(OPTIMIZER_EDGES) \
                else path
        for child, name in reversed(node.children):
            if child not in seen and name not in OPTIMIZER_EDGES and not (node_id == 0 and name == "save_counter"):
                seen.add(child)
                stack.append((child, f"{path}/{name}" if path else name))
    return found, any(name == "_functional" for _, name in nodes[start].children)


CONTAINER = re.compile(r"^(_operations|_layers|layer_with_weights-\d+|layer-\d+)$")


def _nested(graph_path: str) -> bool:
    """Below more than one list of layers: a nested model, whose name the variables' Keras names may lack."""
    return sum(1 for p in graph_path.split("/") if CONTAINER.match(p)) > 1


def wtool_names(nodes: list[Node], meta: Any) -> dict[str, str] | None:
    """{key: weight path} from a `wtool train` checkpoint's run metadata (`weight_paths`, in the order of its
    `weights` list), or None when the checkpoint is not one or predates it."""
    paths = meta.get("weight_paths") if isinstance(meta, dict) else None
    listed = next((c for c, n in nodes[0].children if n == "weights"), None) if nodes else None
    if not isinstance(paths, list) or listed is None or len(paths) != len(nodes[listed].children):
        return None
    names: dict[str, str] = {}
    for (child, _), path in zip(nodes[listed].children, paths, strict=True):
        key = nodes[child].key
        if key is None or not isinstance(path, str) or "/" not in path or path in names.values():
            return None
        names[key] = path
    return names


def trainable_keys(nodes: list[Node]) -> set[str] | None:
    """Keys of the variables a Keras 3 optimizer lists as trainable (`optimizer/_trainable_variables/N`),
    or None when the checkpoint has no such list (then trainability is unknown)."""
    def child(node_id: int, name: str) -> int | None:
        return next((c for c, n in nodes[node_id].children if n == name), None)

    if not nodes:
        return None
    opt = child(0, "optimizer")
    if opt is None and child(0, "model") is not None:
        opt = child(child(0, "model") or 0, "optimizer")
    listed = child(opt, "_trainable_variables") if opt is not None else None
    if listed is None:
        return None
    return {k for c, _ in nodes[listed].children if (k := nodes[c].key) is not None}


def name_variables(nodes: list[Node], graph_paths: dict[str, str], sequential: bool) -> dict[str, str]:
    """{checkpoint key: weight path}: Keras names when they are unique, else the graph paths."""
    by_key = {n.key: n for n in nodes if n.key is not None}
    names = {k: (by_key[k].full_name or "") for k in graph_paths}
    if sequential and names:
        heads = {n.split("/", 1)[0] for n in names.values()}
        if len(heads) == 1 and all("/" in n for n in names.values()):
            names = {k: n.split("/", 1)[1] for k, n in names.items()}
    ok = all(n and "/" in n for n in names.values()) and len(set(names.values())) == len(names) \
        and not any(_nested(p) for p in graph_paths.values())
    return names if ok else dict(graph_paths)


def readable(key: str) -> str:
    return key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


# --------------------------------------------------------------------------- the file


class TFCheckpointFile(WeightsOnlyFile):
    """An opened TensorFlow checkpoint: the ModelFile interface, read-only, model variables as weights."""

    format = "tf-checkpoint"
    layout = "tf-checkpoint"

    def __init__(self, prefix: Path) -> None:
        self.path = prefix
        where = str(prefix)
        index = check_input_file(prefix.with_name(prefix.name + ".index"))
        table = bundle.read_table(index)
        if not table or table[0][0] != b"":
            raise bundle.Malformed(f"{where}: the checkpoint index has no bundle header")
        self._files = data_files(prefix, bundle.parse_header(table[0][1], where))
        sizes = [f.stat().st_size for f in self._files]
        self.file_size = index.stat().st_size + sum(sizes)
        self.entries: dict[str, bundle.Entry] = {}
        for raw_key, value in table[1:]:
            key = raw_key.decode("utf-8", "replace")
            entry = bundle.parse_entry(key, value, where)
            if entry.shard >= len(self._files):
                raise bundle.Malformed(f"{where}: entry {key[:80]!r} names data shard {entry.shard} of "
                                       f"{len(self._files)}")
            bundle.check_entry(entry, sizes[entry.shard], where)
            self.entries[key] = entry
        self.warnings: list[str] = []
        self._name_weights(where)
        safety.check_total_bytes(sum(w.nbytes for w in self.weights), where)
        self._by_path = {w.path: w for w in self.weights}

    def _name_weights(self, where: str) -> None:
        graph = self.entries.get(GRAPH_KEY)
        self.graph: list[Node] = []
        if graph is not None:
            nodes = self.graph = parse_graph(bundle.read_scalar_string(self._files[graph.shard], graph, where), where)
            graph_paths, sequential = model_variables(nodes)
            named = wtool_names(nodes, self._meta(where)) or name_variables(
                nodes, {k: p for k, p in graph_paths.items() if k in self.entries}, sequential)
            named = {k: p for k, p in named.items() if k in self.entries}  # a graph may name keys it lacks
            trainable = trainable_keys(nodes)
        else:  # a name-based (TF1 Saver) checkpoint: every tensor, by key
            named = {k: readable(k) for k in self.entries}
            trainable = None
        self.weights: list[WeightInfo] = []
        self._keys: dict[str, str] = {}
        for key, path in named.items():
            entry = self.entries[key]
            if not entry.numeric:
                self.warnings.append(f"{readable(key)}: {entry.dtype} values, not read")
                continue
            layer, _, var = path.rpartition("/")
            self.weights.append(WeightInfo(path, layer or path, var, entry.shape, entry.dtype,
                                           trainable is None or key in trainable, key))
            self._keys[path] = key
        self.optimizer_weights = sum(1 for k, e in self.entries.items()
                                     if k.startswith(OPTIMIZER_EDGES) and e.numeric and k not in named)
        others = sum(1 for k in self.entries if k not in named and k != GRAPH_KEY) - self.optimizer_weights
        unlisted = ([f"{self.optimizer_weights} optimizer variable(s)"] if self.optimizer_weights else []) \
            + ([f"{others} other value(s) (save counter, run state)"] if others > 0 else [])
        if unlisted:
            self.warnings.append(f"not listed, not model weights: {' and '.join(unlisted)}")
        self.layers = layers_from_paths(self.weights)

    def _meta(self, where: str) -> Any:
        """`wtool train`'s run metadata (a JSON string under `meta`), or None."""
        entry = self.entries.get(META_KEY)
        if entry is None or entry.dtype != "string" or entry.shape != ():
            return None
        from wtool.safety.safejson import parse_config_json

        raw = bundle.read_scalar_string(self._files[entry.shard], entry, where)
        try:
            return parse_config_json(raw, where, what="the run metadata")
        except InputError:
            return None

    @property
    def optimizer_moments(self) -> int:
        return sum(1 for k, e in self.entries.items() if k.startswith(OPTIMIZER_EDGES) and e.shape)

    @property
    def model_edge(self) -> str | None:
        """The root's child that is the model (`model`), or None when the root is the model (`model_edge`)."""
        return model_edge(self.graph)

    def data_file(self, entry: bundle.Entry) -> Path:
        return self._files[entry.shard]

    def key_of(self, path: str) -> str:
        """The checkpoint key of a weight (`model/.../.ATTRIBUTES/VARIABLE_VALUE`)."""
        return self._keys[self.weight(path).path]

    def weight_source(self, path: str) -> tuple[Path, str, str]:
        return self.path, self.format, self.key_of(path)

    def read(self, path: str) -> np.ndarray:
        entry = self.entries[self.key_of(path)]
        return bundle.read_array(self._files[entry.shard], entry, str(self.path))

    def __repr__(self) -> str:
        return f"<TFCheckpointFile {self.path} weights={len(self.weights)}>"


def open_tf_checkpoint(path: str | os.PathLike[str]) -> TFCheckpointFile:
    """Open a checkpoint given as a prefix, either of its files or the folder of a CheckpointManager."""
    return TFCheckpointFile(find_prefix(path))
