"""A scope for building Keras graphs cheaply and within budget (TensorFlow is imported lazily).

When wtool builds a graph only to receive the weights stored in a file, running the
config's initialisers is wasted work that a stranger controls: a 12000x12000 Orthogonal
initialiser costs minutes of CPU. Inside `cheap_build()` every Keras variable that would
run an initialiser starts as zeros instead (the file's weights overwrite them), and every
variable created is counted against `--max-params`, so a graph the config check could not
size is still stopped before it allocates more than the budget.

    with cheap_build(source=path):
        model = keras.saving.load_model(path, safe_mode=True)

`cheap_build(zero_init=False)` keeps the initialisers (a fresh model from `new`) but still
enforces the budget.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

from wtool.errors import InputError
from wtool.safety import limits as _limits
from wtool.safety.limits import Limits, fmt_count

_lock = threading.RLock()


class ParamBudgetExceeded(InputError):
    """The graph being built creates more variables than --max-params allows (exit 3)."""


class _State:
    def __init__(self, budget: int, zero_init: bool, source: str) -> None:
        self.budget = budget
        self.zero_init = zero_init
        self.source = source
        self.created = 0
        self.exceeded: ParamBudgetExceeded | None = None


def _size_of(shape: Any) -> int | None:
    try:
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        return None
    return math.prod(dims) if all(d >= 0 for d in dims) else None


@contextlib.contextmanager
def cheap_build(source: str = "model", *, zero_init: bool = True, limits: Limits | None = None) -> Iterator[_State]:
    """Count (and optionally zero-initialise) every Keras variable created inside the block."""
    limits = limits or _limits.current()
    from keras.src.backend.common import variables as kv

    state = _State(limits.max_params, zero_init, source)
    original = kv.Variable.__init__

    def guarded_init(self: Any, initializer: Any, shape: Any = None, dtype: Any = None, *args: Any,
                     **kwargs: Any) -> None:
        name = str(kwargs.get("name") or "")
        if callable(initializer) or isinstance(initializer, str):
            size = _size_of(shape) if shape is not None else None
            if state.zero_init and shape is not None and "seed_generator" not in name:
                initializer = "zeros"
        else:
            size = _size_of(getattr(initializer, "shape", ()))
        if size is not None:
            state.created += size
            if state.created > state.budget:
                state.exceeded = ParamBudgetExceeded(
                    f"{state.source}: the graph creates more than {fmt_count(state.budget)} parameters (limit)",
                    "raise the limit with --max-params if you trust this file and have the memory")
                raise state.exceeded
        original(self, initializer, shape, dtype, *args, **kwargs)

    with _lock:
        kv.Variable.__init__ = guarded_init  # type: ignore[method-assign]
        try:
            yield state
        except Exception:
            if state.exceeded is not None:
                raise state.exceeded from None
            raise
        finally:
            kv.Variable.__init__ = original  # type: ignore[method-assign]
