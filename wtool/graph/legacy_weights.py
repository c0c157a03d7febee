"""Convert the weight arrays of one old layer to the arrays its Keras 3 layer holds.

Numpy only. Used when a layer's saved weights do not match the rebuilt layer's variables
one-to-one by name and shape: Keras 1 files (`dense_1_W`, per-gate LSTM/GRU arrays,
channels-first kernels), Theano-trained kernels (flipped), CuDNNLSTM/CuDNNGRU arrays.

`convert(cls, arrays, expected, info)` takes the layer's saved arrays in file order and
the shapes of the Keras 3 variables in their order, and returns new arrays in that order,
or raises `WeightConversionError` saying what did not fit. Every conversion is a pure
re-arrangement of values (concatenate, transpose, flip, reshape) except CuDNNLSTM's two
bias vectors, which are summed as Keras 2 did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CONV_KERNEL_CLASSES = frozenset({"Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "Conv3DTranspose"})


class WeightConversionError(ValueError):
    """The saved arrays of a layer cannot be turned into its Keras 3 variables."""


def _shapes(arrays: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
    return [tuple(a.shape) for a in arrays]


def fuse_keras1_lstm(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Keras 1 LSTM (12 arrays: W_i U_i b_i W_c U_c b_c W_f U_f b_f W_o U_o b_o) -> kernel,
    recurrent_kernel, bias with the gates in Keras 2/3 order i, f, c, o."""
    if len(arrays) != 12:
        raise WeightConversionError(f"a Keras 1 LSTM has 12 arrays, the file has {len(arrays)}")
    by_gate = {gate: arrays[3 * k: 3 * k + 3] for k, gate in enumerate("icfo")}
    order = "ifco"
    return [np.concatenate([by_gate[g][j] for g in order], axis=-1) for j in range(3)]


