"""Quantized Keras layers as numbers: the shape contract of their variables, and dequantization.

Keras 3.15 stores an int8 kernel with one scale per output unit, an int4 kernel as two signed
nibbles per int8 byte (low nibble first) with per-unit or per-group scales and zero points,
and a float8 layer's kernel as float with scalar scales. The formulas follow Keras's own
`_get_kernel_with_merged_lora` (Dense, EinsumDense) and Embedding's: what `model.quantize`
wrote is read back the way Keras reads it. No TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from wtool.errors import InputError
from wtool.store.naming import base_mode

Shape = tuple[int, ...]
# The variable holding the quantized values, per class.
VALUES = {"Dense": "kernel", "EinsumDense": "kernel", "Embedding": "embeddings", "ReversibleEmbedding": "embeddings"}
DEQUANTIZABLE = frozenset({("Dense", "int8"), ("Dense", "int4"), ("Embedding", "int8"), ("Embedding", "int4"),
                           ("ReversibleEmbedding", "int8"), ("ReversibleEmbedding", "int4")})


def _misfit(where: str, layer: str, var: str, shape: Shape, values: str, vshape: Shape, mode: str) -> InputError:
    return InputError(f"{where}: quantized layer {layer} ({mode}): {var} has shape {shape}, which does not fit "
                      f"its {values} {vshape} (a damaged or hand-edited file)")


def check_shapes(where: str, layer: str, class_name: str, mode: str, shapes: Mapping[str, Shape]) -> None:
    """Refuse (exit 3) a quantized layer whose scales, zero points or group indices cannot belong to its values."""
    kind = base_mode(mode)
    if kind == "float8":
        for var, shape in shapes.items():
            if var.endswith("_scale") and shape != ():
                raise _misfit(where, layer, var, shape, "float8 layout (a scalar)", (), mode)
        return
    values = VALUES.get(class_name)
    if values is None or values not in shapes or kind not in ("int8", "int4"):
        return
    vshape = shapes[values]
    scale_var = f"{values}_scale" if values == "embeddings" else "kernel_scale"
    scale = shapes.get(scale_var)
    if scale is None:
        return
    if class_name == "EinsumDense":
        if math.prod(scale) == 0 or (kind == "int8" and math.prod(vshape) % math.prod(scale)):
            raise _misfit(where, layer, scale_var, scale, values, vshape, mode)
    elif len(vshape) != 2:
        raise _misfit(where, layer, values, vshape, "layer class", (), mode)
    elif values == "kernel":
        _check_dense(where, layer, mode, vshape, shapes)
    else:
        _check_embedding(where, layer, mode, vshape, shapes)
    zero = shapes.get(scale_var.replace("_scale", "_zero"))
    if zero is not None and zero != scale:
        raise _misfit(where, layer, scale_var.replace("_scale", "_zero"), zero, scale_var, scale, mode)


def _check_dense(where: str, layer: str, mode: str, kernel: Shape, shapes: Mapping[str, Shape]) -> None:
    scale = shapes["kernel_scale"]
    units = scale[-1] if scale else 0
    packed = base_mode(mode) == "int4"
    fits = len(scale) in (1, 2) and kernel[1] == ((units + 1) // 2 if packed else units)
    if fits and len(scale) == 2:
        g_idx = shapes.get("g_idx")
        fits = packed and (g_idx is None or g_idx == (kernel[0],)) and 1 <= scale[0] <= kernel[0]
    if not fits:
        raise _misfit(where, layer, "kernel_scale", scale, "kernel", kernel, mode)


def _check_embedding(where: str, layer: str, mode: str, table: Shape, shapes: Mapping[str, Shape]) -> None:
    scale = shapes["embeddings_scale"]
    fits = len(scale) in (1, 2) and scale[0] == table[0]
    g_idx = shapes.get("g_idx")
    if fits and g_idx is not None:
        fits = len(g_idx) == 1 and (g_idx[0] + 1) // 2 == table[1]
    if not fits:
        raise _misfit(where, layer, "embeddings_scale", scale, "embeddings", table, mode)


def unpack_int4(packed: np.ndarray, orig_len: int, axis: int = -1) -> np.ndarray:
    """Keras's `quantizers.unpack_int4`: two signed nibbles per byte, the low one first."""
    b = np.moveaxis(np.asarray(packed).view(np.uint8), axis, 0)
    low = ((b & 0x0F) ^ 8).astype(np.int8) - 8
    high = (((b >> 4) & 0x0F) ^ 8).astype(np.int8) - 8
    out = np.stack([low, high], axis=1).reshape((-1, *b.shape[1:]))[:orig_len]
    return np.moveaxis(out, 0, axis)


def dequantize(class_name: str, mode: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The float values Keras computes with, or None where wtool does not know the layout (EinsumDense, gptq)."""
    kind = base_mode(mode)
    if (class_name, kind) not in DEQUANTIZABLE:
        return None
    if class_name == "Dense":
        q, scale = arrays["kernel"], arrays["kernel_scale"].astype(np.float32)
        units = scale.shape[-1]
        if kind == "int4":
            q = unpack_int4(q, units, axis=-1)
        if scale.ndim == 1:
            return (q.astype(np.float32) / scale).astype(np.float32)
        g = arrays["g_idx"].astype(np.int64)
        zero = arrays["kernel_zero"].astype(np.float32)
        return ((q.astype(np.float32) - zero[g]) * scale[g]).astype(np.float32)
    q, scale = arrays["embeddings"], arrays["embeddings_scale"].astype(np.float32)
    if kind == "int4":
        if "g_idx" not in arrays:
            return None  # per-channel int4: the unpacked width (odd or even) is not in the arrays
        q = unpack_int4(q, arrays["g_idx"].shape[0], axis=-1)
    if scale.ndim == 1 or "embeddings_zero" not in arrays:
        return (q.astype(np.float32) / scale.reshape(scale.shape[0], -1)).astype(np.float32)
    g = arrays["g_idx"].astype(np.int64)
    zero = arrays["embeddings_zero"].astype(np.float32)
    return ((q.astype(np.float32) - zero[:, g]) * scale[:, g]).astype(np.float32)


def quantized_values_of(class_name: str | None, mode: str | None, var: str) -> bool:
    """Whether `var` holds the layer's quantized values (the int8 or packed int4 kernel or table)."""
    return mode is not None and base_mode(mode) in ("int8", "int4", "gptq", "awq") \
        and VALUES.get(class_name or "") == var


def stored_as(class_name: str | None, mode: str | None, var: str) -> str | None:
    """How the values are stored when the dtype column alone does not say: `packed int4`."""
    if quantized_values_of(class_name, mode, var) and base_mode(mode or "") in ("int4", "awq"):
        return "packed int4"
    return None
