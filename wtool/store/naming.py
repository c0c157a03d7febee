"""Canonical weight names: Keras's own variable names, whatever the file layout.

Keras 3 files store a layer's variables by index (`vars/0`, `vars/1`, ...): the
names come from the layer class (and its config flags, such as `use_bias`).
Legacy files store names like `dense_1/kernel:0`, `model_1/dense_1/kernel:0`,
`sequential/lstm/lstm_cell/kernel` or Keras 1's `dense_1_W`: they are cleaned
to the same names Keras 3 uses for the same model.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

Part = str | tuple[str, bool, str]  # a name, or (config flag, default, name present when the flag is true)


def to_snake_case(name: str) -> str:
    """Keras's own class-name -> group-name rule (keras.src.utils.naming.to_snake_case)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _variants(parts: Sequence[Part], config: dict[str, Any] | None) -> list[list[str]]:
    flags = [p for p in parts if isinstance(p, tuple)]
    if config is not None:
        return [[p if isinstance(p, str) else p[2] for p in parts
                 if isinstance(p, str) or bool(config.get(p[0], p[1]))]]
    out = []
    for values in itertools.product([True, False], repeat=len(flags)):
        chosen = dict(zip([f[0] for f in flags], values, strict=True))
        out.append([p if isinstance(p, str) else p[2] for p in parts if isinstance(p, str) or chosen[p[0]]])
    return out


def _rule(*parts: Part) -> Callable[[dict[str, Any] | None], list[list[str]]]:
    return lambda config: _variants(parts, config)


_KERNEL_BIAS = _rule("kernel", ("use_bias", True, "bias"))
_RNN_CELL = _rule("kernel", "recurrent_kernel", ("use_bias", True, "bias"))


def _einsum(config: dict[str, Any] | None) -> list[list[str]]:
    if config is None:
        return [["kernel", "bias"], ["kernel"]]
    return [["kernel", "bias"] if config.get("bias_axes") else ["kernel"]]


def _attention(config: dict[str, Any] | None) -> list[list[str]]:
    if config is None:
        return [["scale", "concat_score_weight"], ["scale"], ["concat_score_weight"], []]
    names = ["scale"] if config.get("use_scale") else []
    if config.get("score_mode") == "concat":
        names.append("concat_score_weight")
    return [names]


# Keras 3 variable order per class (trainable first, then non-trainable, as save_own_variables writes).
VAR_RULES: dict[str, Callable[[dict[str, Any] | None], list[list[str]]]] = {
    "Dense": _KERNEL_BIAS,
    "EinsumDense": _einsum,
    **{c: _KERNEL_BIAS for c in (
        "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        "Convolution1D", "Convolution2D", "Convolution3D", "Convolution2DTranspose", "Convolution3DTranspose",
        "Deconvolution2D", "Deconvolution3D", "DepthwiseConv1D", "DepthwiseConv2D", "LocallyConnected1D",
        "LocallyConnected2D")},
    **{c: _rule("depthwise_kernel", "pointwise_kernel", ("use_bias", True, "bias")) for c in (
        "SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D")},
    "BatchNormalization": _rule(("scale", True, "gamma"), ("center", True, "beta"), "moving_mean", "moving_variance"),
    "LayerNormalization": _rule(("scale", True, "gamma"), ("center", True, "beta")),
    "GroupNormalization": _rule(("scale", True, "gamma"), ("center", True, "beta")),
    "RMSNormalization": _rule("scale"),
    "Normalization": _rule("mean", "variance", "count"),
    "Embedding": _rule("embeddings"),
    "PReLU": _rule("alpha"),
    "LSTMCell": _RNN_CELL,
    "GRUCell": _RNN_CELL,
    "SimpleRNNCell": _RNN_CELL,
    "ConvLSTMCell": _RNN_CELL,
    "Attention": _attention,
    "AdditiveAttention": _rule(("use_scale", True, "scale")),
    "LayerScale": _rule("variable"),  # keras.applications.convnext: one unnamed weight, Keras calls it `variable`
}

