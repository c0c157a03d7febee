"""`set-weights MODEL --from-checkpoint CKPT`: the values a TensorFlow checkpoint holds for MODEL's weights.

Matching is TensorFlow's own: MODEL is built with Keras and `tf.train.CheckpointView(prefix).match(...)`
pairs the checkpoint's object graph with the model's trackables, as `tf.train.Checkpoint(model=model)
.restore(prefix).expect_partial()` does (under the root's child that holds the model, `model` or the
only other one, or as the root when the checkpoint's root is the model, as tf.keras's `save_weights`
writes it). The values themselves are read by wtool's checked reader
(`wtool.store.tf_checkpoint`); the set-weights plan then checks shapes and dtypes before anything is
written. Needs TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError


@dataclass
class CheckpointValues:
    """What the checkpoint gives MODEL: values by weight path, and what it does not give."""

    prefix: str
    values: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)  # path -> (value, source)
    missing: list[str] = field(default_factory=list)  # MODEL's weights the checkpoint has no value for
    notes: list[str] = field(default_factory=list)


def _matched_keys(model: Any, prefix: str, nodes: list[Any], edge: str | None) -> dict[int, str]:
    """{id(variable): checkpoint key} for every variable of the model the checkpoint's graph reaches, the model
    put where the checkpoint has it: under the root's `edge` child, or as the root."""
    import tensorflow as tf

    try:
        matches = tf.train.CheckpointView(prefix).match(model if edge is None else tf.train.Checkpoint(**{edge: model}))
    except (tf.errors.OpError, ValueError) as exc:
        raise IncompatibleError(f"{prefix}: TensorFlow cannot match it to the model "
                                f"({str(exc).splitlines()[0][:160]})") from None
    return {id(obj): key for node_id, obj in matches.items()
            if 0 <= node_id < len(nodes) and (key := nodes[node_id].key) is not None}


def checkpoint_values(model_path: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
                      *, unsafe: bool = False) -> CheckpointValues:
    """The checkpoint's values for MODEL's weights, matched through the object graph; exit 4 if none match."""
    import wtool.store.tf_bundle as bundle
    from wtool.graph.model import load_model
    from wtool.store.model_paths import weight_paths
    from wtool.store.tf_checkpoint import GRAPH_KEY, open_tf_checkpoint, readable

    with open_tf_checkpoint(checkpoint) as ckpt:  # every structure checked first: a damaged bundle is exit 3
        prefix = str(ckpt.path)
        if GRAPH_KEY not in ckpt.entries:
            raise IncompatibleError(f"{prefix}: a name-based (TF1 Saver) checkpoint has no object graph to match "
                                    "a model by", "`wtool inspect --export` it and use --npz with renamed keys")
        model = load_model(model_path, unsafe=unsafe)
        keys = _matched_keys(model, prefix, ckpt.graph, ckpt.model_edge)
        out = CheckpointValues(prefix)
        for path, var in weight_paths(model):
            key = keys.get(id(var))
            entry = ckpt.entries.get(key) if key is not None else None
            if entry is None or not entry.numeric:
                out.missing.append(path)
                continue
            value = bundle.read_array(ckpt.data_file(entry), entry, prefix)
            out.values[path] = (value, f"{ckpt.path.name}:{readable(key or '')}")
        if not out.values:
            raise IncompatibleError(f"{prefix}: none of its variables matches {model_path} through the "
                                    "checkpoint's object graph",
                                    "the checkpoint was written for another model (a tf.keras 2 save_weights "
                                    "checkpoint does not match a Keras 3 model's graph): `wtool inspect "
                                    f"{prefix} --export w.npz`, then --npz")
        if ckpt.optimizer_weights:
            out.notes.append(f"{ckpt.optimizer_weights} optimizer variable(s) of the checkpoint ignored "
                             "(slots and step count are not weights)")
        if out.missing:
            shown = ", ".join(out.missing[:6]) + (f" and {len(out.missing) - 6} more" if len(out.missing) > 6 else "")
            out.notes.append(f"not in the checkpoint, kept as they were: {shown}")
    return out
