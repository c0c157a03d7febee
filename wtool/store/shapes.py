"""A model's input and output shapes from its saved config alone (no TensorFlow), for `inspect`.

Inputs are what the config declares (`batch_shape`, `batch_input_shape`). Outputs are worked
out layer by layer for the common layer classes; a layer this module does not know makes the
shapes after it unknown (`None`), never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Shape = list[int | None] | None
SAME_SHAPE = {"Dropout", "BatchNormalization", "LayerNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU",
              "ELU", "Softmax", "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout1D",
              "SpatialDropout2D", "Masking", "Rescaling", "Normalization", "UnitNormalization", "ActivityRegularization",
              "GroupNormalization", "Identity"}
ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


def io_shapes(config: Any) -> dict[str, list[dict[str, Any]]] | None:
    """{"inputs": [{"name", "shape", "dtype"}], "outputs": [{"name", "shape"}]}, or None without a model config."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return None
    try:
        return _model_io(config)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None  # an odd config: inspect still lists the weights


def _model_io(entry: dict[str, Any]) -> dict[str, list[dict[str, Any]]] | None:
    cls, cfg = entry.get("class_name"), entry["config"]
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        return None
    if cls == "Sequential":
        return _sequential(cfg, layers)
    return _functional(cfg, layers)


def _declared(entry: dict[str, Any]) -> Shape:
    cfg = entry.get("config") or {}
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    return list(shape) if isinstance(shape, list) else None


def _dtype(entry: dict[str, Any]) -> str:
    dtype = (entry.get("config") or {}).get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    return str(dtype or "float32")


def _sequential(cfg: dict[str, Any], layers: list[Any]) -> dict[str, list[dict[str, Any]]]:
    first = layers[0] if layers else {}
    shape = _declared(first) or (list(cfg["build_input_shape"]) if isinstance(cfg.get("build_input_shape"), list)
                                 else None)
    name = (first.get("config") or {}).get("name", "input") if first.get("class_name") == "InputLayer" else "input"
    inputs = [{"name": name, "shape": shape, "dtype": _dtype(first)}]
    current = shape
    stopped: str | None = None if shape is not None else "the input's shape is not saved"
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            continue
        known = current is not None
        current = layer_output(layer, [current])
        if known and current is None:
            stopped = _stopped_at(layer)
    last = layers[-1] if layers else {}
    return {"inputs": inputs, "outputs": [_output((last.get("config") or {}).get("name", "output"), current,
                                                  stopped)]}


def _stopped_at(layer: dict[str, Any]) -> str:
    """Why shapes after `layer` are unknown: its class has no rule here, or its config leaves it open."""
    name = layer.get("name") or (layer.get("config") or {}).get("name") or "?"
    cls = layer.get("class_name")
    why = "its output shape depends on more than its config" if cls in _RULES or cls in (
        "Sequential", "Functional", "Model") else "wtool does not derive that class's shape from a config"
    return f"layer {name} ({cls}): {why}"


def _output(name: str, shape: Shape, stopped: str | None) -> dict[str, Any]:
    """An output entry; an unknown shape says where the derivation stopped (`unknown`)."""
    entry: dict[str, Any] = {"name": name, "shape": shape}
    if shape is None:
        entry["unknown"] = stopped or "not derived"
    return entry