def _reversible_embedding(config: dict[str, Any] | None) -> list[list[str]]:
    if config is None:
        return [["embeddings", "reverse_embeddings"], ["embeddings"]]
    return [["embeddings"] if config.get("tie_weights", True) else ["embeddings", "reverse_embeddings"]]


VAR_RULES["ReversibleEmbedding"] = _reversible_embedding

# ---- quantized layers (Keras 3.15 `variable_serialization_spec`, in save order) ---------------

_DENSE_SPEC = {
    "int8": ["kernel", "bias", "kernel_scale"],
    "int4": ["kernel", "bias", "kernel_scale", "kernel_zero", "g_idx"],
    "float8": ["kernel", "bias", "inputs_scale", "inputs_amax_history", "kernel_scale", "kernel_amax_history",
               "outputs_grad_scale", "outputs_grad_amax_history"],
    "gptq": ["bias", "kernel", "kernel_scale", "kernel_zero", "g_idx"],  # `quantized_kernel`, a variable named kernel
    "awq": ["bias", "kernel", "kernel_scale", "kernel_zero", "awq_scales", "g_idx"],
}
_EMBEDDING_SPEC = {
    "int8": ["embeddings", "embeddings_scale"],
    "int4": ["embeddings", "embeddings_scale", "embeddings_zero", "g_idx"],
}
_REVERSE_EXTRA = {"int8": ["reverse_embeddings", "reverse_embeddings_scale"],
                  "int4": ["reverse_embeddings", "reverse_embeddings_scale", "reverse_embeddings_zero"]}
QUANTIZED_CLASSES = frozenset({"Dense", "EinsumDense", "Embedding", "ReversibleEmbedding"})
# Saved only when they exist: sub-channel int4 zero points and group indices (Keras skips them otherwise).
_OPTIONAL_DROPS: tuple[tuple[str, ...], ...] = (
    (), ("kernel_zero", "g_idx"), ("embeddings_zero", "g_idx", "reverse_embeddings_zero"), ("kernel_zero",),
    ("g_idx",))
# Variables Keras trains in a quantized layer (float8 keeps a float kernel and learns its scales).
QUANT_TRAINABLE = {"float8": frozenset(_DENSE_SPEC["float8"])}


def quantization_mode(config: dict[str, Any] | None) -> str | None:
    """The dtype policy's quantization mode (`int8`, `int4/128`, `float8`, `gptq/4/128`...), if any."""
    dtype = (config or {}).get("dtype")
    inner = dtype.get("config") if isinstance(dtype, dict) else None
    mode = inner.get("mode") if isinstance(inner, dict) else None
    return mode if isinstance(mode, str) and mode else None


def base_mode(mode: str) -> str:
    """`int4/128` -> `int4`: the spec key of a mode string."""
    return mode.split("/", 1)[0]


def _quant_spec(class_name: str, config: dict[str, Any], mode: str) -> list[str] | None:
    if class_name in ("Dense", "EinsumDense"):
        spec = _DENSE_SPEC.get(mode)
        if spec is None:
            return None
        has_bias = config.get("use_bias", True) if class_name == "Dense" else bool(config.get("bias_axes"))
        return [n for n in spec if n != "bias" or has_bias]
    spec = _EMBEDDING_SPEC.get(mode)
    if spec is None:
        return None
    if class_name == "ReversibleEmbedding" and not config.get("tie_weights", True):
        spec = spec + _REVERSE_EXTRA[mode]
    return list(spec)


def quantized_var_names(class_name: str | None, config: dict[str, Any] | None, n: int) -> list[str] | None:
    """Names of a quantized layer's `n` saved variables, from its dtype policy; None if not quantized."""
    mode = quantization_mode(config)
    if mode is None or class_name not in QUANTIZED_CLASSES or config is None:
        return None
    spec = _quant_spec(class_name, config, base_mode(mode))
    if spec is None:
        return None
    for drop in _OPTIONAL_DROPS:
        names = [v for v in spec if v not in drop]
        if len(names) == n:
            return names
    return None


def quantized_trainable(mode: str | None, var: str) -> bool:
    """Whether Keras trains this variable of a quantized layer (int8/int4 freeze all but the bias)."""
    if mode is None:
        return True
    return var == "bias" or var in QUANT_TRAINABLE.get(base_mode(mode), frozenset())


