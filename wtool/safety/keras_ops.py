"""Keras's own operations (`keras.src.ops.*`) that a Functional config may hold as nodes.

`y = x + a`, `keras.ops.concatenate(...)` or `ops.mean(x)` on KerasTensors are saved as
operation nodes (module `keras.src.ops.numpy`, class `Add`, `Concatenate`, `Mean`); Keras's safe
mode loads them, and so does wtool. Control-flow operations that take Python callables are left
out. Generated from Keras 3.15.1 by scripts/keras_ops_table.py; pure data, no imports.
"""

from __future__ import annotations

KERAS_OPS: dict[str, frozenset[str]] = {
    "keras.src.ops.core": frozenset("""
    Cast ConvertToTensor SaturateCast Scatter ScatterUpdate Slice SliceUpdate StopGradient Unstack
    """.split()),
    "keras.src.ops.einops": frozenset("""
    Rearrange
    """.split()),
    "keras.src.ops.image": frozenset("""
    AffineTransform CropImages ElasticTransform ExtractPatches GaussianBlur HSVToRGB MapCoordinates
    PadImages PerspectiveTransform RGBToGrayscale RGBToHSV Resize SSIM ScaleAndTranslate SobelEdges
    """.split()),
    "keras.src.ops.linalg": frozenset("""
    Cholesky CholeskyInverse Det Eig Eigh Inv Lstsq LuFactor MatrixRank Norm Pinv Qr SVD Solve
    SolveTriangular
    """.split()),
    "keras.src.ops.math": frozenset("""
    CDist Erf Erfc Erfinv ExtractSequences FFT FFT2 IFFT2 IRFFT ISTFT InTopK Logdet Logsumexp RFFT
    Rsqrt STFT SegmentMax SegmentMin SegmentProd SegmentReduction SegmentSum TopK ViewAsComplex
    ViewAsReal
    """.split()),
    "keras.src.ops.nn": frozenset("""
    AdaptiveAveragePool AdaptiveMaxPool AveragePool BatchNorm BinaryCrossentropy CTCDecode CTCLoss
    CategoricalCrossentropy Celu Conv ConvTranspose DepthToSpace DepthwiseConv DotProductAttention
    Elu Fold Gelu Glu HardShrink HardSigmoid HardSilu HardTanh LayerNorm LeakyRelu LogSigmoid
    LogSoftmax MaxPool Moments MultiHot Normalize OneHot PSNR Polar RMSNorm Relu Relu6 Selu
    SeparableConv Sigmoid Silu SoftShrink Softmax Softplus Softsign SpaceToDepth
    SparseCategoricalCrossentropy SparsePlus SparseSigmoid Sparsemax Squareplus TanhShrink Threshold
    Unfold
    """.split()),
    "keras.src.ops.numpy": frozenset("""
    Abs Absolute Add All AllClose Amax Amin Angle Any Append Arange Arccos Arccosh Arcsin Arcsinh
    Arctan Arctan2 Arctanh Argmax Argmin Argpartition Argsort Array ArraySplit Average Bincount
    BitwiseAnd BitwiseInvert BitwiseLeftShift BitwiseNot BitwiseOr BitwiseRightShift BitwiseXor
    BroadcastTo Cbrt Ceil Clip Concatenate Conj Conjugate Copy Corrcoef Correlate Cos Cosh
    CountNonzero Cross Cumprod Cumsum Deg2rad Diag Diagflat Diagonal Diff Digitize Divide
    DivideNoNan Dot Dsplit Dstack Einsum EmptyLike Equal Exp Exp2 ExpandDims Expm1 Fabs Flip Fliplr
    Flipud Floor FloorDivide Fmax Fmin Fmod Full FullLike Gcd Geomspace GetItem Greater GreaterEqual
    Heaviside Histogram Hsplit Hstack Hypot I0 Imag Inner IsIn Isclose Isfinite Isinf Isnan Isneginf
    Isposinf Isreal Kron Lcm Ldexp LeftShift Less LessEqual Linspace Log Log10 Log1p Log2 Logaddexp
    Logaddexp2 LogicalAnd LogicalNot LogicalOr LogicalXor Logspace Matmul Max Maximum Mean Median
    Meshgrid Min Minimum Mod Moveaxis Multiply NanToNum Nanargmax Nanargmin Nancumprod Nancumsum
    Nanmax Nanmean Nanmedian Nanmin Nanpercentile Nanprod Nanquantile Nanstd Nansum Nanvar Ndim
    Negative Nextafter Nonzero NotEqual OnesLike Outer Pad Percentile Power Prod Ptp Quantile
    Rad2deg Ravel Real Reciprocal Repeat Reshape RightShift Roll Rot90 Round SearchSorted Select
    Sign Signbit Sin Sinc Sinh Size Slogdet Sort Split Sqrt Square Squeeze Stack Std Subtract Sum
    Swapaxes Take TakeAlongAxis Tan Tanh Tensordot Tile Trace Transpose Trapezoid Tril Triu
    TrueDivide Trunc Unique UnravelIndex Vander Var Vdot View Vsplit Vstack Where ZerosLike
    """.split()),
}
# class name -> its module (no class name is in two of these modules)
OP_MODULES: dict[str, str] = {name: module for module, names in KERAS_OPS.items() for name in names}

# Layers that keras.applications defines in its own modules (not keras.layers): Keras's safe mode
# loads them from a .keras config, and the .h5 writer drops their module. Class -> module.
APPLICATION_LAYERS: dict[str, str] = {
    "LayerScale": "keras.src.applications.convnext",
    "StochasticDepth": "keras.src.applications.convnext",
    "CustomScaleLayer": "keras.src.applications.inception_resnet_v2",
}
