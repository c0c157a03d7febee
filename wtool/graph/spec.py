"""The compact layer spec of `wtool new`: parse text into LayerSpec, then build a Keras model.

    dense:3:sigmoid:nobias,dense:1:sigmoid:nobias
    conv2d:8:3x3:relu:padding=same,maxpool:2,flatten,dropout:0.25,dense:10:softmax:name=out

A layer is `KIND` followed by `:`-separated fields: its positional values in order
(units, filters, kernel size, ...), then an optional activation, flags (`nobias`,
`seq`, `mask`) and `key=value` options (`name=`, `stride=`, `padding=`, ...).
Parsing is TensorFlow-free; `build_model` imports Keras inside the function.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wtool.errors import UsageError

ACTIVATIONS = (
    "relu", "sigmoid", "tanh", "softmax", "linear", "elu", "selu", "gelu", "silu", "swish",
    "softplus", "softsign", "leaky_relu", "relu6", "hard_sigmoid", "hard_silu", "exponential",
    "mish", "log_softmax",
)
PADDINGS = ("valid", "same", "causal")


def _int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def _float(text: str) -> float:
    return float(text)


def _size(text: str) -> tuple[int, ...]:
    """`3` or `3x3` (or `3x3x3`)."""
    return tuple(_int(part) for part in text.lower().split("x"))


def _dims(text: str) -> tuple[int, ...]:
    """A shape such as `28x28x1` (for reshape)."""
    parts = text.lower().split("x")
    return tuple(-1 if p == "-1" else _int(p) for p in parts)


@dataclass(frozen=True)
class Param:
    """One positional field of a layer kind."""

    name: str
    parse: Callable[[str], Any]
    expected: str
    required: bool = True


@dataclass(frozen=True)
class Kind:
    """What one layer kind accepts."""

    positional: tuple[Param, ...] = ()
    activation: bool = False
    flags: tuple[str, ...] = ()
    options: Mapping[str, tuple[Callable[[str], Any], str]] = field(default_factory=dict)
    usage: str = ""


Options = Mapping[str, tuple[Callable[[str], Any], str]]
_POOL_OPTS: Options = {"stride": (_size, "a stride such as 2 or 2x2"), "padding": (str, "valid or same")}
_CONV_OPTS: Options = {"stride": (_size, "a stride such as 1 or 2x2"), "padding": (str, "valid, same or causal"),
              "dilation": (_size, "a dilation rate such as 1 or 2x2")}
_RNN_OPTS: Options = {"dropout": (_rate, "a rate in [0, 1)"), "recurrent_dropout": (_rate, "a rate in [0, 1)")}

KINDS: dict[str, Kind] = {
    "dense": Kind((Param("units", _int, "a positive number of units"),), activation=True, flags=("nobias",),
                  usage="dense:UNITS[:ACTIVATION][:nobias]"),
    "conv1d": Kind((Param("filters", _int, "a positive number of filters"),
                    Param("kernel_size", _size, "a kernel size such as 3")),
                   activation=True, flags=("nobias",), options=_CONV_OPTS,
                   usage="conv1d:FILTERS:KERNEL[:ACTIVATION][:nobias][:stride=S][:padding=same]"),
    "conv2d": Kind((Param("filters", _int, "a positive number of filters"),
                    Param("kernel_size", _size, "a kernel size such as 3 or 3x3")),
                   activation=True, flags=("nobias",), options=_CONV_OPTS,
                   usage="conv2d:FILTERS:KERNEL[:ACTIVATION][:nobias][:stride=S][:padding=same]"),
    "maxpool": Kind((Param("pool_size", _size, "a pool size such as 2 or 2x2", required=False),),
                    options=_POOL_OPTS, usage="maxpool[:SIZE][:stride=S][:padding=same]"),
    "avgpool": Kind((Param("pool_size", _size, "a pool size such as 2 or 2x2", required=False),),
                    options=_POOL_OPTS, usage="avgpool[:SIZE][:stride=S][:padding=same]"),
    "globalavgpool": Kind(usage="globalavgpool"),
    "globalmaxpool": Kind(usage="globalmaxpool"),
    "flatten": Kind(usage="flatten"),
    "dropout": Kind((Param("rate", _rate, "a rate in [0, 1)"),), usage="dropout:RATE"),
    "batchnorm": Kind(options={"momentum": (_float, "a number such as 0.99"),
                               "epsilon": (_float, "a small number such as 0.001")},
                      usage="batchnorm[:momentum=M][:epsilon=E]"),
    "layernorm": Kind(options={"epsilon": (_float, "a small number such as 0.001")},
                      usage="layernorm[:epsilon=E]"),
    "embedding": Kind((Param("input_dim", _int, "the vocabulary size (a positive number)"),
                       Param("output_dim", _int, "the embedding size (a positive number)")),
                      flags=("mask",), usage="embedding:VOCAB:DIM[:mask]"),
    "lstm": Kind((Param("units", _int, "a positive number of units"),), activation=True,
                 flags=("nobias", "seq"), options=_RNN_OPTS, usage="lstm:UNITS[:ACTIVATION][:seq][:nobias]"),
    "gru": Kind((Param("units", _int, "a positive number of units"),), activation=True,
                flags=("nobias", "seq"), options=_RNN_OPTS, usage="gru:UNITS[:ACTIVATION][:seq][:nobias]"),
    "simplernn": Kind((Param("units", _int, "a positive number of units"),), activation=True,
                      flags=("nobias", "seq"), options=_RNN_OPTS,
                      usage="simplernn:UNITS[:ACTIVATION][:seq][:nobias]"),
    "activation": Kind((Param("activation", str, "an activation name"),), usage="activation:NAME"),
    "reshape": Kind((Param("target_shape", _dims, "a shape such as 28x28x1"),), usage="reshape:DIMSxDIMS"),
}
ALIASES = {"conv": "conv2d", "maxpool2d": "maxpool", "maxpool1d": "maxpool", "avgpool2d": "avgpool",
           "avgpool1d": "avgpool", "bn": "batchnorm", "ln": "layernorm", "rnn": "simplernn",
           "gap": "globalavgpool", "globalaveragepool": "globalavgpool"}


@dataclass(frozen=True)
class LayerSpec:
    """One parsed layer: its kind, the values given, and the text it came from."""

    kind: str
    values: dict[str, Any]
    name: str | None
    text: str
    index: int


def _bad(index: int, text: str, token: str, what: str) -> UsageError:
    kind = KINDS.get(ALIASES.get(text.split(":")[0].lower(), text.split(":")[0].lower()))
    usage = f"write it as {kind.usage}" if kind else "e.g. dense:64:relu, conv2d:8:3x3:relu, dropout:0.5"
    if kind and kind.activation:
        usage += f"; activations: {', '.join(ACTIVATIONS)}"
    return UsageError(f"--layers: layer {index} '{text}': '{token}': {what}", usage)


def parse_layers(text: str) -> list[LayerSpec]:
    """Parse `dense:3:sigmoid:nobias,dense:1:sigmoid` into LayerSpecs; bad tokens raise UsageError (exit 2)."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise UsageError(f"--layers: empty layer in '{text}'", "separate layers with single commas: dense:8:relu,dense:1")
    specs = [_parse_one(item, i) for i, item in enumerate(items, start=1)]
    names = [s.name for s in specs if s.name]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"--layers: layer name '{dupes[0]}' is used twice", "give each layer its own name=")
    return specs