# RNN layers keep their variables in a `cell` sub-object: the cell level is not part of the path.
RNN_CELLS = {
    "LSTM": "LSTMCell", "GRU": "GRUCell", "SimpleRNN": "SimpleRNNCell",
    "ConvLSTM1D": "ConvLSTMCell", "ConvLSTM2D": "ConvLSTMCell", "ConvLSTM3D": "ConvLSTMCell",
    "CuDNNLSTM": "LSTMCell", "CuDNNGRU": "GRUCell",
}
# Multi-head attention sub-layers: attribute in the Keras 3 file -> sub-layer name.
MHA_SUBLAYERS = {
    "query_dense": "query", "key_dense": "key", "value_dense": "value", "output_dense": "attention_output",
    "_query_dense": "query", "_key_dense": "key", "_value_dense": "value", "_output_dense": "attention_output",
}
NON_TRAINABLE = {"moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev",
                 "mean", "variance", "count", "running_mean", "running_std"}
# Keras classes without weights, so a group name can be mapped back to its class.
_OTHER_CLASSES = (
    "InputLayer", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "Flatten", "Reshape", "Permute", "RepeatVector", "Activation", "ReLU",
    "LeakyReLU", "ELU", "Softmax", "ThresholdedReLU", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Concatenate", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Minimum", "Dot", "Lambda", "Masking", "Rescaling", "Resizing", "UnitNormalization",
    "ActivityRegularization", "Identity", "Functional", "Sequential", "TimeDistributed", "Bidirectional",
    "MultiHeadAttention", "LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "RNN",
)
SNAKE_TO_CLASS = {to_snake_case(c): c for c in (*VAR_RULES, *_OTHER_CLASSES)}


def class_from_group(group_name: str) -> str | None:
    """Guess a Keras 3 layer class from its group name (`conv2d_3` -> Conv2D)."""
    if group_name in SNAKE_TO_CLASS:
        return SNAKE_TO_CLASS[group_name]
    base = re.sub(r"_\d+$", "", group_name)
    return SNAKE_TO_CLASS.get(base)


def keras3_var_names(class_name: str | None, config: dict[str, Any] | None, n: int) -> list[str] | None:
    """Names of a layer's `n` saved variables, or None when the class (or the count) is not known."""
    quantized = quantized_var_names(class_name, config, n)
    if quantized is not None:
        return quantized
    rule = VAR_RULES.get(class_name or "")
    if rule is None:
        return None
    candidates = [v for v in rule(config) if len(v) == n]
    if config is not None and not candidates:
        candidates = [v for v in rule(None) if len(v) == n]
    if not candidates or any(c != candidates[0] for c in candidates):
        return None
    return candidates[0]


def guess_kernel_bias(shapes: Sequence[tuple[int, ...]]) -> list[str] | None:
    """For a layer of unknown class (weights-only file): a (.., n) array then an (n,) array is kernel, bias."""
    if len(shapes) == 2 and len(shapes[0]) >= 2 and len(shapes[1]) == 1 and shapes[0][-1] == shapes[1][0]:
        return ["kernel", "bias"]
    return None


# ---- legacy names ---------------------------------------------------------------------------

_CELL_SEGMENT = re.compile(
    r"^(lstm|gru|simple_rnn|conv_lstm|conv_lstm[123]d|peephole_lstm|cu_dnnlstm|cu_dnngru)_cell(_\d+)?$")
_INDEX_SUFFIX = re.compile(r":\d+$")
# Keras 1 named weights `<layer>_<suffix>`.
KERAS1_SUFFIXES = {
    "W": "kernel", "b": "bias", "U": "recurrent_kernel", "gamma": "gamma", "beta": "beta",
    "running_mean": "moving_mean", "running_std": "moving_variance", "alphas": "alpha",
    "depthwise_kernel": "depthwise_kernel", "pointwise_kernel": "pointwise_kernel",
    **{f"{w}_{g}": f"{n}_{g}" for w, n in (("W", "kernel"), ("U", "recurrent_kernel"), ("b", "bias"))
       for g in ("i", "f", "c", "o", "z", "r", "h")},
}
# Variables Keras renamed since the file was written (legacy name -> Keras 3 name), by class.
LEGACY_RENAMES = {
    "DepthwiseConv1D": {"depthwise_kernel": "kernel"},
    "DepthwiseConv2D": {"depthwise_kernel": "kernel"},
    "Embedding": {"kernel": "embeddings"},
}
KNOWN_VAR_NAMES = {n for rule in VAR_RULES.values() for v in rule(None) for n in v} | set(KERAS1_SUFFIXES.values())


