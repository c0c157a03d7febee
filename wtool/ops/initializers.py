"""`set-weights --init`: Keras's initializer formulas computed with numpy.

The same distributions as keras/src/initializers, not the same random stream as Keras.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from wtool.errors import UsageError
from wtool.ops.planning import shape_text

TRUNC_STD = 0.87962566103423978  # stddev of a unit normal truncated at +-2


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Keras's compute_fans: dense kernels (in, out); conv kernels (*spatial, in, out)."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype: np.dtype) -> np.ndarray:
    out = rng.standard_normal(shape, dtype=np.float32)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        bad = np.abs(out) > 2.0
    out *= np.float32(std)
    return out.astype(dtype, copy=False)


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., np.ndarray]:
    def init(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out}.get(mode, (fan_in + fan_out) / 2.0)
        s = scale / max(1.0, n)
        if distribution == "truncated_normal":
            return _truncated_normal(rng, shape, math.sqrt(s) / TRUNC_STD, dtype)
        if distribution == "untruncated_normal":
            return (rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(s))).astype(dtype)
        limit = math.sqrt(3.0 * s)
        return rng.uniform(-limit, limit, shape).astype(dtype)

    return init


class InitShapeError(ValueError):
    """An initializer that cannot fill a weight of this shape (reported as a plan problem, exit 4)."""


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if len(shape) < 2:
        raise InitShapeError(f"orthogonal needs a weight of rank 2 or more, not shape {shape_text(shape)}")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape).astype(dtype)


def _identity(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if len(shape) != 2:
        raise InitShapeError(f"identity needs a 2-D weight, not shape {shape_text(shape)}")
    return np.eye(*shape, dtype=dtype)


INITIALIZERS: dict[str, Callable[[np.random.Generator, tuple[int, ...], np.dtype], np.ndarray]] = {
    "zeros": lambda rng, shape, dtype: np.zeros(shape, dtype),
    "ones": lambda rng, shape, dtype: np.ones(shape, dtype),
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "variance_scaling": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "random_normal": lambda rng, shape, dtype: (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(dtype),
    "random_uniform": lambda rng, shape, dtype: rng.uniform(-0.05, 0.05, shape).astype(dtype),
    "truncated_normal": lambda rng, shape, dtype: _truncated_normal(rng, shape, 0.05, dtype),
    "orthogonal": _orthogonal,
    "identity": _identity,
}
ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal", "zero": "zeros", "one": "ones",
           "normal": "random_normal", "uniform": "random_uniform"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def parse_initializer(spec: str) -> tuple[str, Callable[[np.random.Generator, tuple[int, ...], np.dtype], np.ndarray]]:
    """`zeros`, `constant:0.5`, `glorot_uniform` (also Keras class names such as `GlorotUniform`)."""
    text = spec.strip()
    if text.lower().startswith("constant"):
        _, _, raw = text.partition(":")
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"--init: constant needs a value, as in constant:0.5 (not {spec!r})") from None
        return f"constant:{raw}", lambda rng, shape, dtype: np.full(shape, value, dtype)
    name = _snake(text)
    name = ALIASES.get(name, name)
    if name not in INITIALIZERS:
        raise UsageError(f"--init: unknown initializer {spec!r}",
                         "use one of: " + ", ".join([*INITIALIZERS, "constant:V"]))
    return name, INITIALIZERS[name]
