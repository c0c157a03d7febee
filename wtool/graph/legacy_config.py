"""Translate model configs written by Keras 1, Keras 2 and tf.keras into Keras 3 configs.

Pure dict -> dict, no TensorFlow and no Keras here. `translate(model_config)` returns the
Keras 3 form of an old `model_config` (every layer with its `module`, new-style inbound
nodes, renamed classes and arguments) together with the list of changes it made and
the problems that stop a safe rebuild:

- `code`: the graph needs code from the file (a Lambda layer, a custom class). Exit 5
  without `--unsafe`.
- `incompatible`: the graph uses something Keras 3 cannot express (exit 4).

Nothing here executes or imports anything named in the file: a class is rebuilt only if
its name is on the allowlist of Keras's own layers (`SAFE_LAYERS`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from wtool.errors import WtoolError
from wtool.safety.keras_ops import APPLICATION_LAYERS, OP_MODULES

# Keras's own layer classes that rebuild from their config alone (no code from the file).
SAFE_LAYERS = frozenset(
    """
    Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D
    AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add
    AdditiveAttention AlphaDropout Attention Average AveragePooling1D AveragePooling2D AveragePooling3D
    BatchNormalization Bidirectional CategoryEncoding CenterCrop Concatenate Conv1D Conv1DTranspose
    Conv2D Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D Cropping1D
    Cropping2D Cropping3D Dense DepthwiseConv1D DepthwiseConv2D Discretization Dot Dropout ELU
    EinsumDense Embedding Flatten GRU GaussianDropout GaussianNoise GlobalAveragePooling1D
    GlobalAveragePooling2D GlobalAveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D
    GlobalMaxPooling3D GroupNormalization GroupQueryAttention HashedCrossing Hashing Identity
    InputLayer IntegerLookup LSTM LayerNormalization LeakyReLU Masking MaxPooling1D MaxPooling2D
    MaxPooling3D Maximum Minimum MultiHeadAttention Multiply Normalization PReLU Permute ReLU
    RepeatVector Rescaling Reshape Resizing SeparableConv1D SeparableConv2D SimpleRNN Softmax
    RNN SimpleRNNCell GRUCell LSTMCell StackedRNNCells
    SpatialDropout1D SpatialDropout2D SpatialDropout3D StringLookup Subtract TextVectorization TimeDistributed
    UnitNormalization UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
    """.split()
)
MODEL_CLASSES = frozenset({"Sequential", "Model", "Functional"})
RNN_CLASSES = frozenset({"SimpleRNN", "GRU", "LSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "Bidirectional"})
CONV_CLASSES = frozenset({"Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                          "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D"})

# Old class name -> Keras 3 class name (aliases and Keras 1 names).
CLASS_ALIASES = {
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D",
    "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose",
    "Deconvolution3D": "Conv3DTranspose",
    "Conv2DTranspose": "Conv2DTranspose",
    "Convolution2DTranspose": "Conv2DTranspose",
    "SeparableConvolution1D": "SeparableConv1D",
    "SeparableConvolution2D": "SeparableConv2D",
    "MaxPool1D": "MaxPooling1D",
    "MaxPool2D": "MaxPooling2D",
    "MaxPool3D": "MaxPooling3D",
    "AvgPool1D": "AveragePooling1D",
    "AvgPool2D": "AveragePooling2D",
    "AvgPool3D": "AveragePooling3D",
    "GlobalMaxPool1D": "GlobalMaxPooling1D",
    "GlobalMaxPool2D": "GlobalMaxPooling2D",
    "GlobalMaxPool3D": "GlobalMaxPooling3D",
    "GlobalAvgPool1D": "GlobalAveragePooling1D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
    "GlobalAvgPool3D": "GlobalAveragePooling3D",
    "CuDNNLSTM": "LSTM",
    "CuDNNGRU": "GRU",
    "ThresholdedReLU": "ReLU",
    "Model": "Functional",
}

# Keras 1 layers that Keras 2 already dropped and that have no exact modern equivalent.
REMOVED_NO_EQUIVALENT = {
    "Highway": "Keras 1 `Highway` layer",
    "MaxoutDense": "Keras 1 `MaxoutDense` layer",
    "TimeDistributedDense": "Keras 1 `TimeDistributedDense` layer",
    "AutoEncoder": "Keras 1 `AutoEncoder` layer",
    "LocallyConnected1D": "`LocallyConnected1D` (removed in Keras 3)",
    "LocallyConnected2D": "`LocallyConnected2D` (removed in Keras 3)",
    "TFOpLambda": "tf.keras op layer (a TensorFlow function called in the graph)",
    "SlicingOpLambda": "tf.keras slicing op layer",
    "DenseFeatures": "tf.keras `DenseFeatures` (feature columns)",
    "CategoryCrossing": "tf.keras `CategoryCrossing`",
}

# Keras 1 argument names -> Keras 2/3 names, shared by layers with a kernel and a bias.
_K1_WEIGHTED = {
    "init": "kernel_initializer",
    "W_regularizer": "kernel_regularizer",
    "b_regularizer": "bias_regularizer",
    "W_constraint": "kernel_constraint",
    "b_constraint": "bias_constraint",
    "bias": "use_bias",
}
_K1_CONV = {
    **_K1_WEIGHTED,
    "nb_filter": "filters",
    "subsample": "strides",
    "subsample_length": "strides",
    "filter_length": "kernel_size",
    "border_mode": "padding",
    "dim_ordering": "data_format",
    "atrous_rate": "dilation_rate",
}
_K1_RNN = {
    **_K1_WEIGHTED,
    "output_dim": "units",
    "inner_init": "recurrent_initializer",
    "inner_activation": "recurrent_activation",
    "U_regularizer": "recurrent_regularizer",
    "U_constraint": "recurrent_constraint",
    "dropout_W": "dropout",
    "dropout_U": "recurrent_dropout",
}
_K1_POOL = {"pool_length": "pool_size", "stride": "strides", "border_mode": "padding", "dim_ordering": "data_format"}
K1_ARGS: dict[str, dict[str, str]] = {
    "Dense": {**_K1_WEIGHTED, "output_dim": "units"},
    "Conv1D": _K1_CONV,
    "Conv2D": _K1_CONV,
    "Conv3D": _K1_CONV,
    "Conv2DTranspose": _K1_CONV,
    "SeparableConv2D": {**_K1_CONV, "init": "depthwise_initializer"},
    "SimpleRNN": _K1_RNN,
    "GRU": _K1_RNN,
    "LSTM": _K1_RNN,
    "Embedding": {"init": "embeddings_initializer", "W_regularizer": "embeddings_regularizer",
                  "W_constraint": "embeddings_constraint"},
    "Dropout": {"p": "rate"},
    "SpatialDropout1D": {"p": "rate"},
    "SpatialDropout2D": {"p": "rate", "dim_ordering": "data_format"},
    "SpatialDropout3D": {"p": "rate", "dim_ordering": "data_format"},
    "GaussianDropout": {"p": "rate"},
    "GaussianNoise": {"sigma": "stddev"},
    "PReLU": {"init": "alpha_initializer"},
    "BatchNormalization": {"beta_init": "beta_initializer", "gamma_init": "gamma_initializer"},
    "MaxPooling1D": _K1_POOL,
    "MaxPooling2D": _K1_POOL,
    "MaxPooling3D": _K1_POOL,
    "AveragePooling1D": _K1_POOL,
    "AveragePooling2D": _K1_POOL,
    "AveragePooling3D": _K1_POOL,
    "GlobalMaxPooling1D": {"dim_ordering": "data_format"},
    "GlobalMaxPooling2D": {"dim_ordering": "data_format"},
    "GlobalAveragePooling1D": {"dim_ordering": "data_format"},
    "GlobalAveragePooling2D": {"dim_ordering": "data_format"},
    "UpSampling1D": {"length": "size"},
    "UpSampling2D": {"dim_ordering": "data_format"},
    "UpSampling3D": {"dim_ordering": "data_format"},
    "ZeroPadding2D": {"dim_ordering": "data_format"},
    "ZeroPadding3D": {"dim_ordering": "data_format"},
    "Cropping2D": {"dim_ordering": "data_format"},
    "Cropping3D": {"dim_ordering": "data_format"},
}
_DIM_ORDERING = {"tf": "channels_last", "th": "channels_first", "default": None}

# Arguments only ever used to give the first layer its input: moved to an InputLayer.
_INPUT_ARGS = ("batch_input_shape", "batch_shape", "input_shape", "input_dim", "input_length",
               "input_dtype", "batch_size")

# Keras 1 initializer names -> Keras 3 names.
_K1_INITIALIZERS = {
    "zero": "zeros",
    "one": "ones",
    "uniform": "random_uniform",
    "normal": "random_normal",
    "glorot_uniform": "glorot_uniform",
    "glorot_normal": "glorot_normal",
    "he_uniform": "he_uniform",
    "he_normal": "he_normal",
    "lecun_uniform": "lecun_uniform",
    "lecun_normal": "lecun_normal",
    "orthogonal": "orthogonal",
    "identity": "identity",
}
_INITIALIZER_CLASSES = {
    "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
    "Orthogonal", "OrthogonalInitializer", "Identity", "IdentityInitializer", "GlorotNormal",
    "GlorotUniform", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform",
}
_INITIALIZER_RENAMES = {"Zero": "Zeros", "One": "Ones", "glorot_uniform": "GlorotUniform"}
_REGULARIZER_CLASSES = {"L1", "L2", "L1L2", "OrthogonalRegularizer"}
_CONSTRAINT_CLASSES = {"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"}
_CONSTRAINT_RENAMES = {"maxnorm": "MaxNorm", "max_norm": "MaxNorm", "nonneg": "NonNeg", "non_neg": "NonNeg",
                       "unitnorm": "UnitNorm", "unit_norm": "UnitNorm", "MaxNormConstraint": "MaxNorm"}
_MERGE_MODES = {"sum": "Add", "mul": "Multiply", "concat": "Concatenate", "ave": "Average", "max": "Maximum",
                "dot": "Dot", "cos": "Dot"}


class TranslationError(WtoolError):
    """The config is not a model config this module understands (exit 3)."""

    exit_code = 3


@dataclass
class Problem:
    """Something that stops a safe rebuild of the graph."""

    kind: str  # "code" (needs code from the file: exit 5) or "incompatible" (exit 4)
    layer: str
    reason: str
    custom_class: str | None = None  # a class only the user's code (--custom-objects) can provide

    def __str__(self) -> str:
        return f"layer `{self.layer}`: {self.reason}" if self.layer else self.reason


@dataclass
class Translation:
    """A Keras 3 model config and what it took to get it."""

    config: dict[str, Any]
    changes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # layer name -> how its stored weights must be converted (see wtool.graph.legacy_weights)
    weight_conversions: dict[str, dict[str, Any]] = field(default_factory=dict)
    lambdas: list[str] = field(default_factory=list)
    custom_classes: list[str] = field(default_factory=list)

    def blocking(self, unsafe: bool) -> list[Problem]:
        """Problems that still stop the rebuild with or without --unsafe."""
        return [p for p in self.problems if p.kind == "incompatible" or (p.kind == "code" and not unsafe)]


@dataclass
class _Context:
    keras_version: str | None
    backend: str | None
    changes: list[str]
    problems: list[Problem]
    weight_conversions: dict[str, dict[str, Any]]
    lambdas: list[str]
    custom_classes: list[str]
    weight_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def native(self) -> bool:
        """Saved by Keras 3 (its configs need no node-index or Lambda translation)."""
        return bool(self.keras_version) and str(self.keras_version).startswith("3")

    @property
    def keras1(self) -> bool:
        return bool(self.keras_version) and str(self.keras_version).startswith("1")

    def change(self, text: str) -> None:
        if text not in self.changes:
            self.changes.append(text)


def translate(model_config: dict[str, Any], keras_version: str | None = None,
              backend: str | None = None, weight_shapes: dict[str, tuple[int, ...]] | None = None) -> Translation:
    """Return the Keras 3 form of an old model config (the input is not modified).

    `weight_shapes` (canonical path -> stored shape) lets a Sequential that records no input
    shape take it from its first Dense kernel.
    """
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise TranslationError("the model config is not a Keras model config (no `class_name`)")
    ctx = _Context(keras_version, backend, [], [], {}, [], [], dict(weight_shapes or {}))
    config = _model(copy.deepcopy(model_config), ctx, top=True)
    return Translation(config, ctx.changes, ctx.problems, ctx.weight_conversions, ctx.lambdas,
                       ctx.custom_classes)


# ---------------------------------------------------------------------------------------------
# models


def _model(entry: dict[str, Any], ctx: _Context, top: bool = False) -> dict[str, Any]:
    class_name = entry["class_name"]
    if class_name not in MODEL_CLASSES:
        # a subclassed model (or a bare layer): its structure lives in its code
        name = entry.get("registered_name") or class_name
        ctx.custom_classes.append(str(name))
        ctx.problems.append(Problem("code", "", f"the model is an instance of the custom class `{name}`, "
                                    "whose code is not in the file", custom_class=str(name)))
        return dict(entry)
    if class_name == "Sequential":
        return _sequential(entry, ctx)
    return _functional(entry, ctx)


def _sequential(entry: dict[str, Any], ctx: _Context) -> dict[str, Any]:
    raw = entry.get("config")
    if isinstance(raw, list):  # Keras 1 to 2.1: the config is the list of layers
        ctx.change("list-style Sequential config (Keras 1 to 2.1) read as a layer list")
        raw = {"name": entry.get("name") or "sequential", "layers": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), list):
        raise TranslationError("Sequential config without a layer list")
    name = raw.get("name") or "sequential"
    old_layers = raw["layers"]
    layers: list[dict[str, Any]] = []
    if old_layers and old_layers[0].get("class_name") == "Merge":
        ctx.problems.append(Problem("incompatible", _layer_name(old_layers[0]),
                                    "a Keras 1 Sequential that starts with a Merge of branches; "
                                    "rebuild it as a functional model"))
    first = old_layers[0] if old_layers else None
    if first is not None and first.get("class_name") != "InputLayer":
        shape, dtype = _input_of(first)
        if shape is None and raw.get("build_input_shape") is not None:
            shape = list(raw["build_input_shape"])
        if shape is None:
            shape, dtype = _input_from_kernel(first, name, ctx, old_layers), None
        if shape is not None:
            first_name = _layer_name(first)
            layers.append(_input_layer(f"{first_name}_input", shape, dtype or "float32"))
            ctx.change(f"input shape {_fmt_shape(shape)} of first layer `{first_name}` "
                       "given to an InputLayer (Keras 3 would add an axis)")
    for old in old_layers:
        layers.append(_layer(old, ctx))
    layers = _sandwich_sequential(layers, ctx)
    config: dict[str, Any] = {"name": name, "trainable": raw.get("trainable", True), "layers": layers}
    if raw.get("dtype") is not None:
        config["dtype"] = _dtype(raw["dtype"])
    if not layers or layers[0]["class_name"] != "InputLayer":
        ctx.problems.append(Problem("incompatible", name,
                                    "the file does not record the model's input shape"))
    return {"module": "keras", "class_name": "Sequential", "config": config, "registered_name": None}


_CONV_RANKS = {"Conv1D": 1, "Conv2D": 2, "Conv3D": 3}
_NEEDS_SPATIAL_SIZE = frozenset({"Flatten", "Reshape"})  # a None spatial size cannot go through these


def _input_from_kernel(first: dict[str, Any], model_name: str, ctx: _Context,
                       layers: list[Any] | None = None) -> list[Any] | None:
    """The input shape a Sequential's first stored kernel settles, when the file records none.

    Keras 2 wrote no input shape for a Sequential built on data (`model.fit` first), nested ones
    included. A first Dense's kernel (n_in, units) gives (None, n_in). A first convolution's
    kernel gives the channels but not the spatial size: (None, None, ..., channels) is taken
    only when nothing in the model needs that size (no Flatten or Reshape), so the model runs on
    any size, as a fully convolutional one does; otherwise it stays unrecorded.
    """
    leaf = first
    while leaf.get("class_name") == "Sequential":
        cfg = leaf.get("config")
        inner = cfg if isinstance(cfg, list) else cfg.get("layers") if isinstance(cfg, dict) else None
        if not isinstance(inner, list) or not inner or not isinstance(inner[0], dict):
            return None
        leaf = inner[0]
    declared, _dtype = _input_of(leaf)
    cls = leaf.get("class_name")
    if declared is not None or cls not in ("Dense", *_CONV_RANKS):
        return declared
    leaf_name = _layer_name(leaf)
    kernels = [shape for path, shape in ctx.weight_shapes.items() if path.split("/")[-2:] == [leaf_name, "kernel"]]
    if len(kernels) != 1:
        return None
    kernel = list(kernels[0])
    if cls == "Dense":
        if len(kernel) != 2:
            return None
        shape: list[Any] = [None, int(kernel[0])]
        what = "Dense"
    else:
        rank = _CONV_RANKS[str(cls)]
        raw_cfg = leaf.get("config")
        conv_cfg: dict[str, Any] = raw_cfg if isinstance(raw_cfg, dict) else {}
        if len(kernel) != rank + 2 or conv_cfg.get("data_format") not in (None, "channels_last") \
                or _holds_class(layers or [], _NEEDS_SPATIAL_SIZE):
            return None
        shape = [None] * (rank + 1) + [int(kernel[-2])]
        what = f"{cls} (any spatial size: the model is fully convolutional)"
    ctx.change(f"input shape {_fmt_shape(shape)} of `{model_name}` taken from the stored kernel of its first "
               f"{what} `{leaf_name}` {_fmt_shape(kernel)} (the file records none)")
    return shape


def _holds_class(item: Any, classes: frozenset[str]) -> bool:
    """Whether any serialized layer in `item` (nested models and wrappers included) is of one of `classes`."""
    stack = [item]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if x.get("class_name") in classes:
                return True
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


def _functional(entry: dict[str, Any], ctx: _Context) -> dict[str, Any]:
    raw = entry.get("config")
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), list):
        raise TranslationError(f"{entry.get('class_name')} config without a layer list")
    name = raw.get("name") or "model"
    old_layers = raw["layers"]
    # Keras 2 models nested in a model have a node of their own (index 0); Keras 3's do not.
    node_offset: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for old in old_layers:
        lname = old.get("name") or _layer_name(old)
        cls = CLASS_ALIASES.get(old.get("class_name", ""), old.get("class_name", ""))
        kinds[lname] = cls
        if cls in ("Functional", "Sequential") and not ctx.native and _has_own_node(old):
            node_offset[lname] = 1
    if node_offset:
        ctx.change("node indices of nested models shifted (Keras 2 counted the model's own node)")
    layers = []
    for old in old_layers:
        lname = old.get("name") or _layer_name(old)
        new = _layer(old, ctx)
        new["name"] = lname
        new["inbound_nodes"] = [_node(node, kinds.get(lname, ""), node_offset, lname, ctx)
                                for node in old.get("inbound_nodes") or []]
        layers.append(new)

    def endpoint(ref: list[Any]) -> list[Any]:
        lname, node_index, tensor_index = ref[0], ref[1], ref[2]
        # Keras 3's get_tensor already subtracts one for a nested Functional, not for Sequential.
        if kinds.get(lname) == "Sequential" and node_offset.get(lname):
            node_index -= 1
        return [lname, node_index, tensor_index]

    config = {
        "name": name,
        "trainable": raw.get("trainable", True),
        "layers": layers,
        "input_layers": _single(_map_refs(raw.get("input_layers", []), endpoint), ctx),
        "output_layers": _single(_map_refs(raw.get("output_layers", []), endpoint), ctx),
    }
    _sandwich_functional(config, ctx)
    return {"module": "keras.src.models.functional", "class_name": "Functional", "config": config,
            "registered_name": None}


# -- channels-first convolutions --------------------------------------------------------------
# Keras 3's TensorFlow `ops.add` adds a convolution's bias with `tf.nn.bias_add` and guesses the
# layout from the shape: a channels-first output whose last axis is as long as the number of
# filters gets the bias on the wrong axis. Old `th`-ordered models hit this, so a translated
# channels-first convolution runs channels-last between two Permute layers: the same kernel
# (its layout does not depend on data_format), the same weight paths, the right result.


def _is_channels_first_conv(layer: dict[str, Any]) -> bool:
    return layer.get("class_name") in CONV_CLASSES and (layer.get("config") or {}).get("data_format") \
        == "channels_first"


def _rank(layer: dict[str, Any]) -> int:
    cls = layer["class_name"]
    return 1 if "1D" in cls else 3 if "3D" in cls else 2


def _permutes(layer: dict[str, Any], taken: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    rank = _rank(layer)
    name = layer["config"]["name"]

    def unique(base: str) -> str:
        candidate, i = base, 1
        while candidate in taken:
            i += 1
            candidate = f"{base}_{i}"
        taken.add(candidate)
        return candidate

    to_last = list(range(2, rank + 2)) + [1]  # (C, d1.., dn) -> (d1.., dn, C), batch axis excluded
    to_first = [rank + 1] + list(range(1, rank + 1))
    dtype = layer["config"].get("dtype")
    extra = {"dtype": dtype} if dtype is not None else {}
    before = {"module": "keras.layers", "class_name": "Permute", "registered_name": None,
              "config": {"name": unique(f"{name}_to_channels_last"), "trainable": True, "dims": to_last, **extra}}
    after = {"module": "keras.layers", "class_name": "Permute", "registered_name": None,
             "config": {"name": unique(f"{name}_to_channels_first"), "trainable": True, "dims": to_first, **extra}}
    layer["config"]["data_format"] = "channels_last"
    return before, after


def _all_names(layers: list[dict[str, Any]]) -> set[str]:
    return {str((layer.get("config") or {}).get("name") or layer.get("name")) for layer in layers}


def _sandwich_sequential(layers: list[dict[str, Any]], ctx: _Context) -> list[dict[str, Any]]:
    if ctx.native or not any(_is_channels_first_conv(layer) for layer in layers):
        return layers
    taken = _all_names(layers)
    out: list[dict[str, Any]] = []
    for layer in layers:
        if _is_channels_first_conv(layer):
            before, after = _permutes(layer, taken)
            out += [before, layer, after]
            ctx.change(f"`{layer['config']['name']}`: channels-first convolution run channels-last between "
                       "two Permute layers (Keras 3 adds its bias on the wrong axis otherwise)")
        else:
            out.append(layer)
    return out


def _sandwich_functional(config: dict[str, Any], ctx: _Context) -> None:
    layers = config["layers"]
    targets = [layer for layer in layers if _is_channels_first_conv(layer)]
    if ctx.native or not targets:
        return
    taken = _all_names(layers)
    renamed: dict[str, str] = {}
    new_layers: list[dict[str, Any]] = []
    for layer in layers:
        if not _is_channels_first_conv(layer):
            new_layers.append(layer)
            continue
        name = layer["name"]
        before, after = _permutes(layer, taken)
        n_nodes = len(layer["inbound_nodes"])
        before["name"], before["inbound_nodes"] = before["config"]["name"], layer["inbound_nodes"]
        layer["inbound_nodes"] = [{"args": [_keras_tensor([before["name"], k, 0], {})], "kwargs": {}}
                                  for k in range(n_nodes)]
        after["name"] = after["config"]["name"]
        after["inbound_nodes"] = [{"args": [_keras_tensor([name, k, 0], {})], "kwargs": {}} for k in range(n_nodes)]
        renamed[name] = after["name"]
        new_layers += [before, layer, after]
        ctx.change(f"`{name}`: channels-first convolution run channels-last between two Permute layers "
                   "(Keras 3 adds its bias on the wrong axis otherwise)")
    # the convolutions' and the Permute-back layers' own nodes already point where they should
    own = {id(layer) for layer in new_layers
           if layer["name"] in renamed or layer["name"] in set(renamed.values())}

    def repoint(obj: Any) -> None:
        if isinstance(obj, dict):
            history = (obj.get("config") or {}).get("keras_history") if obj.get("class_name") == \
                "__keras_tensor__" else None
            if isinstance(history, list) and history and history[0] in renamed:
                history[0] = renamed[history[0]]
                return
            for value in obj.values():
                repoint(value)
        elif isinstance(obj, list):
            for value in obj:
                repoint(value)

    for layer in new_layers:
        if id(layer) not in own:
            repoint(layer.get("inbound_nodes"))
    config["layers"] = new_layers
    config["output_layers"] = _map_refs(config["output_layers"],
                                        lambda ref: [renamed.get(ref[0], ref[0]), ref[1], ref[2]])


def _single(refs: Any, ctx: _Context) -> Any:
    """One input (output) as a bare reference, as Keras 3 writes it: the model then takes
    (returns) a tensor rather than a list of one."""
    if not ctx.native and isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], list) \
            and len(refs[0]) >= 3 and isinstance(refs[0][0], str):
        return refs[0]
    return refs


def _has_own_node(entry: dict[str, Any]) -> bool:
    """Whether a Keras 2 nested model was a built graph network (with its own node 0)."""
    raw = entry.get("config")
    layers = raw if isinstance(raw, list) else (raw or {}).get("layers") or []
    if entry.get("class_name") != "Sequential":
        return True
    if not layers:
        return False
    first = layers[0]
    return first.get("class_name") == "InputLayer" or _input_of(first)[0] is not None or \
        (isinstance(raw, dict) and raw.get("build_input_shape") is not None)


def _map_refs(refs: Any, fn: Any) -> Any:
    if isinstance(refs, list) and len(refs) >= 3 and isinstance(refs[0], str) and isinstance(refs[1], int):
        return fn(refs)
    if isinstance(refs, list):
        return [_map_refs(r, fn) for r in refs]
    if isinstance(refs, dict):
        return {k: _map_refs(v, fn) for k, v in refs.items()}
    return refs


def _keras_tensor(ref: list[Any], node_offset: dict[str, int]) -> dict[str, Any]:
    lname, node_index, tensor_index = ref[0], int(ref[1]), int(ref[2])
    node_index -= node_offset.get(lname, 0)
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [], "dtype": "float32", "keras_history": [lname, node_index, tensor_index]}}


def _is_ref(value: Any) -> bool:
    return (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int))


def _refs_to_tensors(value: Any, node_offset: dict[str, int]) -> Any:
    if _is_ref(value):
        return _keras_tensor(value, node_offset)
    if isinstance(value, list):
        return [_refs_to_tensors(v, node_offset) for v in value]
    if isinstance(value, dict):
        return {k: _refs_to_tensors(v, node_offset) for k, v in value.items()}
    return value


def _node(node: Any, cls: str, node_offset: dict[str, int], lname: str, ctx: _Context) -> Any:
    """A legacy inbound node ([[name, node, tensor, kwargs], ...]) -> Keras 3 {args, kwargs}."""
    if isinstance(node, dict):  # already Keras 3 style
        return _refs_to_tensors(node, node_offset) if "args" not in node else node
    if not isinstance(node, list) or not node:
        return node
    tensors = [_keras_tensor(entry, node_offset) for entry in node]
    kwargs: dict[str, Any] = {}
    for entry in node:
        if len(entry) > 3 and isinstance(entry[3], dict):
            kwargs.update(_refs_to_tensors(entry[3], node_offset))
    if cls in RNN_CLASSES and len(tensors) > 1 and "initial_state" not in kwargs:
        ctx.change(f"`{lname}`: extra inputs passed as initial_state")
        return {"args": [tensors[0]], "kwargs": {**kwargs, "initial_state": tensors[1:]}}
    arg = tensors[0] if len(tensors) == 1 else tensors
    return {"args": [arg], "kwargs": kwargs}


# ---------------------------------------------------------------------------------------------
# layers


def _layer_name(entry: dict[str, Any]) -> str:
    raw = entry.get("config")
    if isinstance(raw, dict) and raw.get("name"):
        return str(raw["name"])
    return str(entry.get("name") or entry.get("class_name") or "?")


def _input_of(entry: dict[str, Any]) -> tuple[list[Any] | None, str | None]:
    """The input shape (with batch axis) and dtype an old first layer declares, if any."""
    raw = entry.get("config")
    if not isinstance(raw, dict):
        return None, None
    dtype = raw.get("input_dtype") or (raw.get("dtype") if isinstance(raw.get("dtype"), str) else None)
    if raw.get("batch_input_shape") is not None:
        return list(raw["batch_input_shape"]), dtype
    if raw.get("batch_shape") is not None:
        return list(raw["batch_shape"]), dtype
    if raw.get("input_shape") is not None:
        return [raw.get("batch_size")] + list(raw["input_shape"]), dtype
    if entry.get("class_name") == "Embedding":
        if raw.get("input_length") is not None:
            return [None, raw["input_length"]], dtype or "int32"
        return None, None
    if raw.get("input_dim") is not None:
        if entry.get("class_name") in RNN_CLASSES | {"Conv1D", "Convolution1D"}:
            return [None, raw.get("input_length"), raw["input_dim"]], dtype
        return [None, raw["input_dim"]], dtype
    return None, None


def _input_layer(name: str, shape: list[Any], dtype: str) -> dict[str, Any]:
    return {"module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": list(shape), "dtype": dtype, "sparse": False, "name": name},
            "registered_name": None}


def _fmt_shape(shape: list[Any]) -> str:
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _layer(entry: dict[str, Any], ctx: _Context) -> dict[str, Any]:
    """Translate one layer entry to a Keras 3 serialized layer (no name/inbound_nodes)."""
    old_class = entry.get("class_name", "")
    lname = _layer_name(entry)
    if old_class in MODEL_CLASSES:
        sub = dict(entry)
        if "name" not in (sub.get("config") or {}) and isinstance(sub.get("config"), dict):
            sub["config"] = {**sub["config"], "name": lname}
        return _model(sub, ctx)
    raw = entry.get("config")
    config: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    config.setdefault("name", lname)
    op_module = _operation_module(entry, ctx)
    if op_module is not None:  # `x + a`, `ops.mean(x)` on KerasTensors: Keras's own operation, no code
        if entry.get("module") != op_module:
            ctx.change(f"`{lname}`: Keras operation {old_class} given its module {op_module}")
        return {"module": op_module, "class_name": old_class, "config": config, "registered_name": old_class}
    app_module = APPLICATION_LAYERS.get(old_class)
    if app_module is not None and entry.get("module") in (None, app_module):  # keras.applications' own layers
        if entry.get("module") != app_module:
            ctx.change(f"`{lname}`: keras.applications layer {old_class} given its module {app_module}")
        return {"module": app_module, "class_name": old_class, "config": config, "registered_name": old_class}
    if entry.get("module") and entry.get("registered_name"):
        # Keras 3 style entry of a registered (custom) object
        ctx.custom_classes.append(str(entry.get("registered_name")))
        ctx.problems.append(Problem("code", lname, f"custom class `{entry['registered_name']}` "
                                    "is not part of Keras; its code is not in the file",
                                    custom_class=str(entry["registered_name"])))
        return dict(entry)
    if old_class in REMOVED_NO_EQUIVALENT:
        ctx.problems.append(Problem("incompatible", lname, f"{REMOVED_NO_EQUIVALENT[old_class]} "
                                    "has no Keras 3 equivalent"))
        return {"module": "keras.layers", "class_name": old_class, "config": config, "registered_name": None}
    if old_class == "Lambda":
        ctx.lambdas.append(lname)
        ctx.problems.append(_lambda_problem(config, lname, ctx))
        return {"module": "keras.layers", "class_name": "Lambda", "config": _strip_input_args(config),
                "registered_name": None}
    if old_class == "Merge":
        return _merge(config, lname, ctx)
    cls = CLASS_ALIASES.get(old_class, old_class)
    if cls not in SAFE_LAYERS:
        ctx.custom_classes.append(old_class)
        ctx.problems.append(Problem("code", lname, f"custom class `{old_class}` is not part of Keras "
                                    "(its code is not installed)", custom_class=str(old_class)))
        return {"module": None, "class_name": old_class, "config": config, "registered_name": old_class}
    if cls != old_class and old_class not in ("Model",):
        ctx.change(f"`{lname}`: class {old_class} -> {cls}")
    config = _keras1_args(cls, config, lname, ctx)
    config = _common_args(cls, config, lname, ctx)
    config = _class_args(old_class, cls, config, lname, ctx)
    if cls in ("Bidirectional", "TimeDistributed"):
        for key in ("layer", "backward_layer"):
            inner = config.get(key)
            if isinstance(inner, dict):
                if "module" not in inner:
                    ctx.change(f"`{lname}`: inner layer config given its module")
                config[key] = _layer(inner, ctx)
    if cls in ("RNN", "StackedRNNCells"):
        _translate_cells(config, ctx)
    if cls in CONV_CLASSES and config.get("data_format") == "channels_first":
        ctx.weight_conversions.setdefault(lname, {})["channels_first"] = True
    if cls in CONV_CLASSES | RNN_CLASSES and ctx.backend == "theano" and not cls.startswith("Depthwise"):
        ctx.weight_conversions.setdefault(lname, {})["theano_kernel"] = True
    return {"module": "keras.layers", "class_name": cls, "config": config, "registered_name": None}


def _operation_module(entry: dict[str, Any], ctx: _Context) -> str | None:
    """The `keras.src.ops.*` module of an operation node, or None for a layer.

    A .keras config names the module. Keras 3's .h5 writer drops it, so there an entry is an
    operation when its class is one and it is not a layer's config (a Keras 3 layer's always has
    `trainable`; an operation's holds only its name and arguments): `Add` of `x + a` is the
    operation, `layers.Add()([x, a])` the layer.
    """
    cls = entry.get("class_name")
    if not isinstance(cls, str) or cls not in OP_MODULES:
        return None
    module = entry.get("module")
    if module is not None:
        return module if module == OP_MODULES[cls] else None
    config = entry.get("config")
    if not ctx.native or not isinstance(config, dict):
        return None
    if cls in SAFE_LAYERS and "trainable" in config:
        return None
    return OP_MODULES[cls]


def _translate_cells(config: dict[str, Any], ctx: _Context) -> None:
    """An RNN's cell (or list of cells) and StackedRNNCells' cells are layers too: checked and
    translated like any other, so a custom cell is refused by name."""
    for key in ("cell", "cells"):
        inner = config.get(key)
        if isinstance(inner, dict):
            config[key] = _layer(inner, ctx)
        elif isinstance(inner, list):
            config[key] = [_layer(c, ctx) if isinstance(c, dict) else c for c in inner]


def _strip_input_args(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _INPUT_ARGS}


def _lambda_problem(config: dict[str, Any], lname: str, ctx: _Context) -> Problem:
    function = config.get("function")
    if ctx.native:
        if isinstance(function, dict) and function.get("class_name") != "__lambda__":
            name = function.get("config")
            return Problem("code", lname, f"Lambda layer calls the Python function `{name}`, whose code is "
                           "not in the file (needs --unsafe and the function installed)", custom_class=str(name))
        return Problem("code", lname, "Lambda layer runs Python code stored in the file (needs --unsafe)")
    saved_by = f"Keras {ctx.keras_version}" if ctx.keras_version else "an old Keras"
    if config.get("function_type") == "function":
        what = f"calls the Python function {config.get('function')!r}, which is not in the file"
    else:
        what = (f"holds Python bytecode written by {saved_by}; bytecode does not carry across "
                "Python versions, so it cannot run here even with --unsafe")
    return Problem("incompatible", lname, f"Lambda layer {what}")


def _merge(config: dict[str, Any], lname: str, ctx: _Context) -> dict[str, Any]:
    mode = config.get("mode", "sum")
    if not isinstance(mode, str) or config.get("mode_type", "raw") != "raw":
        ctx.lambdas.append(lname)
        ctx.problems.append(Problem("code", lname, "Keras 1 Merge with a Python function as mode"))
        return {"module": "keras.layers", "class_name": "Add", "config": {"name": lname}, "registered_name": None}
    if mode not in _MERGE_MODES:
        ctx.problems.append(Problem("incompatible", lname, f"Keras 1 Merge mode {mode!r} is unknown"))
        return {"module": "keras.layers", "class_name": "Add", "config": {"name": lname}, "registered_name": None}
    cls = _MERGE_MODES[mode]
    new: dict[str, Any] = {"name": lname, "trainable": config.get("trainable", True)}
    if cls == "Concatenate":
        new["axis"] = config.get("concat_axis", -1)
    if cls == "Dot":
        axes = config.get("dot_axes", -1)
        new["axes"] = axes
        new["normalize"] = mode == "cos"
        if mode == "cos":
            ctx.problems.append(Problem("incompatible", lname, "Keras 1 Merge mode 'cos' has a different "
                                        "output shape than Keras 3's Dot(normalize=True)"))
    ctx.change(f"`{lname}`: Keras 1 Merge(mode={mode!r}) -> {cls}")
    return {"module": "keras.layers", "class_name": cls, "config": new, "registered_name": None}


def _keras1_args(cls: str, config: dict[str, Any], lname: str, ctx: _Context) -> dict[str, Any]:
    renames = K1_ARGS.get(cls, {})
    converted = []
    for old, new in renames.items():
        if old in config and new not in config:
            value = config.pop(old)
            if old == "dim_ordering":
                value = _DIM_ORDERING.get(value, value)
            if old == "filter_length" and isinstance(value, int):
                value = [value]
            if old in ("subsample_length", "pool_length", "stride", "atrous_rate") and isinstance(value, int):
                value = [value] if cls.endswith("1D") else value
            config[new] = value
            converted.append(old)
        elif old in config and new in config and old != new:
            config.pop(old)
    if "nb_row" in config and "nb_col" in config and "kernel_size" not in config:
        config["kernel_size"] = [config.pop("nb_row"), config.pop("nb_col")]
        if "nb_dim" in config:
            config["kernel_size"].insert(0, config.pop("nb_dim"))
        converted.append("nb_row/nb_col")
    if cls == "Conv3D" and {"kernel_dim1", "kernel_dim2", "kernel_dim3"} <= config.keys():
        config["kernel_size"] = [config.pop("kernel_dim1"), config.pop("kernel_dim2"), config.pop("kernel_dim3")]
        converted.append("kernel_dim1/2/3")
    if cls in ("GRU", "LSTM", "SimpleRNN"):
        if "forget_bias_init" in config:
            fbi = config.pop("forget_bias_init")
            config.setdefault("unit_forget_bias", fbi == "one")
            converted.append("forget_bias_init")
        if "consume_less" in config:
            config["implementation"] = 2 if config.pop("consume_less") == "gpu" else 1
            converted.append("consume_less")
        if ctx.keras1 and cls == "GRU":
            config.setdefault("reset_after", False)
    if cls == "Conv2DTranspose" and "output_shape" in config:
        config.pop("output_shape")
        converted.append("output_shape")
    if cls == "SeparableConv2D" and "depthwise_initializer" in config and "pointwise_initializer" not in config:
        config["pointwise_initializer"] = config["depthwise_initializer"]
    if cls == "BatchNormalization" and "mode" in config:
        mode = config.pop("mode")
        if mode not in (0, None):
            ctx.problems.append(Problem("incompatible", lname, f"Keras 1 BatchNormalization mode={mode} "
                                        "(only mode 0 exists in Keras 2 and 3)"))
        converted.append("mode")
    if cls == "Embedding" and "dropout" in config:
        config.pop("dropout")
        converted.append("dropout")
    if converted:
        ctx.change(f"`{lname}`: Keras 1 arguments {', '.join(converted)} renamed")
        if ctx.keras1 or cls in ("Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "GRU", "LSTM", "SimpleRNN"):
            ctx.weight_conversions.setdefault(lname, {})["keras1"] = True
    return config


def _common_args(cls: str, config: dict[str, Any], lname: str, ctx: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if cls == "InputLayer":
            if key == "batch_input_shape":
                out["batch_shape"] = value
                continue
            if key == "input_dtype":
                out["dtype"] = value
                continue
        elif key in _INPUT_ARGS and not (cls == "Embedding" and key == "input_dim"):
            continue  # the InputLayer (or the Sequential's first-layer rule) carries the input
        if key == "dtype":
            out[key] = _dtype(value)
            continue
        if isinstance(value, dict) or isinstance(value, str) or value is None:
            if key.endswith("_initializer"):
                out[key] = _initializer(value, lname, ctx)
                continue
            if key.endswith("_regularizer"):
                out[key] = _regularizer(value, lname, ctx)
                continue
            if key.endswith("_constraint"):
                out[key] = _constraint(value, lname, ctx)
                continue
        if key == "data_format" and value in _DIM_ORDERING:
            value = _DIM_ORDERING[value]
        out[key] = value
    return out


def _class_args(old_class: str, cls: str, config: dict[str, Any], lname: str, ctx: _Context) -> dict[str, Any]:
    if cls in RNN_CLASSES - {"Bidirectional"}:
        if "time_major" in config:
            if config.pop("time_major"):
                ctx.problems.append(Problem("incompatible", lname, "time_major=True RNN (Keras 3 has only "
                                            "batch-major RNNs)"))
            else:
                ctx.change(f"`{lname}`: time_major=False dropped (Keras 3 default)")
        if cls == "GRU" and "reset_after" not in config:
            config["reset_after"] = False
            ctx.change(f"`{lname}`: GRU without reset_after gets reset_after=False (the Keras 2.1 default)")
        if config.get("implementation") not in (None, 1, 2):
            config["implementation"] = 1
    if old_class == "CuDNNLSTM":
        config.update({"activation": "tanh", "recurrent_activation": "sigmoid", "unit_forget_bias":
                       config.get("unit_forget_bias", True)})
        ctx.weight_conversions.setdefault(lname, {})["cudnn"] = "lstm"
    if old_class == "CuDNNGRU":
        config.update({"activation": "tanh", "recurrent_activation": "sigmoid", "reset_after": True})
        ctx.weight_conversions.setdefault(lname, {})["cudnn"] = "gru"
    if old_class == "ThresholdedReLU":
        theta = config.pop("theta", 1.0)
        if theta is None or theta < 0:
            ctx.problems.append(Problem("incompatible", lname, f"ThresholdedReLU theta={theta!r} < 0"))
            theta = 0.0
        # ThresholdedReLU(x) = x if x > theta else 0 == ReLU(threshold=theta), negative_slope 0
        config.update({"threshold": float(theta), "negative_slope": 0.0, "max_value": None})
        ctx.change(f"`{lname}`: ThresholdedReLU(theta={theta}) -> ReLU(threshold={theta})")
    if cls == "LeakyReLU" and "alpha" in config and "negative_slope" not in config:
        config["negative_slope"] = config.pop("alpha")
    if cls == "BatchNormalization":
        for key in ("fused", "adjustment"):
            config.pop(key, None)
        if config.get("virtual_batch_size") is not None:
            ctx.problems.append(Problem("incompatible", lname, "BatchNormalization virtual_batch_size "
                                        "(ghost batch norm) does not exist in Keras 3"))
        config.pop("virtual_batch_size", None)
        for key in ("renorm", "renorm_clipping", "renorm_momentum"):
            if key in config:
                if key == "renorm" and config[key]:
                    ctx.problems.append(Problem("incompatible", lname, "BatchNormalization renorm=True "
                                                "does not exist in Keras 3"))
                config.pop(key)
    if cls == "Flatten" and "data_format" not in config:
        # Keras 1 flattened the tensor as it is; Keras 3's default follows the user's keras.json
        config["data_format"] = "channels_last"
    if cls == "Embedding" and "input_length" in config:
        config.pop("input_length")
    if cls in ("Dense", "Conv1D", "Conv2D", "Conv3D") and config.get("activation") is None:
        config.pop("activation", None)
    if "/" in lname:
        ctx.problems.append(Problem("incompatible", lname, "layer name contains '/', "
                                    "which Keras 3 does not allow"))
    return config


def _dtype(value: Any) -> Any:
    if isinstance(value, dict):  # tf.keras Policy / Keras 3 DTypePolicy
        inner = value.get("config") or {}
        name = inner.get("name")
        return name if isinstance(name, str) else "float32"
    return value


def _initializer(value: Any, lname: str, ctx: _Context) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return _K1_INITIALIZERS.get(value, value)
    cls = value.get("class_name")
    inner = dict(value.get("config") or {})
    if "dtype" in inner:
        inner.pop("dtype")
        ctx.change(f"`{lname}`: initializer dtype argument dropped")
    cls = _INITIALIZER_RENAMES.get(cls, cls)
    if cls not in _INITIALIZER_CLASSES:
        ctx.problems.append(Problem("code", lname, f"custom initializer `{cls}`", custom_class=_registered_name(value, cls)))
        return value
    if cls in ("Orthogonal", "OrthogonalInitializer"):
        cls = "OrthogonalInitializer"
    if cls in ("Identity", "IdentityInitializer"):
        cls = "IdentityInitializer"
    return {"module": "keras.initializers", "class_name": cls, "config": inner, "registered_name": None}


def _registered_name(value: dict[str, Any], cls: Any) -> str:
    """The name Keras's registry knows a custom object by (`package>Class` in Keras 3 configs)."""
    return str(value.get("registered_name") or cls)


