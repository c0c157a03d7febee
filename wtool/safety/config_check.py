"""Model configs checked as data, before Keras sees them.

Two steps, both pure Python (no Keras, no TensorFlow):

- `parse_config_json(data, source)` (wtool.safety.safejson): JSON with caps on size, nesting depth
  and the number of values, and no duplicate keys. Malformed or over a cap -> InputError (exit 3).
- `check_config(config, source, unsafe=...)`: walks every serialized object in the
  config. A class is accepted only if it is on an allowlist of Keras's own modeling
  classes (layers, initializers, regularizers, constraints, optimizers, losses, metrics,
  dtype policies); a function reference only if it names a Keras activation, loss or
  metric. Refused with UnsafeError (exit 5) unless `unsafe`: Lambda layers (bytecode or
  function references), `__lambda__` values, TFSMLayer, TorchModuleWrapper, JAX/Flax
  wrappers, TF op layers, any `module` outside Keras, registered or unknown custom
  objects, lookup vocabularies given as a file path. It also counts the layers and
  computes the number of parameters the graph will allocate from the config alone
  (shapes propagated through the graph), so a 65536x65536 Dense is refused (exit 3,
  `--max-params`) before anything is built.

With `unsafe=True` nothing code-related is refused; the report lists what was allowed so
the command can say so. The size limits are not relaxed by `unsafe`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wtool.errors import InputError, UnsafeError
from wtool.safety import limits as _limits
from wtool.safety.keras_ops import APPLICATION_LAYERS, OP_MODULES
from wtool.safety.limits import Limits, fmt_count, shown
from wtool.safety.safejson import check_json_shape, parse_config_json

# ---------------------------------------------------------------------------------------------
# allowlists (Keras 3.15 public modeling classes, plus names older files use)

LAYER_CLASSES = frozenset("""
    Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D
    AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add
    AdditiveAttention AlphaDropout Attention AugMix AutoContrast Average AveragePooling1D
    AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization Bidirectional
    CategoryEncoding CenterCrop Concatenate ContrastLimitedAdaptiveHistogramEqualization Conv1D
    Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D
    Convolution1D Convolution1DTranspose Convolution2D Convolution2DTranspose Convolution3D
    Convolution3DTranspose Cropping1D Cropping2D Cropping3D CutMix Dense DepthwiseConv1D
    DepthwiseConv2D Discretization Dot Dropout ELU EinsumDense Embedding Equalization Flatten GRU
    GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D
    GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D GlobalMaxPool1D
    GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D
    GroupNormalization GroupQueryAttention HashedCrossing Hashing Identity InputLayer IntegerLookup
    LSTM LSTMCell LayerNormalization LeakyReLU Masking MaxNumBoundingBoxes MaxPool1D MaxPool2D
    MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D Maximum MelSpectrogram Minimum MixUp
    MultiHeadAttention Multiply Normalization PReLU Permute Pipeline RMSNormalization RNN RandAugment
    RandomBrightness RandomColorDegeneration RandomColorJitter RandomContrast RandomCrop
    RandomElasticTransform RandomErasing RandomFlip RandomGaussianBlur RandomGrayscale RandomHue
    RandomInvert RandomPerspective RandomPosterization RandomRotation RandomSaturation
    RandomSharpness RandomShear RandomTranslation RandomZoom ReLU RepeatVector Rescaling Reshape
    Resizing ReversibleEmbedding STFTSpectrogram SeparableConv1D SeparableConv2D
    SeparableConvolution1D SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax Solarization
    SpatialDropout1D SpatialDropout2D SpatialDropout3D SpectralNormalization StackedRNNCells
    StringLookup Subtract TextVectorization TimeDistributed UnitNormalization UpSampling1D
    UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
""".split())
# Keras 1/2 and tf.keras names that wtool.graph.legacy_config translates (still only Keras's own layers).
LEGACY_LAYER_CLASSES = frozenset("""
    AtrousConvolution1D AtrousConvolution2D Deconvolution2D Deconvolution3D CuDNNLSTM CuDNNGRU
    ThresholdedReLU LocallyConnected1D LocallyConnected2D Merge MaxoutDense Highway
    TimeDistributedDense
""".split())
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
OTHER_CLASSES = frozenset("""
    Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer LecunNormal
    LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal RandomUniform STFT STFTInitializer
    TruncatedNormal VarianceScaling Zeros Zero One
    L1 L1L2 L2 OrthogonalRegularizer
    MaxNorm MinMaxNorm NonNeg UnitNorm
    Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion LossScaleOptimizer Muon Nadam
    RMSprop SGD ScheduleFreeAdamW
    CosineDecay CosineDecayRestarts ExponentialDecay InverseTimeDecay PiecewiseConstantDecay
    PolynomialDecay
    BinaryCrossentropy BinaryFocalCrossentropy CTC CategoricalCrossentropy
    CategoricalFocalCrossentropy CategoricalGeneralizedCrossEntropy CategoricalHinge Circle
    CosineSimilarity Dice Hinge Huber KLDivergence LogCosh MeanAbsoluteError
    MeanAbsolutePercentageError MeanSquaredError MeanSquaredLogarithmicError Poisson
    SparseCategoricalCrossentropy SquaredHinge Tversky
    AUC Accuracy BinaryAccuracy BinaryIoU CategoricalAccuracy ConcordanceCorrelation F1Score
    FBetaScore FalseNegatives FalsePositives IoU LogCoshError Mean MeanIoU MeanMetricWrapper OneHotIoU
    OneHotMeanIoU PearsonCorrelation Precision PrecisionAtRecall R2Score Recall RecallAtPrecision
    RootMeanSquaredError SensitivityAtSpecificity SparseCategoricalAccuracy SparseTopKCategoricalAccuracy
    SpecificityAtSensitivity Sum TopKCategoricalAccuracy TrueNegatives TruePositives
    AWQDTypePolicy DTypePolicy DTypePolicyMap FloatDTypePolicy GPTQDTypePolicy Int4DTypePolicy
    QuantizedDTypePolicy QuantizedFloat8DTypePolicy Policy
    Float8QuantizationConfig Int4QuantizationConfig Int8QuantizationConfig AbsMaxQuantizer
