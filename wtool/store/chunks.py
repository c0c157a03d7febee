"""Walk an array's index space in bounded, C-ordered blocks (so memory stays flat on large weights)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

DEFAULT_MAX_ELEMENTS = 1 << 20
ML_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")  # 1M elements (4 MB of float32) per block


def is_numeric(dtype: Any) -> bool:
    """Whether statistics and tolerances apply (bool, integers, floats; not strings or objects).

    bfloat16 and float8 (ml_dtypes, as .safetensors files hold them) are floats too.
    """
    return getattr(dtype, "kind", None) in ("b", "i", "u", "f") or getattr(dtype, "name", "") in ML_FLOATS


def iter_blocks(shape: tuple[int, ...], max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[tuple[object, ...]]:
    """Yield index tuples covering `shape` in C order, each selecting at most `max_elements` elements.

    Blocks are contiguous in C order, so writing them one after another gives the array's bytes.
    """
    max_elements = max(1, int(max_elements))
    ndim = len(shape)
    if ndim == 0:
        yield ()
        return
    if any(d == 0 for d in shape):
        return
    axis = ndim - 1
    for a in range(ndim):
        if math.prod(shape[a + 1:]) <= max_elements:
            axis = a
            break
    inner = math.prod(shape[axis + 1:])
    step = max(1, max_elements // max(inner, 1))
    for outer in _ndindex(shape[:axis]):
        for start in range(0, shape[axis], step):
            yield outer + (slice(start, min(start + step, shape[axis])),)


def _ndindex(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    if not shape:
        yield ()
        return
    for i in range(shape[0]):
        for rest in _ndindex(shape[1:]):
            yield (i, *rest)