def _regularizer(value: Any, lname: str, ctx: _Context) -> Any:
    if value is None or isinstance(value, str):
        return value
    cls = value.get("class_name") or value.get("name")
    inner = dict(value.get("config") or {k: v for k, v in value.items() if k != "name"})
    if cls in ("L1L2Regularizer", "WeightRegularizer"):  # Keras 1
        cls = "L1L2"
    if cls not in _REGULARIZER_CLASSES:
        ctx.problems.append(Problem("code", lname, f"custom regularizer `{cls}`", custom_class=_registered_name(value, cls)))
        return value
    inner = {k: float(v) for k, v in inner.items() if k in ("l1", "l2", "factor", "mode")} if cls != \
        "OrthogonalRegularizer" else inner
    return {"module": "keras.regularizers", "class_name": cls, "config": inner, "registered_name": None}


def _constraint(value: Any, lname: str, ctx: _Context) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return _CONSTRAINT_RENAMES.get(value, value).lower() if value in _CONSTRAINT_RENAMES else value
    cls = value.get("class_name") or value.get("name")
    inner = dict(value.get("config") or {k: v for k, v in value.items() if k != "name"})
    cls = _CONSTRAINT_RENAMES.get(cls, cls)
    if cls == "MaxNorm" and "m" in inner:  # Keras 1
        inner["max_value"] = inner.pop("m")
    if cls not in _CONSTRAINT_CLASSES:
        ctx.problems.append(Problem("code", lname, f"custom constraint `{cls}`", custom_class=_registered_name(value, cls)))
        return value
    return {"module": "keras.constraints", "class_name": cls, "config": inner, "registered_name": None}