def strip_index(name: str) -> str:
    return _INDEX_SUFFIX.sub("", name)


def legacy_relative_name(layer_name: str, weight_name: str, *, layer_is_model: bool = False) -> str:
    """The part of a legacy weight name below its layer: `model/dense_1/kernel:0` -> `kernel`."""
    name = strip_index(weight_name)
    if name.startswith(layer_name + "/"):
        return name[len(layer_name) + 1:]
    marker = "/" + layer_name + "/"
    if marker in name:  # Keras 3 legacy .h5 writes variable paths: `sequential_1/embedding_1/embeddings`
        return name.split(marker, 1)[1]
    first, _, rest = name.partition("/")
    if rest and not layer_is_model and re.fullmatch(re.escape(layer_name) + r"_\d+", first):
        return rest  # name-scope de-duplication: `dense_21_3/kernel` in layer `dense_21`
    if name.startswith(layer_name + "_") and "/" not in name[len(layer_name) + 1:]:
        suffix = name[len(layer_name) + 1:]
        if suffix in KERAS1_SUFFIXES:
            return KERAS1_SUFFIXES[suffix]
    return name


def clean_relative(rel: str, class_name: str | None = None) -> str:
    """Drop RNN cell levels (`lstm_cell/kernel` -> `kernel`) and apply Keras's renames for the class."""
    parts = rel.split("/")
    parts = [p for i, p in enumerate(parts) if i == len(parts) - 1 or not _CELL_SEGMENT.match(p)]
    if class_name == "TimeDistributed" and len(parts) == 2:
        parts = parts[1:]  # Keras 3 writes `td/dense/kernel`; the wrapped layer is transparent
    renames = LEGACY_RENAMES.get(class_name or "", {})
    if parts and parts[-1] in renames:
        parts[-1] = renames[parts[-1]]
    if parts:
        parts[-1] = stable_var_name(parts[-1], class_name)
    return "/".join(parts)


_AUTO_NUMBERED = re.compile(r"variable_\d+")


def stable_var_name(name: str, class_name: str | None) -> str:
    """A variable Keras names itself (`variable_12`: a session-wide counter) as `variable`, so a path
    is the same in every file and session. Only for layers known to own one such unnamed weight."""
    if class_name in AUTO_NAMED_CLASSES and _AUTO_NUMBERED.fullmatch(name):
        return "variable"
    return name


AUTO_NAMED_CLASSES = frozenset({"LayerScale"})


# ---- names inside a layer, whatever wrote them -----------------------------------------------

# Keras 1 and tf.keras variable names -> Keras 3 names, to pair weights inside a layer.
LEGACY_VAR_NAMES = {"W": "kernel", "b": "bias", "U": "recurrent_kernel", "running_mean": "moving_mean",
                    "running_std": "moving_variance", "W_i": "kernel_i", "depthwise_W": "depthwise_kernel",
                    "pointwise_W": "pointwise_kernel"}


def normalize_var(layer_path: str, name: str) -> str:
    """The variable part of a weight name, cleaned of `:0`, layer prefixes and Keras 1 names."""
    v = name.split(":")[0].rsplit("/", 1)[-1]
    layer = layer_path.rsplit("/", 1)[-1]
    if v.startswith(layer + "_"):
        v = v[len(layer) + 1 :]
    return LEGACY_VAR_NAMES.get(v, v)


def clean_key(key: str) -> str:
    """An array key as a weight path: no surrounding slashes, no TensorFlow `:0` suffix."""
    key = key.strip("/")
    return key[:-2] if key.endswith(":0") else key