""".split())
# Serialization markers that only carry data.
DATA_MARKERS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__",
                          "__slice__", "__tuple__"})
# Function names a config may reference: Keras activations, losses and metrics.
ALLOWED_FUNCTIONS = frozenset("""
    celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh leaky_relu
    linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink softmax softplus
    softsign sparse_plus sparse_sigmoid sparsemax squareplus swish tanh tanh_shrink threshold
    binary_crossentropy binary_focal_crossentropy categorical_crossentropy categorical_focal_crossentropy
    categorical_generalized_cross_entropy categorical_hinge circle cosine_similarity ctc dice hinge huber
    kl_divergence log_cosh mean_absolute_error mean_absolute_percentage_error mean_squared_error
    mean_squared_logarithmic_error poisson sparse_categorical_crossentropy squared_hinge tversky
    binary_accuracy categorical_accuracy concordance_correlation pearson_correlation
    sparse_categorical_accuracy sparse_top_k_categorical_accuracy top_k_categorical_accuracy
    accuracy mse mae mape msle kld kullback_leibler_divergence logcosh
""".split())
FUNCTION_MODULES = frozenset({"builtins", "keras.activations", "keras.losses", "keras.metrics",
                              "keras.src.activations.activations", "keras.src.losses.losses",
                              "keras.src.metrics"})
# Classes people meet that need code or outside state; named so the message says why.
CODE_CLASSES = {
    "Lambda": "a Lambda layer runs Python code stored in the file",
    "TFSMLayer": "a TFSMLayer loads a TensorFlow SavedModel from a path named in the file",
    "TorchModuleWrapper": "a TorchModuleWrapper unpickles a PyTorch module (arbitrary code)",
    "JaxLayer": "a JaxLayer wraps Python functions",
    "FlaxLayer": "a FlaxLayer wraps a Python module",
    "TFOpLambda": "a TFOpLambda layer calls a TensorFlow function named in the file",
    "SlicingOpLambda": "a SlicingOpLambda layer calls a TensorFlow function named in the file",
    "TensorFlowOpLayer": "a TensorFlowOpLayer runs TensorFlow ops named in the file",
    "__lambda__": "a Python lambda (bytecode) stored in the file",
    "__typespec__": "a TensorFlow type spec that imports a class named in the file",
}
VOCABULARY_LAYERS = frozenset({"StringLookup", "IntegerLookup", "TextVectorization"})
_MERGE_MODES = frozenset({"sum", "mul", "concat", "ave", "cos", "dot", "max"})
_WRAPPER_KEYS = ("layer", "backward_layer", "forward_layer", "cell", "cells")


@dataclass
class Finding:
    """One thing in a config that needs code or outside state."""

    where: str
    layer: str  # the layer's name, "" for the model itself
    why: str


@dataclass
class ConfigReport:
    """What check_config found: sizes, and what --unsafe allowed."""

    n_layers: int = 0
    n_params: int = 0
    unsized_layers: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    allowed: list[Finding] = field(default_factory=list)

    def allowed_lines(self) -> list[str]:
        """One line per thing --unsafe let through (for the command's warning)."""
        return [f"{f.where}: {f.why}" for f in self.allowed]


# ---------------------------------------------------------------------------------------------
# the walk


def _is_keras_module(module: Any) -> bool:
    return module is None or (isinstance(module, str) and (module == "keras" or module.startswith("keras.")))


def _name_of(obj: dict[str, Any]) -> str:
    cfg = obj.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
        return cfg["name"]
    if isinstance(obj.get("name"), str):
        return obj["name"]
    return str(obj.get("class_name"))


def _objects(config: Any) -> Iterable[tuple[dict[str, Any], str]]:
    """Every serialized object (a dict with a class_name) in the config, with the layer it sits in."""
    stack: list[tuple[Any, str]] = [(config, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item:
                cls = item.get("class_name")
                cfg = item.get("config")
                if isinstance(cls, str) and not cls.startswith("__") and cls != "function" \
                        and cls not in OTHER_CLASSES and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
                    where = cfg["name"]  # a layer or model (known or not): name it in messages
                yield item, where
            stack.extend((v, where) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, where) for v in item)


def _hub_class(module: Any, registered: Any) -> bool:
    """A keras-hub class (`keras_hub.src...`, registered `keras_hub>Name`): installed package code, not the file's."""
    return isinstance(module, str) and (module == "keras_hub" or module.startswith("keras_hub.")) \
        and isinstance(registered, str) and registered.startswith("keras_hub>")


def _findings(config: Any, report: ConfigReport, allow_hub: bool = False) -> list[Finding]:
    found: list[Finding] = []
    for obj, where in _objects(config):
        cls = obj.get("class_name")
        label = f"layer {shown(where)}" if where else "model"
        if not isinstance(cls, str):
            raise InputError(f"a serialized object in {label} has a non-text class_name")
        report.classes.add(cls)
        module = obj.get("module")
        registered = obj.get("registered_name")
        if cls in CODE_CLASSES:
            found.append(Finding(label, where, CODE_CLASSES[cls]))
            continue
        if cls == "function":
            fname = obj.get("config")
            ok_module = module is None or module in FUNCTION_MODULES
            ok_name = isinstance(fname, str) and fname in ALLOWED_FUNCTIONS
            ok_registered = registered in (None, fname)
            if not (ok_module and ok_name and ok_registered):
                ref = f"{module}.{fname}" if module not in (None, "builtins") else str(fname)
                found.append(Finding(label, where, f"a reference to the function {shown(ref)} (not a Keras "
                                            "activation, loss or metric)"))
            continue
        if cls in DATA_MARKERS:
            continue
        if allow_hub and _hub_class(module, registered):
            continue
        if not _is_keras_module(module):
            found.append(Finding(label, where, f"class {shown(cls)} from module {shown(module)} (outside Keras)"))
            continue
        if isinstance(registered, str) and registered not in (cls, "Functional", "Sequential") \
                and not _legacy_custom_alias(registered):
            found.append(Finding(label, where, f"a registered custom object {shown(registered)}"))
            continue
        if isinstance(cls, str) and cls.startswith("Custom>") and cls[len("Custom>"):] in OTHER_CLASSES:
            continue  # tf.keras 2 wrote built-in optimizers as 'Custom>Adam'
        if cls in APPLICATION_LAYERS and module in (None, APPLICATION_LAYERS[cls]):
            continue  # ConvNeXt's LayerScale and the like: keras.applications' own layers
        if cls in OP_MODULES and module in (None, OP_MODULES[cls]):
            continue  # a Keras operation node (`x + a`, `ops.mean(x)`; .h5 drops the module), as safe mode allows
        if not (cls in LAYER_CLASSES or cls in MODEL_CLASSES or cls in LEGACY_LAYER_CLASSES
                or cls in OTHER_CLASSES):
            found.append(Finding(label, where, f"unknown class {shown(cls)} (custom objects need code to load)"))
            continue
        cfg = obj.get("config")
        if cls in VOCABULARY_LAYERS and isinstance(cfg, dict):
            for key in ("vocabulary", "idf_weights"):
                if isinstance(cfg.get(key), str):
                    found.append(Finding(label, where, f"its {key} is read from a file path named in the model file"))
        if cls == "Merge" and isinstance(cfg, dict):
            mode = cfg.get("mode")
            if not (mode is None or (isinstance(mode, str) and mode in _MERGE_MODES)) or \
                    cfg.get("mode_type") not in (None, "raw") or cfg.get("output_shape_type") not in (None, "raw"):
                found.append(Finding(label, where, "a Keras 1 Merge layer with a Python function"))
    return found


def _legacy_custom_alias(registered: str) -> bool:
    return registered.startswith("Custom>") and registered[len("Custom>"):] in OTHER_CLASSES


def check_config(config: Any, source: str, *, unsafe: bool = False, limits: Limits | None = None,
                 what: str = "model config", allow_hub: bool = False) -> ConfigReport:
    """Check a parsed model config; raise UnsafeError/InputError or return the report.

    `config` is the top-level dict Keras would deserialize (config.json of a .keras,
    the translated `model_config` of an .h5, a `new --config` file).
    """
    limits = limits or _limits.current()
    if isinstance(config, (bytes, str)):
        config = parse_config_json(config, source, limits, what)
    else:
        check_json_shape(config, source, limits, what)
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise InputError(f"{source}: {what} is not a Keras model config (no class_name)")
    report = ConfigReport()
    found = _refuse_code(config, source, report, unsafe, allow_hub)
    report.allowed = found
    report.n_layers = count_layers(config)
    if report.n_layers > limits.max_layers:
        raise InputError(f"{source}: {what} has {fmt_count(report.n_layers)} layers "
                         f"(limit {fmt_count(limits.max_layers)})",
                         "raise the limit with --max-layers if you trust this file")
    sizer = _Sizer()
    sizer.model(config, None)
    report.n_params = sizer.params
    report.unsized_layers = sizer.unsized
    if report.n_params > limits.max_params:
        raise InputError(f"{source}: {what} declares {fmt_count(report.n_params)} parameters "
                         f"(limit {fmt_count(limits.max_params)})",
                         "raise the limit with --max-params if you trust this file and have the memory")
    return report


def check_code(config: Any, source: str, *, unsafe: bool = False, limits: Limits | None = None,
               what: str = "model config") -> list[Finding]:
    """Only the code refusals of check_config (no budgets), e.g. for a file's raw config before translation."""
    limits = limits or _limits.current()
    check_json_shape(config, source, limits, what)
    return _refuse_code(config, source, ConfigReport(), unsafe)


def code_findings(config: Any, allow_hub: bool = False) -> list[Finding]:
    """Everything in `config` that would run code, all of it and without raising (for reports)."""
    try:
        return _findings(config, ConfigReport(), allow_hub)
    except InputError:
        return []  # a malformed object is reported by the command that loads the graph


def _refuse_code(config: Any, source: str, report: ConfigReport, unsafe: bool,
                 allow_hub: bool = False) -> list[Finding]:
    """Everything in `config` that would run code; refused (exit 5) unless `unsafe`. `allow_hub`: keras-hub's
    own classes pass (wtool.graph.hub loads them through the installed keras-hub)."""
    try:
        found = _findings(config, report, allow_hub)
    except InputError as exc:
        raise InputError(f"{source}: {exc.message}") from None
    if found and not unsafe:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        needs_class = any("class" in f.why or "custom" in f.why for f in found)
        raise UnsafeError(f"{source}: refused: {first.where}: {first.why}{more}",
                          "pass --unsafe only if you trust this file and its author"
                          + (", with --custom-objects FILE.py|MODULE for the code that registers its classes"
                             if needs_class else ""))
    return found


def count_layers(config: Any) -> int:
    """Layers in the config, counting nested models' layers and wrapped layers/cells."""
    count = 0
    stack: list[Any] = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "layers" and isinstance(value, list):
                    count += sum(1 for v in value if isinstance(v, dict))
                elif key in _WRAPPER_KEYS and isinstance(value, dict) and "class_name" in value:
                    count += 1
                elif key in _WRAPPER_KEYS and isinstance(value, list):
                    count += sum(1 for v in value if isinstance(v, dict) and "class_name" in v)
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return count


# ---------------------------------------------------------------------------------------------
# parameter budget: shapes propagated through the graph from the config alone

Shape = list[Any]  # dims are int or None; a whole shape is None when unknown


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _shape(value: Any) -> Shape | None:
    """A JSON list like [null, 28, 28, 1] -> shape; anything else -> None."""
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        value = (value.get("config") or {}).get("value")
    if not isinstance(value, list) or not value:
        return None
    if not all(v is None or _int(v) is not None for v in value):
        return None
    return [None if v is None else _int(v) for v in value]


def _dims(value: Any, n: int) -> list[int] | None:
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        value = (value.get("config") or {}).get("value")
    if _int(value) is not None:
        return [_int(value)] * n  # type: ignore[list-item]
    if isinstance(value, list) and len(value) == n and all(_int(v) is not None for v in value):
        return [_int(v) for v in value]  # type: ignore[misc]
    return None


def _prod(values: Iterable[int | None]) -> int | None:
    out = 1
    for v in values:
        if v is None:
            return None
        out *= v
    return out


def _nonneg(n: int | None) -> int | None:
    return None if n is None or n < 0 else n


_WEIGHTLESS = frozenset("""
    Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D
    AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add AlphaDropout
    Attention Average AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
    CenterCrop Concatenate Cropping1D Cropping2D Cropping3D Dot Dropout ELU Flatten GaussianDropout
    GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D
    GlobalAvgPool2D GlobalAvgPool3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D
    GlobalMaxPooling2D GlobalMaxPooling3D Identity InputLayer LeakyReLU Masking MaxPool1D MaxPool2D MaxPool3D
    MaxPooling1D MaxPooling2D MaxPooling3D Maximum Minimum Multiply Permute ReLU RepeatVector Rescaling
    Reshape Resizing Softmax SpatialDropout1D SpatialDropout2D SpatialDropout3D Subtract ThresholdedReLU
    UnitNormalization UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
    Hashing HashedCrossing CategoryEncoding Discretization MaxNumBoundingBoxes
""".split())
_IDENTITY_SHAPE = frozenset("""
    Activation ActivityRegularization AlphaDropout Dropout ELU GaussianDropout GaussianNoise Identity
    LeakyReLU Masking ReLU Rescaling Softmax SpatialDropout1D SpatialDropout2D SpatialDropout3D
    ThresholdedReLU UnitNormalization BatchNormalization LayerNormalization GroupNormalization
    RMSNormalization PReLU Normalization SpectralNormalization
""".split())
_ALIASES = {"Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution3D": "Conv3D",
            "Convolution1DTranspose": "Conv1DTranspose", "Convolution2DTranspose": "Conv2DTranspose",
            "Convolution3DTranspose": "Conv3DTranspose", "SeparableConvolution1D": "SeparableConv1D",
            "SeparableConvolution2D": "SeparableConv2D", "AtrousConvolution1D": "Conv1D",
            "AtrousConvolution2D": "Conv2D", "Deconvolution2D": "Conv2DTranspose",
            "Deconvolution3D": "Conv3DTranspose", "CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU",
            "MaxPool1D": "MaxPooling1D", "MaxPool2D": "MaxPooling2D", "MaxPool3D": "MaxPooling3D",
            "AvgPool1D": "AveragePooling1D", "AvgPool2D": "AveragePooling2D", "AvgPool3D": "AveragePooling3D",
            "Model": "Functional"}


class _Sizer:
    """Propagates shapes through a model config and sums the variables each layer will create."""

    def __init__(self) -> None:
        self.params = 0
        self.unsized: list[str] = []

    # -- models ---------------------------------------------------------------------------------

    def model(self, obj: dict[str, Any], input_shapes: list[Shape | None] | None) -> list[Shape | None] | None:
        cls = _cls(obj)
        cfg = obj.get("config")
        if cls == "Sequential":
            layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers") if isinstance(cfg, dict) else None
            if not isinstance(layers, list):
                return None
            shape = input_shapes[0] if input_shapes else None
            build = obj.get("build_config") or {}
            if shape is None and isinstance(build, dict):
                shape = _shape(build.get("input_shape"))
            if shape is None and isinstance(cfg, dict):
                shape = _shape(cfg.get("build_input_shape"))
            outs: list[Shape | None] | None = [shape]
            for layer in layers:
                if isinstance(layer, dict):
                    outs = self.layer(layer, outs)
            return outs
        if isinstance(cfg, dict) and isinstance(cfg.get("layers"), list):
            return self._functional(cfg)
        return None

    def _functional(self, cfg: dict[str, Any]) -> list[Shape | None] | None:
        outputs: dict[tuple[str, int], list[Shape | None] | None] = {}
        for layer in cfg["layers"]:
            if not isinstance(layer, dict):
                continue
            name = layer["name"] if isinstance(layer.get("name"), str) else _name_of(layer)
            nodes = layer.get("inbound_nodes") or []
            if not nodes:
                outputs[(name, 0)] = self.layer(layer, None)
                continue
            sized = False
            for i, node in enumerate(nodes if isinstance(nodes, list) else []):
                ins = self._node_inputs(node, outputs)
                if not sized:
                    outputs[(name, i)] = self.layer(layer, ins)
                    sized = True
                else:
                    outputs[(name, i)] = self._shape_only(layer, ins)
        refs = cfg.get("output_layers")
        if isinstance(refs, list) and refs and isinstance(refs[0], str):
            refs = [refs]
        result: list[Shape | None] = []
        for ref in refs if isinstance(refs, list) else []:
            if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[0], str):
                outs = outputs.get((ref[0], _int(ref[1]) or 0))
                t = _int(ref[2]) or 0
                result.append(outs[t] if outs and t < len(outs) else None)
        return result or None

    def _node_inputs(self, node: Any, outputs: dict[tuple[str, int], list[Shape | None] | None]
                     ) -> list[Shape | None]:
        tensors: list[Shape | None] = []
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
            stack: list[Any] = [node.get("args")]
            found: list[dict[str, Any]] = []
            while stack:
                item = stack.pop(0)
                if isinstance(item, dict) and item.get("class_name") == "__keras_tensor__":
                    found.append(item.get("config") or {})
                elif isinstance(item, list):
                    stack[0:0] = item
                elif isinstance(item, dict):
                    stack[0:0] = list(item.values())
            for kt in found:
                hist = kt.get("keras_history") if isinstance(kt, dict) else None
                shape = None
                if isinstance(hist, list) and len(hist) >= 3 and isinstance(hist[0], str):
                    outs = outputs.get((hist[0], _int(hist[1]) or 0))
                    t = _int(hist[2]) or 0
                    shape = outs[t] if outs and t < len(outs) else None
                if shape is None and isinstance(kt, dict):
                    shape = _shape(kt.get("shape"))
                tensors.append(shape)
        elif isinstance(node, list):  # legacy: [[name, node_index, tensor_index, kwargs], ...]
            for ref in node:
                if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[0], str):
                    outs = outputs.get((ref[0], _int(ref[1]) or 0))
                    t = _int(ref[2]) or 0
                    tensors.append(outs[t] if outs and t < len(outs) else None)
        return tensors

    # -- layers ---------------------------------------------------------------------------------

    def layer(self, obj: dict[str, Any], ins: list[Shape | None] | None) -> list[Shape | None] | None:
        cls = _cls(obj)
        cfg = _cfg(obj)
        name = _name_of(obj)
        if cls in ("Sequential", "Functional"):
            return self.model(obj, self._build_shapes(obj) or ins)
        built = self._build_shapes(obj)
        candidates = [s for s in (built, ins) if s]
        params: int | None = 0 if cls in _WEIGHTLESS else None
        outs: list[Shape | None] | None = None
        for shapes in candidates or [[None]]:
            p, o = self._sized(cls, cfg, shapes)
            if p is not None:
                params = p if params is None else max(params, p)
            if outs is None:
                outs = o
        if cls not in _WEIGHTLESS:
            if params is None:
                self.unsized.append(name)
            else:
                self.params += params
        if outs is None and cls in _IDENTITY_SHAPE and ins:
            outs = [ins[0]]
        return outs

    def _shape_only(self, obj: dict[str, Any], ins: list[Shape | None]) -> list[Shape | None] | None:
        cls = _cls(obj)
        if cls in ("Sequential", "Functional"):
            return None
        cfg = _cfg(obj)
        return self._sized(cls, cfg, ins)[1]

    @staticmethod
    def _build_shapes(obj: dict[str, Any]) -> list[Shape | None] | None:
        build = obj.get("build_config")
        cfg = _cfg(obj)
        shapes: list[Shape | None] = []
        if isinstance(build, dict):
            raw = build.get("input_shape")
            if _shape(raw) is not None:
                shapes = [_shape(raw)]
            elif isinstance(raw, list) and raw and all(isinstance(r, list) or r is None for r in raw):
                shapes = [_shape(r) for r in raw]
            elif isinstance(raw, dict):
                shapes = [_shape(r) for r in raw.values()]
            else:
                for key in ("query_shape", "value_shape", "key_shape"):
                    if key in build:
                        shapes.append(_shape(build.get(key)))
        if not shapes and isinstance(cfg, dict):
            for key in ("batch_shape", "batch_input_shape"):
                if _shape(cfg.get(key)) is not None:
                    return [_shape(cfg.get(key))]
            if _shape(cfg.get("input_shape")) is not None:
                return [[None, *_shape(cfg.get("input_shape"))]]  # type: ignore[misc]
            if _int(cfg.get("input_dim")) is not None and obj.get("class_name") != "Embedding":
                return [[None, _int(cfg.get("input_dim"))]]
        return shapes or None

    def _sized(self, cls: str, cfg: dict[str, Any], ins: list[Shape | None] | None
               ) -> tuple[int | None, list[Shape | None] | None]:
        """(parameters, output shapes) of one layer call; None where unknown."""
        x = ins[0] if ins else None
        bias = 1 if cfg.get("use_bias", cfg.get("bias", True)) else 0
        if cls == "InputLayer":
            shape = _shape(cfg.get("batch_shape")) or _shape(cfg.get("batch_input_shape"))
            return 0, [shape]
        if cls in _IDENTITY_SHAPE and cls not in _SIZED_IDENTITY:
            return 0, [x]
        if cls == "Dense":
            units = _nonneg(_int(cfg.get("units", cfg.get("output_dim"))))
            d = x[-1] if x else None
            p = None if units is None or d is None else d * units + bias * units
            return p, [None if x is None or units is None else [*x[:-1], units]]
        if cls == "Embedding":
            n, d = _nonneg(_int(cfg.get("input_dim"))), _nonneg(_int(cfg.get("output_dim")))
            p = None if n is None or d is None else n * d
            return p, [None if x is None or d is None else [*x, d]]
        if cls in _SIZED_IDENTITY:
            return self._norm(cls, cfg, x), [x]
        if cls in ("SimpleRNN", "GRU", "LSTM"):
            return self._rnn(cls, cfg, x)
        if cls == "Bidirectional":
            inner = cfg.get("layer")
            if not isinstance(inner, dict):
                return None, None
            icls = _cls(inner)
            icfg = _cfg(inner)
            p, o = self._sized(icls, icfg, ins)
            out = o[0] if o else None
            if out is not None and cfg.get("merge_mode", "concat") == "concat" and out[-1] is not None:
                out = [*out[:-1], 2 * out[-1]]
            return None if p is None else 2 * p, [out]
        if cls == "TimeDistributed":
            inner = cfg.get("layer")
            if not isinstance(inner, dict) or x is None or len(x) < 2:
                return None, None
            icls = _cls(inner)
            icfg = _cfg(inner)
            p, o = self._sized(icls, icfg, [[x[0], *x[2:]]])
            out = o[0] if o else None
            return p, [None if out is None else [x[0], x[1], *out[1:]]]
        if cls.startswith(("Conv", "SeparableConv", "DepthwiseConv")) and not cls.startswith("ConvLSTM"):
            return self._conv(cls, cfg, x, bias)
        if cls.startswith("ConvLSTM"):
            return self._convlstm(cls, cfg, x, bias)
        if cls in ("MultiHeadAttention", "GroupQueryAttention"):
            return self._attention(cls, cfg, ins, bias)
        if cls == "EinsumDense":
            return None, None
        return 0 if cls in _WEIGHTLESS else None, self._reshape(cls, cfg, ins)

    # -- per family -----------------------------------------------------------------------------

    @staticmethod
    def _axis_dim(cfg: dict[str, Any], x: Shape | None, default: int = -1) -> int | None:
        if x is None:
            return None
        axis = cfg.get("axis", default)
        if isinstance(axis, list):
            dims = [x[a] if -len(x) <= a < len(x) else None for a in axis if _int(a) is not None]
            return _prod(dims) if dims else None
        a = _int(axis)
        if a is None or not -len(x) <= a < len(x):
            return None
        return x[a]

    def _norm(self, cls: str, cfg: dict[str, Any], x: Shape | None) -> int | None:
        if cls == "PReLU":
            if x is None:
                return None
            shape = list(x[1:])
            for a in cfg.get("shared_axes") or []:
                ai = _int(a)
                if ai is not None and 1 <= ai <= len(shape):
                    shape[ai - 1] = 1
            return _prod(shape)
        c = self._axis_dim(cfg, x)
        if c is None:
            return None
        if cls == "BatchNormalization":
            return 4 * c
        if cls in ("LayerNormalization", "GroupNormalization"):
            return 2 * c
        if cls == "RMSNormalization":
            return c
        if cls == "Normalization":
            return 2 * c + 1
        return 0

    def _rnn(self, cls: str, cfg: dict[str, Any], x: Shape | None
             ) -> tuple[int | None, list[Shape | None] | None]:
        units = _nonneg(_int(cfg.get("units", cfg.get("output_dim"))))
        d = x[-1] if x else None
        out: Shape | None = None
        if x is not None and units is not None:
            out = [x[0], x[1], units] if cfg.get("return_sequences") and len(x) >= 2 else [x[0], units]
        if units is None or d is None:
            return None, [out]
        gates = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}[cls]
        p = gates * (d * units + units * units)
        if cfg.get("use_bias", True):
            p += gates * units * (2 if cls == "GRU" and cfg.get("reset_after", True) else 1)
        return p, [out]

    def _conv(self, cls: str, cfg: dict[str, Any], x: Shape | None, bias: int
              ) -> tuple[int | None, list[Shape | None] | None]:
        rank = 3 if "3D" in cls else 2 if "2D" in cls else 1
        k = _dims(cfg.get("kernel_size"), rank)
        if k is None and rank == 2 and _int(cfg.get("nb_row")) is not None:
            k = [_int(cfg.get("nb_row")) or 0, _int(cfg.get("nb_col")) or 0]
        if k is None and rank == 1 and _int(cfg.get("filter_length")) is not None:
            k = [_int(cfg.get("filter_length")) or 0]
        filters = _nonneg(_int(cfg.get("filters", cfg.get("nb_filter"))))
        channels_first = cfg.get("data_format") == "channels_first" or cfg.get("dim_ordering") == "th"
        c = None if x is None or len(x) != rank + 2 else (x[1] if channels_first else x[-1])
        out = self._conv_out(cls, cfg, x, k, filters, rank, channels_first, c)
        if k is None or c is None or any(v < 0 for v in k) or c < 0:
            return None, out
        kk = _prod(k) or 0
        if cls.startswith("SeparableConv"):
            dm = _nonneg(_int(cfg.get("depth_multiplier", 1))) or 1
            if filters is None:
                return None, out
            return kk * c * dm + c * dm * filters + bias * filters, out
        if cls.startswith("DepthwiseConv"):
            dm = _nonneg(_int(cfg.get("depth_multiplier", 1))) or 1
            return kk * c * dm + bias * c * dm, out
        if filters is None:
            return None, out
        groups = _nonneg(_int(cfg.get("groups", 1))) or 1
        return kk * (c // groups if "Transpose" not in cls else c) * filters + bias * filters, out

    @staticmethod
    def _conv_out(cls: str, cfg: dict[str, Any], x: Shape | None, k: list[int] | None, filters: int | None,
                  rank: int, channels_first: bool, c: int | None) -> list[Shape | None] | None:
        if x is None or k is None or len(x) != rank + 2:
            return None
        strides = _dims(cfg.get("strides", cfg.get("subsample", 1)), rank) or [1] * rank
        dil = _dims(cfg.get("dilation_rate", 1), rank) or [1] * rank
        padding = cfg.get("padding", cfg.get("border_mode", "valid"))
        spatial = x[2:] if channels_first else x[1:-1]
        out_sp: list[int | None] = []
        for size, kk, s, d in zip(spatial, k, strides, dil, strict=False):
            if size is None or s <= 0:
                out_sp.append(None)
                continue
            ek = (kk - 1) * d + 1
            if "Transpose" in cls:
                out_sp.append(size * s + max(ek - s, 0) if padding == "valid" else size * s)
            elif padding == "same":
                out_sp.append(-(-size // s))
            else:
                out_sp.append(max(-(-(size - ek + 1) // s), 0))
        if cls.startswith("DepthwiseConv"):
            ch = None if c is None else c * (_int(cfg.get("depth_multiplier", 1)) or 1)
        else:
            ch = filters
        return [[x[0], ch, *out_sp] if channels_first else [x[0], *out_sp, ch]]

    def _convlstm(self, cls: str, cfg: dict[str, Any], x: Shape | None, bias: int
                  ) -> tuple[int | None, list[Shape | None] | None]:
        rank = 3 if "3D" in cls else 2 if "2D" in cls else 1
        k = _dims(cfg.get("kernel_size"), rank)
        filters = _nonneg(_int(cfg.get("filters")))
        c = None if x is None or len(x) != rank + 3 else (x[2] if cfg.get("data_format") == "channels_first"
                                                          else x[-1])
        out: list[Shape | None] | None = None
        if x is not None and len(x) == rank + 3 and cfg.get("data_format") != "channels_first":
            step = self._conv_out("Conv", cfg, [x[0], *x[2:]], k, filters, rank, False, c)
            if step and step[0] is not None:
                out = [[x[0], x[1], *step[0][1:]]] if cfg.get("return_sequences") else step
        if k is None or filters is None or c is None:
            return None, out
        kk = _prod(k) or 0
        return 4 * (kk * c * filters + kk * filters * filters + bias * filters), out

    def _attention(self, cls: str, cfg: dict[str, Any], ins: list[Shape | None] | None, bias: int
                   ) -> tuple[int | None, list[Shape | None] | None]:
        q = ins[0] if ins else None
        v = ins[1] if ins and len(ins) > 1 else q
        k_ = ins[2] if ins and len(ins) > 2 else v
        if cls == "GroupQueryAttention":
            heads = _int(cfg.get("num_query_heads"))
            kv_heads = _int(cfg.get("num_key_value_heads"))
            hd = _int(cfg.get("head_dim"))
            if None in (q, v, k_, heads, kv_heads, hd):
                return None, [q]
            dq, dv, dk = q[-1], v[-1], k_[-1]  # type: ignore[index]
            if None in (dq, dv, dk):
                return None, [q]
            p = dq * heads * hd + dk * kv_heads * hd + dv * kv_heads * hd + heads * hd * dq  # type: ignore[operator]
            p += bias * (heads * hd + 2 * kv_heads * hd + dq)  # type: ignore[operator]
            return p, [q]
        heads = _int(cfg.get("num_heads"))
        kd = _int(cfg.get("key_dim"))
        vd = _int(cfg.get("value_dim")) or kd
        if None in (q, v, k_, heads, kd, vd):
            return None, [q]
        dq, dv, dk = q[-1], v[-1], k_[-1]  # type: ignore[index]
        out_shape = _shape(cfg.get("output_shape"))
        dout = _prod(out_shape) if out_shape else dq
        if None in (dq, dv, dk, dout):
            return None, [q]
        p = (dq * heads * kd + dk * heads * kd + dv * heads * vd  # type: ignore[operator]
             + heads * vd * dout)  # type: ignore[operator]
        p += bias * (2 * heads * kd + heads * vd + dout)  # type: ignore[operator]
        return p, [None if q is None or dout is None else [*q[:-1], dout]]

    @staticmethod
    def _reshape(cls: str, cfg: dict[str, Any], ins: list[Shape | None] | None) -> list[Shape | None] | None:
        x = ins[0] if ins else None
        if cls in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
            return [x]
        if cls == "Concatenate":
            if not ins or any(s is None for s in ins):
                return None
            axis = _int(cfg.get("axis", -1))
            first = ins[0]
            if axis is None or first is None or not -len(first) <= axis < len(first):
                return None
            dims = [s[axis] if s and len(s) == len(first) else None for s in ins]
            out = list(first)
            out[axis] = sum(d for d in dims if d is not None) if all(d is not None for d in dims) else None
            return [out]
        if x is None:
            return None
        if cls == "Flatten":
            return [[x[0], _prod(x[1:])]]
        if cls == "Reshape":
            target = _shape(cfg.get("target_shape"))
            if target is None:
                return None
            if -1 in target:
                known = _prod([t for t in target if t != -1])
                total = _prod(x[1:])
                fill = None if not known or total is None else total // known
                target = [fill if t == -1 else t for t in target]
            return [[x[0], *target]]
        if cls == "RepeatVector":
            n = _int(cfg.get("n"))
            return [[x[0], n, *x[1:]]]
        if cls == "Permute":
            perm = _shape(cfg.get("dims"))
            if perm is None or sorted(perm) != list(range(1, len(x))):
                return None
            return [[x[0], *[x[d] for d in perm]]]
        if cls.startswith(("GlobalAveragePooling", "GlobalMaxPooling", "GlobalAvgPool", "GlobalMaxPool")):
            channels_first = cfg.get("data_format") == "channels_first"
            if cfg.get("keepdims"):
                return None
            return [[x[0], x[1] if channels_first else x[-1]]]
        if cls.startswith(("MaxPooling", "AveragePooling", "UpSampling", "ZeroPadding", "Cropping")):
            rank = 3 if "3D" in cls else 2 if "2D" in cls else 1
            if len(x) != rank + 2:
                return None
            channels_first = cfg.get("data_format") == "channels_first"
            spatial = list(x[2:] if channels_first else x[1:-1])
            if cls.startswith(("MaxPooling", "AveragePooling")):
                pool = _dims(cfg.get("pool_size", cfg.get("pool_length", 2)), rank)
                strides = _dims(cfg.get("strides") if cfg.get("strides") is not None else pool, rank)
                if pool is None or strides is None or min(strides) <= 0:
                    return None
                same = cfg.get("padding", cfg.get("border_mode", "valid")) == "same"
                spatial = [None if s is None else (-(-s // st) if same else max((s - p) // st + 1, 0))
                           for s, p, st in zip(spatial, pool, strides, strict=False)]
            elif cls.startswith("UpSampling"):
                size = _dims(cfg.get("size", 2), rank)
                if size is None:
                    return None
                spatial = [None if s is None else s * f for s, f in zip(spatial, size, strict=False)]
            else:
                raw = cfg.get("padding" if cls.startswith("ZeroPadding") else "cropping")
                pads = _pads(raw, rank)
                if pads is None:
                    return None
                sign = 1 if cls.startswith("ZeroPadding") else -1
                spatial = [None if s is None else s + sign * (a + b) for s, (a, b) in zip(spatial, pads, strict=False)]
            return [[x[0], x[1], *spatial] if channels_first else [x[0], *spatial, x[-1]]]
        if cls in ("Resizing", "CenterCrop"):
            h, w = _int(cfg.get("height")), _int(cfg.get("width"))
            if len(x) == 4:
                return [[x[0], h, w, x[-1]]]
        return None


def _cls(obj: dict[str, Any]) -> str:
    cls = obj.get("class_name")
    cls = cls if isinstance(cls, str) else ""
    return _ALIASES.get(cls, cls)


def _cfg(obj: dict[str, Any]) -> dict[str, Any]:
    cfg = obj.get("config")
    return cfg if isinstance(cfg, dict) else {}


_SIZED_IDENTITY = frozenset({"BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
                             "PReLU", "Normalization"})


def _pads(raw: Any, rank: int) -> list[tuple[int, int]] | None:
    if isinstance(raw, dict) and raw.get("class_name") == "__tuple__":
        raw = (raw.get("config") or {}).get("value")
    value = _int(raw)
    if value is not None:
        return [(value, value)] * rank
    if isinstance(raw, list) and len(raw) == rank:
        out = []
        for item in raw:
            if _int(item) is not None:
                out.append((_int(item), _int(item)))
            elif isinstance(item, list) and len(item) == 2 and all(_int(v) is not None for v in item):
                out.append((_int(item[0]), _int(item[1])))
            else:
                return None
        return out  # type: ignore[return-value]
    if isinstance(raw, list) and rank == 1 and len(raw) == 2 and all(_int(v) is not None for v in raw):
        return [(_int(raw[0]), _int(raw[1]))]  # type: ignore[list-item]
    return None


def describe(report: ConfigReport) -> str:
    """'12 layers, 1,234 parameters' for notes and --check output."""
    text = f"{report.n_layers} layers, {fmt_count(report.n_params)} parameters"
    if report.unsized_layers:
        text += f" (+ {len(report.unsized_layers)} layers sized only when built)"
    return text


def source_name(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)