# Optimizer arguments of Keras 2 / tf.keras that Keras 3 refuses but that change nothing.
_OPTIMIZER_DROPPED = ("jit_compile", "is_legacy_optimizer")


def translate_training_config(training_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keras 3 `compile()` arguments from an old `training_config`, or None when they cannot be
    expressed exactly (a custom loss or optimizer, a learning-rate `decay`)."""
    if not isinstance(training_config, dict):
        return None
    opt = training_config.get("optimizer_config")
    if not isinstance(opt, dict) or not isinstance(opt.get("class_name"), str):
        return None
    cls = opt["class_name"].split(">")[-1]  # tf.keras 2.11 wrote "Custom>Adam"
    config = dict(opt.get("config") or {})
    if "lr" in config:
        config.setdefault("learning_rate", config.pop("lr"))
        config.pop("lr", None)
    if config.get("decay"):
        return None  # Keras 3 has no per-step decay argument: a schedule would be needed
    config.pop("decay", None)
    for key in _OPTIMIZER_DROPPED:
        config.pop(key, None)
    if isinstance(config.get("learning_rate"), dict):
        return None  # a schedule object: leave it to the user
    loss = training_config.get("loss")

    def plain(value: Any) -> bool:
        if value is None or isinstance(value, str):
            return True
        if isinstance(value, list):
            return all(plain(v) for v in value)
        if isinstance(value, dict):
            return "class_name" not in value and all(plain(v) for v in value.values())
        return False

    metrics = training_config.get("metrics")
    if not plain(loss) or not plain(metrics) or not loss:
        return None
    return {
        "optimizer": {"module": "keras.optimizers", "class_name": cls, "config": config, "registered_name": None},
        "loss": loss,
        "metrics": metrics or None,
        "loss_weights": training_config.get("loss_weights"),
    }


def keras_version_of(attrs_version: Any) -> str | None:
    """Normalise a `keras_version` attribute (bytes or str) to str."""
    if attrs_version is None:
        return None
    if isinstance(attrs_version, bytes):
        return attrs_version.decode("utf-8", "replace")
    return str(attrs_version)


__all__ = ["Problem", "Translation", "TranslationError", "translate", "SAFE_LAYERS", "keras_version_of"]