def _parse_one(item: str, index: int) -> LayerSpec:
    fields = [f.strip() for f in item.split(":")]
    kind_token = fields[0].lower()
    kind_name = ALIASES.get(kind_token, kind_token)
    if kind_name not in KINDS:
        close = difflib.get_close_matches(kind_token, [*KINDS, *ALIASES], n=1)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"--layers: layer {index} '{item}': unknown layer kind '{fields[0]}'{guess}",
                         f"expected one of: {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    values: dict[str, Any] = {}
    name: str | None = None
    positional = list(kind.positional)
    for token in fields[1:]:
        low = token.lower()
        if not token:
            raise _bad(index, item, token, f"empty field; expected {kind.usage}")
        if "=" in token:
            key, _, raw = token.partition("=")
            key = key.strip().lower()
            if key == "name":
                if not raw or "/" in raw or raw != raw.strip():
                    raise _bad(index, item, token, "a layer name must be non-empty without '/' or spaces")
                name = raw
                continue
            if key not in kind.options:
                allowed = ", ".join(["name", *kind.options]) or "name"
                raise _bad(index, item, token, f"unknown option '{key}' for {kind_name} (expected {allowed})")
            parse, expected = kind.options[key]
            try:
                value = parse(raw)
            except ValueError:
                raise _bad(index, item, token, f"{key} must be {expected}") from None
            if key == "padding" and value not in PADDINGS:
                raise _bad(index, item, token, "padding must be valid, same or causal")
            values[key] = value
        elif low in kind.flags:
            values[low] = True
        elif positional:
            param = positional[0]
            try:
                values[param.name] = param.parse(token)
            except ValueError:
                raise _bad(index, item, token, f"expected {param.expected} ({kind.usage})") from None
            positional.pop(0)
            if param.name == "activation" and values[param.name] not in ACTIVATIONS:
                raise _bad(index, item, token, f"unknown activation; expected one of {', '.join(ACTIVATIONS)}")
        elif kind.activation and "activation" not in values:
            if low not in ACTIVATIONS:
                close = difflib.get_close_matches(low, [*ACTIVATIONS, *kind.flags], n=1)
                guess = f"; did you mean '{close[0]}'?" if close else ""
                extra = f" or {'/'.join(kind.flags)}" if kind.flags else ""
                raise _bad(index, item, token, f"expected an activation{extra}{guess}")
            values["activation"] = low
        else:
            raise _bad(index, item, token, f"unexpected field; expected {kind.usage}")
    missing = [p for p in positional if p.required]
    if missing:
        raise UsageError(f"--layers: layer {index} '{item}': missing {missing[0].name} "
                         f"(expected {missing[0].expected})", f"write it as {kind.usage}")
    return LayerSpec(kind_name, values, name, item, index)


