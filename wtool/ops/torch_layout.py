"""PyTorch conventions -> Keras, for `transfer SRC.safetensors TARGET --layout torch`.

A PyTorch state dict names a module's tensors `weight`, `bias`, `running_mean`, ...; the
Keras layer it goes into decides what each becomes, by the target's variable names:

| target has | torch -> keras |
|---|---|
| `kernel` | `weight` -> `kernel`: Linear (out, in) -> (in, out); Conv1d (O, I, k) -> (k, I, O); Conv2d (O, I, kH, kW) -> (kH, kW, I, O) (ConvTranspose2d (I, O, kH, kW) -> (kH, kW, O, I), the same permutation); a 2-D weight into a kernel of higher rank (EinsumDense / MultiHeadAttention projections) -> transposed, then reshaped to the target's shape; `bias` -> `bias` (reshaped when the target splits heads) |
| `depthwise_kernel`, or a `kernel` whose shape says depthwise | `weight` (C*M, 1, kH, kW) -> (kH, kW, C, M) |
| `gamma` (BatchNorm, LayerNorm) | `weight` -> `gamma`, `bias` -> `beta`, `running_mean` -> `moving_mean`, `running_var` -> `moving_variance`; `num_batches_tracked` ignored |
| `embeddings` | `weight` -> `embeddings` |
| `recurrent_kernel` (LSTM, GRU) | `weight_ih_l0` -> `kernel` (transposed), `weight_hh_l0` -> `recurrent_kernel` (transposed), `bias_ih_l0` + `bias_hh_l0` -> `bias` (LSTM: summed; GRU with reset_after: stacked (2, 3H)); GRU gates reordered from torch's (r, z, n) to Keras's (z, r, h); LSTM gates are (i, f, g, o) in both |

Each conversion is recorded as text on the pair (`transpose(1, 0)`, ...). A tensor the
target layer has no place for is reported as unused; a shape that does not fit after
conversion is a mismatch, as in any transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from wtool.store.types import WeightInfo

IGNORED = ("num_batches_tracked",)
NORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def torch_key(key: str) -> tuple[str, str]:
    """(module, tensor) of a PyTorch key: `encoder.0.weight` -> (`encoder.0`, `weight`)."""
    module, _, var = key.rpartition(".")
    return (module, var) if module else (key, key)


def common_prefix(keys: Sequence[str], sep: str = ".") -> str:
    """The prefix every key shares (`model.`, `module.model.`), leaving module and tensor names."""
    if not keys:
        return ""
    parts = [k.split(sep) for k in keys]
    prefix: list[str] = []
    for i in range(min(len(p) for p in parts) - 2):  # keep at least `module.tensor`
        names = {p[i] for p in parts}
        if len(names) != 1:
            break
        prefix.append(names.pop())
    return sep.join(prefix) + sep if prefix else ""


def source_view(keys: Sequence[tuple[str, tuple[int, ...], str]], prefix: str) -> list[WeightInfo]:
    """Source weights as the transfer pairs them: layer = module (prefix stripped), name = tensor.

    `h5_name` keeps the file's key, to read the values from.
    """
    out = []
    for key, shape, dtype in keys:
        stripped = key[len(prefix):] if prefix and key.startswith(prefix) else key
        module, var = torch_key(stripped)
        out.append(WeightInfo(f"{module}/{var}", module, var, shape, dtype, True, key))
    return out


Convert = Callable[[np.ndarray], np.ndarray]


def _kernel(src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> tuple[Convert, str] | None:
    rank = len(src_shape)
    if rank == 2 and len(dst_shape) == 2:
        return (lambda a: a.T), "transpose(1, 0)"
    if rank == 2 and len(dst_shape) > 2 and int(np.prod(dst_shape)) == int(np.prod(src_shape)):
        return (lambda a: a.T.reshape(dst_shape)), f"transpose(1, 0), reshape {tuple(dst_shape)}"
    if rank == 3 and len(dst_shape) == 3:
        return (lambda a: a.transpose(2, 1, 0)), "transpose(2, 1, 0)"
    if rank == 4 and len(dst_shape) == 4:
        o, i, kh, kw = src_shape
        if (kh, kw, i, o) != tuple(dst_shape) and i == 1 and (kh, kw) == tuple(dst_shape[:2]) \
                and o == dst_shape[2] * dst_shape[3]:
            return _depthwise(int(dst_shape[2]), int(dst_shape[3]))  # Keras 3 names it `kernel` too
        return (lambda a: a.transpose(2, 3, 1, 0)), "transpose(2, 3, 1, 0)"
    if rank == 5 and len(dst_shape) == 5:
        return (lambda a: a.transpose(2, 3, 4, 1, 0)), "transpose(2, 3, 4, 1, 0)"
    return None


def _depthwise(c: int, m: int) -> tuple[Convert, str]:
    """torch (C*M, 1, kH, kW) -> Keras (kH, kW, C, M): output channel c*M + k reads input channel c."""
    return ((lambda a: a.reshape(c, m, *a.shape[2:]).transpose(2, 3, 0, 1)),
            f"reshape ({c}, {m}, kH, kW), transpose(2, 3, 0, 1)")


def _reshape_to(dst_shape: tuple[int, ...]) -> tuple[Convert, str]:
    return (lambda a: a.reshape(dst_shape)), f"reshape {tuple(dst_shape)}"


def _gru_order(hidden: int) -> np.ndarray:
    """Indices that turn torch's (r, z, n) gate blocks into Keras's (z, r, h)."""
    r, z, n = (np.arange(hidden) + i * hidden for i in range(3))
    return np.concatenate([z, r, n])


class Conversion:
    """How one target weight is made from one or more source tensors."""

    def __init__(self, sources: list[str], make: Callable[[list[np.ndarray]], np.ndarray], text: str,
                 shape: tuple[int, ...] | None) -> None:
        self.sources = sources
        self.make = make
        self.text = text
        self.shape = shape  # the shape `make` produces (None when it cannot fit the target)


def plan_layer(src: Sequence[Any], dst: Sequence[Any]) -> tuple[dict[str, Conversion], list[str], list[str]]:
    """For one layer pair: {target path: Conversion}, unused source paths, ignored source paths."""
    by_var = {w.name: w for w in src}
    dst_by_var = {w.name.rsplit("/", 1)[-1]: w for w in dst}
    out: dict[str, Conversion] = {}
    used: set[str] = set()
    ignored = [w.path for w in src if w.name in IGNORED]

    def take(var: str, target_var: str, conv: tuple[Convert, str] | None) -> None:
        s, d = by_var.get(var), dst_by_var.get(target_var)
        if s is None or d is None:
            return
        used.add(s.path)
        if conv is None:
            out[d.path] = Conversion([s.h5_name], lambda arrays: arrays[0], "as is", tuple(s.shape))
            return
        fn, text = conv
        try:
            shape = tuple(fn(np.broadcast_to(np.uint8(0), tuple(s.shape))).shape)  # a view: no allocation
        except ValueError:
            shape = None
        def make(arrays: list[np.ndarray], fn: Convert = fn) -> np.ndarray:
            return fn(arrays[0])

        out[d.path] = Conversion([s.h5_name], make, text, shape)

    if "recurrent_kernel" in dst_by_var:
        _recurrent(by_var, dst_by_var, out, used)
    elif "gamma" in dst_by_var or "moving_mean" in dst_by_var:
        for var, target_var in NORM_NAMES.items():
            d = dst_by_var.get(target_var)
            take(var, target_var, _reshape_to(tuple(d.shape)) if d is not None and len(d.shape) != 1 else None)
    elif "depthwise_kernel" in dst_by_var:
        d = dst_by_var["depthwise_kernel"]
        s = by_var.get("weight")
        if s is not None and len(s.shape) == 4 and len(d.shape) == 4:
            take("weight", "depthwise_kernel", _depthwise(int(d.shape[2]), int(d.shape[3])))
        take("bias", "bias", None)
    elif "embeddings" in dst_by_var:
        take("weight", "embeddings", None)
    else:
        d = dst_by_var.get("kernel")
        s = by_var.get("weight")
        if d is not None and s is not None:
            take("weight", "kernel", _kernel(tuple(s.shape), tuple(d.shape)))
        b = dst_by_var.get("bias")
        if b is not None:
            take("bias", "bias", _reshape_to(tuple(b.shape)) if len(b.shape) != 1 else None)
    unused = [w.path for w in src if w.path not in used and w.path not in ignored]
    return out, unused, ignored


def _recurrent(by_var: dict[str, Any], dst_by_var: dict[str, Any], out: dict[str, Conversion],
               used: set[str]) -> None:
    """LSTM / GRU, one layer (`_l0`): kernels transposed, biases combined, GRU gates reordered."""
    w_ih, w_hh = by_var.get("weight_ih_l0"), by_var.get("weight_hh_l0")
    b_ih, b_hh = by_var.get("bias_ih_l0"), by_var.get("bias_hh_l0")
    kernel, recurrent, bias = dst_by_var.get("kernel"), dst_by_var["recurrent_kernel"], dst_by_var.get("bias")
    hidden = int(recurrent.shape[0])
    gates = int(recurrent.shape[-1]) // max(hidden, 1)
    order = _gru_order(hidden) if gates == 3 else None
    how = "transpose(1, 0)" + (", gates (r, z, n) -> (z, r, h)" if order is not None else "")

    def matrix(a: np.ndarray) -> np.ndarray:
        return (a[order] if order is not None else a).T

    def shape_of(s: Any) -> tuple[int, ...]:
        return (int(s.shape[1]), int(s.shape[0])) if len(s.shape) == 2 else tuple(s.shape)

    for s, d in ((w_ih, kernel), (w_hh, recurrent)):
        if s is not None and d is not None:
            used.add(s.path)
            out[d.path] = Conversion([s.h5_name], lambda arrays: matrix(arrays[0]), how, shape_of(s))
    if bias is not None and b_ih is not None and b_hh is not None:
        used.update((b_ih.path, b_hh.path))

        def vec(a: np.ndarray) -> np.ndarray:
            return a[order] if order is not None else a

        if len(bias.shape) == 2:  # GRU reset_after=True: (2, 3H) = input bias, recurrent bias
            out[bias.path] = Conversion([b_ih.h5_name, b_hh.h5_name],
                                        lambda arrays: np.stack([vec(arrays[0]), vec(arrays[1])]),
                                        "stack(bias_ih, bias_hh)" + how[len("transpose(1, 0)"):],
                                        (2, int(b_ih.shape[0])))
        elif order is None:
            out[bias.path] = Conversion([b_ih.h5_name, b_hh.h5_name], lambda arrays: arrays[0] + arrays[1],
                                        "bias_ih + bias_hh", (int(b_ih.shape[0]),))
        else:  # GRU reset_after=False has no torch equivalent: a mismatch, not a silent approximation
            out[bias.path] = Conversion([b_ih.h5_name, b_hh.h5_name], lambda arrays: arrays[0],
                                        "GRU reset_after=False has no PyTorch equivalent", None)