def _endpoints(value: Any) -> list[str]:
    """Keras 3 writes one endpoint as [name, 0, 0], several as a list of those (or a dict)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value[0]]
    return [item[0] for item in value or []]


def _inbound(layer: dict[str, Any]) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [tensor or [tensors]], "kwargs": {...}}
        found: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                found.append(value["config"]["keras_history"][0])
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        walk(node.get("args"))
        return found
    return [item[0] for item in node]  # Keras 2: [[name, node, tensor, kwargs], ...]


def _functional(cfg: dict[str, Any], layers: list[Any]) -> dict[str, list[dict[str, Any]]]:
    by_name = {layer.get("name") or layer["config"]["name"]: layer for layer in layers}
    memo: dict[str, Shape] = {}
    # In the config's order, which Keras writes topologically, and without recursion: a deep model
    # (EfficientNetB7 has ~800 layers in a chain) or a hostile config must not exhaust the stack.
    # A layer whose input comes later (a malformed config, a cycle) gets an unknown shape.
    stopped: dict[str, str] = {}  # layer -> where the shapes before it stopped being known
    for name, layer in by_name.items():
        if layer.get("class_name") == "InputLayer":
            memo[name] = _declared(layer)
            if memo[name] is None:
                stopped[name] = f"input {name}: its shape is not saved"
        else:
            inbound = _inbound(layer)
            memo[name] = layer_output(layer, [memo.get(n) for n in inbound])
            if memo[name] is None:
                before = [stopped[n] for n in inbound if memo.get(n) is None and n in stopped]
                stopped[name] = before[0] if before else _stopped_at(layer)

    def shape_of(name: str) -> Shape:
        return memo.get(name)

    inputs = [{"name": n, "shape": _declared(by_name[n]), "dtype": _dtype(by_name[n])}
              for n in _endpoints(cfg.get("input_layers"))]
    outputs = [_output(n, shape_of(n), stopped.get(n)) for n in _endpoints(cfg.get("output_layers"))]
    return {"inputs": inputs, "outputs": outputs}


def layer_output(layer: dict[str, Any], ins: list[Shape]) -> Shape:
    """The output shape of one layer entry given its input shapes (None when not known)."""
    cls, cfg = layer.get("class_name"), layer.get("config") or {}
    if not ins or any(s is None for s in ins):
        return None
    shape: list[int | None] = list(ins[0])  # type: ignore[arg-type]
    if cls in ("Sequential", "Functional", "Model"):
        inner = _model_io(layer)
        return inner["outputs"][0]["shape"] if inner and len(inner["outputs"]) == 1 else None
    if cls in SAME_SHAPE or cls in ELEMENTWISE:
        return shape
    rule = _RULES.get(str(cls))
    return rule(cfg, shape, ins) if rule else None


def _dense(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    return s[:-1] + [int(cfg["units"])]


def _flatten(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    rest = s[1:]
    return [s[0], math.prod(rest)] if all(d is not None for d in rest) else [s[0], None]  # type: ignore[arg-type]


def _tuple(value: Any, rank: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)] * rank


def _window(size: int | None, kernel: int, stride: int, padding: str, dilation: int = 1) -> int | None:
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return (size - (kernel - 1) * dilation - 1) // stride + 1


def _conv(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    if cfg.get("data_format", "channels_last") != "channels_last":
        return None
    rank = len(s) - 2
    kernel, strides = _tuple(cfg["kernel_size"], rank), _tuple(cfg.get("strides", 1), rank)
    dilation = _tuple(cfg.get("dilation_rate", 1), rank)
    padding = "same" if cfg.get("padding") == "causal" else cfg.get("padding", "valid")  # causal pads the left
    spatial = [_window(d, k, st, padding, dl) for d, k, st, dl in zip(s[1:-1], kernel, strides, dilation,
                                                                       strict=True)]
    return [s[0], *spatial, int(cfg["filters"])]


def _pool(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        return None
    rank = len(s) - 2
    size = _tuple(cfg.get("pool_size", 2), rank)
    strides = _tuple(cfg.get("strides") or size, rank)
    spatial = [_window(d, k, st, cfg.get("padding", "valid")) for d, k, st in zip(s[1:-1], size, strides,
                                                                                 strict=True)]
    return [s[0], *spatial, s[-1]]


def _global_pool(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    if cfg.get("keepdims"):
        return [s[0], *([1] * (len(s) - 2)), s[-1]]
    return [s[0], s[-1]]


def _embedding(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    return s + [int(cfg["output_dim"])]


def _rnn(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    units = int(cfg["units"])
    return [s[0], s[1], units] if cfg.get("return_sequences") else [s[0], units]


def _bidirectional(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    inner = layer_output(cfg["layer"], [s])
    if inner is None or cfg.get("merge_mode", "concat") != "concat":
        return inner if cfg.get("merge_mode") in ("sum", "mul", "ave") else None
    return inner[:-1] + [None if inner[-1] is None else 2 * inner[-1]]


def _reshape(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    target = [int(d) for d in cfg["target_shape"]]
    if -1 in target:
        known = s[1:]
        if any(d is None for d in known):
            return None
        total = math.prod(known)  # type: ignore[arg-type]
        target[target.index(-1)] = total // max(1, math.prod(d for d in target if d != -1))
    return [s[0], *target]


def _concatenate(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    axis = int(cfg.get("axis", -1)) % len(s)
    sizes = [shape[axis] for shape in ins if shape is not None]
    out = list(s)
    out[axis] = None if any(d is None for d in sizes) else sum(sizes)  # type: ignore[arg-type]
    return out


def _text_vectorization(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    """Keras's TextVectorization.compute_output_shape: int -> (batch, output_sequence_length); the other
    modes add a token axis (none with split=None) and encode it as its lookup layer does."""
    if cfg.get("output_mode", "int") == "int":
        length = cfg.get("output_sequence_length")
        return [s[0], None if length is None else int(length)]
    if cfg.get("split", "whitespace") is None:
        inner = s + [1] if len(s) <= 1 else s
    else:
        inner = s + [None]
    return _lookup(cfg, inner, ins)


def _lookup(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    """Keras's IndexLookup.compute_output_shape (StringLookup, IntegerLookup, TextVectorization's lookup).

    An encoding's width is max_tokens when padded to it; otherwise it is the vocabulary's size when
    Keras builds the graph, which the config does not reliably say (unknown)."""
    mode = cfg.get("output_mode", "int")
    if mode == "int":
        return s
    if not (cfg.get("pad_to_max_tokens") and isinstance(cfg.get("max_tokens"), int)):
        return None
    depth = int(cfg["max_tokens"])
    if mode == "one_hot":
        return (s[:-1] if len(s) > 1 and s[-1] == 1 else s) + [depth]
    return s[:-1] + [depth]


def _hashing(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    if cfg.get("output_mode", "int") == "int":
        return s
    return s[:-1] + [int(cfg["num_bins"])]


def _category_encoding(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    tokens = int(cfg["num_tokens"])
    if cfg.get("output_mode", "multi_hot") == "one_hot" and (s[-1] != 1 or len(s) == 1):
        return s + [tokens]
    return s[:-1] + [tokens]


def _discretization(cfg: dict[str, Any], s: list[int | None], ins: list[Shape]) -> Shape:
    return s if cfg.get("output_mode", "int") == "int" else None


_RULES: dict[str, Callable[[dict[str, Any], list[int | None], list[Shape]], Shape]] = {
    "Dense": _dense, "Flatten": _flatten, "Embedding": _embedding, "Reshape": _reshape,
    "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv, "SeparableConv2D": _conv, "SeparableConv1D": _conv,
    "MaxPooling1D": _pool, "MaxPooling2D": _pool, "MaxPooling3D": _pool,
    "AveragePooling1D": _pool, "AveragePooling2D": _pool, "AveragePooling3D": _pool,
    "GlobalAveragePooling1D": _global_pool, "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling1D": _global_pool, "GlobalMaxPooling2D": _global_pool,
    "LSTM": _rnn, "GRU": _rnn, "SimpleRNN": _rnn, "Bidirectional": _bidirectional,
    "Concatenate": _concatenate,
    "TextVectorization": _text_vectorization, "StringLookup": _lookup, "IntegerLookup": _lookup,
    "Hashing": _hashing, "CategoryEncoding": _category_encoding, "Discretization": _discretization,
}