def parse_shape(text: str) -> tuple[int | None, ...]:
    """`2`, `28,28,1`, `28x28x1` or `None,8` (variable length) -> a shape without the batch axis."""
    parts = [p.strip() for p in text.replace("x", ",").replace("X", ",").split(",")]
    shape: list[int | None] = []
    for p in parts:
        if p.lower() in ("none", "?", "-1"):
            shape.append(None)
            continue
        try:
            shape.append(_int(p))
        except ValueError:
            raise UsageError(f"--input-shape: '{p}' in '{text}' is not a positive dimension",
                             "write the shape without the batch axis, e.g. 784 or 28,28,1") from None
    return tuple(shape)


def _default_names(specs: list[LayerSpec]) -> list[str]:
    """Keras-like names (dense, dense_1, ...) counted per model, so weight paths do not depend on the session."""
    taken = {s.name for s in specs if s.name}
    counts: dict[str, int] = {}
    names = []
    for spec in specs:
        if spec.name:
            names.append(spec.name)
            continue
        base = spec.kind
        while True:
            n = counts.get(base, 0)
            counts[base] = n + 1
            candidate = base if n == 0 else f"{base}_{n}"
            if candidate not in taken:
                break
        taken.add(candidate)
        names.append(candidate)
    return names


def build_model(specs: list[LayerSpec], input_shape: tuple[int | None, ...], *, input_dtype: str | None = None,
                name: str = "model") -> Any:
    """Build a Sequential keras model from parsed specs. The rank of each layer's input picks 1D/2D pooling."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    L = keras.layers
    if input_dtype is None:
        input_dtype = "int32" if specs and specs[0].kind == "embedding" else "float32"
    model = keras.Sequential(name=name)
    model.add(keras.Input(shape=input_shape, dtype=input_dtype, name="input"))
    names = _default_names(specs)
    shape: Any = (None, *input_shape)
    for spec, layer_name in zip(specs, names, strict=False):
        rank = len(shape) - 1  # without the batch axis
        v = spec.values
        try:
            layer = _make_layer(L, spec, v, rank, layer_name)
            model.add(layer)
            shape = model.output_shape
        except (ValueError, TypeError) as exc:
            msg = str(exc).splitlines()[0][:200]
            raise UsageError(f"--layers: layer {spec.index} '{spec.text}' does not fit its input of shape "
                                    f"{_fmt(shape)}: {msg}",
                                    "check the input shape and the layer order (e.g. flatten before dense)") from None
    return model


def _fmt(shape: Any) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _rank_error(spec: LayerSpec, rank: int, wanted: str) -> UsageError:
    return UsageError(f"--layers: layer {spec.index} '{spec.text}' needs {wanted} input, "
                             f"but gets rank-{rank} input (without the batch axis)",
                             "add flatten/reshape before it or change --input-shape")


def _make_layer(L: Any, spec: LayerSpec, v: dict[str, Any], rank: int, name: str) -> Any:
    act = v.get("activation")
    bias = not v.get("nobias", False)
    kind = spec.kind
    if kind == "dense":
        return L.Dense(v["units"], activation=act, use_bias=bias, name=name)
    if kind in ("conv1d", "conv2d"):
        dims = 1 if kind == "conv1d" else 2
        if rank != dims + 1:
            axes = "steps" if dims == 1 else "rows, cols"
            raise _rank_error(spec, rank, f"rank-{dims + 1} ({axes}, channels)")
        cls = L.Conv1D if dims == 1 else L.Conv2D
        return cls(v["filters"], _fit(v["kernel_size"], dims, spec), strides=_fit(v.get("stride", (1,)), dims, spec),
                   padding=v.get("padding", "valid"), dilation_rate=_fit(v.get("dilation", (1,)), dims, spec),
                   activation=act, use_bias=bias, name=name)
    if kind in ("maxpool", "avgpool"):
        dims = rank - 1
        if dims not in (1, 2, 3):
            raise _rank_error(spec, rank, "rank-2, rank-3 or rank-4")
        table = {("maxpool", 1): L.MaxPooling1D, ("maxpool", 2): L.MaxPooling2D, ("maxpool", 3): L.MaxPooling3D,
                 ("avgpool", 1): L.AveragePooling1D, ("avgpool", 2): L.AveragePooling2D,
                 ("avgpool", 3): L.AveragePooling3D}
        size = _fit(v.get("pool_size", (2,)), dims, spec)
        stride = _fit(v["stride"], dims, spec) if "stride" in v else None
        return table[(kind, dims)](size, strides=stride, padding=v.get("padding", "valid"), name=name)
    if kind in ("globalavgpool", "globalmaxpool"):
        dims = rank - 1
        if dims not in (1, 2, 3):
            raise _rank_error(spec, rank, "rank-2, rank-3 or rank-4")
        table = {("globalavgpool", 1): L.GlobalAveragePooling1D, ("globalavgpool", 2): L.GlobalAveragePooling2D,
                 ("globalavgpool", 3): L.GlobalAveragePooling3D, ("globalmaxpool", 1): L.GlobalMaxPooling1D,
                 ("globalmaxpool", 2): L.GlobalMaxPooling2D, ("globalmaxpool", 3): L.GlobalMaxPooling3D}
        return table[(kind, dims)](name=name)
    if kind == "flatten":
        return L.Flatten(name=name)
    if kind == "dropout":
        return L.Dropout(v["rate"], name=name)
    if kind == "batchnorm":
        return L.BatchNormalization(momentum=v.get("momentum", 0.99), epsilon=v.get("epsilon", 1e-3), name=name)
    if kind == "layernorm":
        return L.LayerNormalization(epsilon=v.get("epsilon", 1e-3), name=name)
    if kind == "embedding":
        return L.Embedding(v["input_dim"], v["output_dim"], mask_zero=v.get("mask", False), name=name)
    if kind in ("lstm", "gru", "simplernn"):
        if rank != 2:
            raise _rank_error(spec, rank, "rank-2 (steps, features)")
        cls = {"lstm": L.LSTM, "gru": L.GRU, "simplernn": L.SimpleRNN}[kind]
        return cls(v["units"], activation=act or "tanh", use_bias=bias, return_sequences=v.get("seq", False),
                   dropout=v.get("dropout", 0.0), recurrent_dropout=v.get("recurrent_dropout", 0.0), name=name)
    if kind == "activation":
        return L.Activation(v["activation"], name=name)
    if kind == "reshape":
        return L.Reshape(v["target_shape"], name=name)
    raise AssertionError(kind)  # pragma: no cover - KINDS and this table are kept in step by tests


def _fit(size: tuple[int, ...], dims: int, spec: LayerSpec) -> tuple[int, ...]:
    if len(size) == 1:
        return size * dims
    if len(size) != dims:
        raise UsageError(f"--layers: layer {spec.index} '{spec.text}': size {'x'.join(map(str, size))} has "
                         f"{len(size)} dimensions, the layer has {dims}")
    return size
