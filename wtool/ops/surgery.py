"""Weight surgery: `set-weights` and `transfer` as plan -> (render) -> apply.

A plan is plain data: what goes where, with shapes, dtypes, statistics and every
problem found. Nothing is written while planning, and all problems are collected
before any is reported, so one run shows the whole list. `apply_*` writes the plan
through `wtool.store.write` (HDF5 level, no TensorFlow), which reads the values back.

Weight paths are the store's canonical paths (`hidden/kernel`, `features/bn/gamma`),
the same in every format; globs are shell-style and a glob naming a layer covers the
weights under it (`features` selects `features/d1/kernel`).

The code lives in one module per concern; this module gathers their public names:
`planning` (problems, statistics, dtype rules), `initializers` (`--init`), `set_weights`,
`transfer`, `rebuild` (Keras load/save for format changes) and `head` (`--replace-head`).
"""

from __future__ import annotations

from wtool.ops.head import HeadReport, replace_head
from wtool.ops.initializers import ALIASES, INITIALIZERS, InitShapeError, compute_fans, parse_initializer
from wtool.ops.planning import (
    Problem,
    Stats,
    closest,
    dtype_problem,
    glob_hits,
    parse_assignment,
    problems_error,
)
from wtool.ops.rebuild import load_with_compile, rebuild_with_keras
from wtool.ops.set_weights import Assignment, SetWeightsPlan, apply_set_weights, plan_set_weights
from wtool.ops.transfer import (
    LEGACY_VAR_NAMES,
    Pair,
    TransferPlan,
    apply_transfer,
    normalize_var,
    plan_transfer,
    transfer_hint,
)

__all__ = [
    "ALIASES", "INITIALIZERS", "LEGACY_VAR_NAMES", "Assignment", "HeadReport", "InitShapeError", "Pair", "Problem",
    "SetWeightsPlan", "Stats", "TransferPlan", "apply_set_weights", "apply_transfer", "closest", "compute_fans",
    "dtype_problem", "glob_hits", "load_with_compile", "normalize_var", "parse_assignment", "parse_initializer",
    "plan_set_weights", "plan_transfer", "problems_error", "rebuild_with_keras", "replace_head", "transfer_hint",
]