def fuse_keras1_gru(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Keras 1 GRU (9 arrays: W_z U_z b_z W_r U_r b_r W_h U_h b_h) -> kernel, recurrent_kernel,
    bias with the gates in Keras order z, r, h (a GRU with reset_after=False)."""
    if len(arrays) != 9:
        raise WeightConversionError(f"a Keras 1 GRU has 9 arrays, the file has {len(arrays)}")
    return [np.concatenate([arrays[3 * k + j] for k in range(3)], axis=-1) for j in range(3)]


def flip_kernel(kernel: np.ndarray) -> np.ndarray:
    """Theano convolved, TensorFlow correlates: reverse every spatial axis of a kernel."""
    index = tuple([slice(None, None, -1)] * (kernel.ndim - 2) + [slice(None), slice(None)])
    return np.ascontiguousarray(kernel[index])


def _per_gate(kernel: np.ndarray, n_gates: int, fn: Any) -> np.ndarray:
    return np.hstack([fn(k) for k in np.hsplit(kernel, n_gates)])


def from_cudnn(kind: str, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """CuDNNLSTM / CuDNNGRU arrays -> LSTM / GRU(reset_after=True) arrays."""
    if len(arrays) != 3:
        raise WeightConversionError(f"a CuDNN {kind.upper()} has 3 arrays, the file has {len(arrays)}")
    kernel, recurrent, bias = (np.asarray(a) for a in arrays)
    n_gates = 4 if kind == "lstm" else 3
    kernel = _per_gate(kernel, n_gates, lambda k: k.T.reshape(k.shape, order="F"))
    recurrent = _per_gate(recurrent, n_gates, lambda k: k.T)
    if kind == "lstm":
        bias = np.sum(np.split(bias, 2, axis=0), axis=0)
    else:
        bias = bias.reshape((2, -1))
    return [kernel, recurrent, bias]


def convert(cls: str, arrays: Sequence[np.ndarray], expected: Sequence[tuple[int, ...]],
            info: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Saved arrays of one layer (file order) -> arrays in the Keras 3 layer's variable order.

    `info` is the translation's note for the layer (`keras1`, `theano_kernel`, `cudnn`),
    `config` the layer's Keras 3 config (for `data_format`, wrapped layers).
    """
    info = info or {}
    config = config or {}
    arrays = [np.asarray(a) for a in arrays]
    expected = [tuple(s) for s in expected]
    if cls in ("Bidirectional", "TimeDistributed"):
        inner = config.get("layer") or {}
        inner_cls = inner.get("class_name", "")
        inner_cfg = inner.get("config") or {}
        if cls == "TimeDistributed":
            return convert(inner_cls, arrays, expected, info, inner_cfg)
        if len(arrays) % 2 or len(expected) % 2:
            raise WeightConversionError(f"Bidirectional weights do not split in two halves "
                                        f"({len(arrays)} saved, {len(expected)} expected)")
        h, eh = len(arrays) // 2, len(expected) // 2
        return (convert(inner_cls, arrays[:h], expected[:eh], info, inner_cfg)
                + convert(inner_cls, arrays[h:], expected[eh:], info, inner_cfg))
    if info.get("cudnn"):
        arrays = from_cudnn(info["cudnn"], arrays)
    if cls == "LSTM" and len(arrays) == 12:
        arrays = fuse_keras1_lstm(arrays)
    if cls == "GRU" and len(arrays) == 9:
        arrays = fuse_keras1_gru(arrays)
    if cls == "ConvLSTM2D" and len(arrays) == 12:
        arrays = fuse_keras1_lstm(arrays)
    if cls in CONV_KERNEL_CLASSES and arrays:
        arrays = list(arrays)
        arrays[0] = _conv_kernel(cls, arrays[0], expected[0] if expected else None, info, config)
    if cls == "ConvLSTM2D" and info.get("theano_kernel") and len(arrays) >= 2:
        arrays = [flip_kernel(arrays[0]), flip_kernel(arrays[1])] + list(arrays[2:])
    if _shapes(arrays) != expected:
        raise WeightConversionError(f"saved shapes {_fmt(_shapes(arrays))} do not fit the layer's "
                                    f"{_fmt(expected)}")
    return arrays


def _conv_kernel(cls: str, kernel: np.ndarray, expected: tuple[int, ...] | None, info: dict[str, Any],
                 config: dict[str, Any]) -> np.ndarray:
    # a channels-first layer may run channels-last after translation: `info` remembers the original
    channels_first = config.get("data_format") == "channels_first" or bool(info.get("channels_first"))
    if info.get("keras1"):
        if cls == "Conv1D" and kernel.ndim == 4:
            # Keras 1: (length, 1, in, filters); Keras 1.1: (filters, in, length, 1)
            if expected is not None and kernel.shape[0] == expected[-1] and kernel.shape[3] == 1 \
                    and kernel.shape[1] != 1:
                kernel = np.transpose(kernel, (2, 3, 1, 0))
            kernel = kernel[:, 0, :, :]
        elif cls == "Conv2D" and channels_first:
            kernel = np.transpose(kernel, (2, 3, 1, 0))
        elif cls == "Conv2DTranspose":
            kernel = np.transpose(kernel, (2, 3, 0, 1) if channels_first else (0, 1, 3, 2))
        elif cls == "Conv3D" and channels_first:
            kernel = np.transpose(kernel, (2, 3, 4, 1, 0))
    if info.get("theano_kernel"):
        kernel = flip_kernel(kernel)
    if expected is not None and tuple(kernel.shape) != expected and kernel.ndim == 4 \
            and tuple(np.transpose(kernel, (3, 2, 0, 1)).shape) == expected:
        kernel = np.transpose(kernel, (3, 2, 0, 1))
    return np.ascontiguousarray(kernel)


def _fmt(shapes: Sequence[tuple[int, ...]]) -> str:
    return "[" + ", ".join("(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")" for s in shapes) + "]"
