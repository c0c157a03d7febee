"""What a run has done so far: the per-epoch records, early-stopping state and the running epoch's loss
(all of it stored in every checkpoint, so a resumed run goes on exactly), and the --history file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from wtool.fileio import atomic_output


@dataclass
class RunState:
    """Where the run stands; `partial` is the loss sum and sample count of the running epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    es: dict[str, Any] = field(default_factory=lambda: {"best": None, "best_epoch": None, "wait": 0})
    start_epoch: int = 0
    start_step: int = 0
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0])
    epochs_run: int = 0
    stopped_early: bool = False
    # Calls after the first of each chunk shape (which traces, and compiles with XLA), for the steady rate.
    steady_samples: int = 0
    steady_seconds: float = 0.0
    seen_shapes: set[tuple[int, ...]] = field(default_factory=set)


def steady_rate(records: list[dict[str, Any]], n: int, chunk_samples: int, chunk_seconds: float) -> float | None:
    """Samples/s after warm-up: epochs after this run's first, else calls after the first (tracing) one."""
    later = records[1:]
    seconds = sum(r["seconds"] for r in later)
    if later and seconds > 0:
        return round(n * len(later) / seconds, 1)
    return round(chunk_samples / chunk_seconds, 1) if chunk_seconds > 0 else None


def write_history(target: str | None, history: list[dict[str, Any]]) -> None:
    if not target:
        return
    with atomic_output(target) as tmp:
        if target.lower().endswith(".json"):
            from wtool.text import jsonable

            tmp.write_text(json.dumps(jsonable(history), indent=1) + "\n")
        else:
            keys: list[str] = []
            for rec in history:
                keys += [k for k in rec if k not in keys]
            lines = [",".join(keys)]
            for rec in history:
                lines.append(",".join("" if rec.get(k) is None else repr(rec[k]) if isinstance(rec[k], float)
                                      else str(rec[k]) for k in keys))
            tmp.write_text("\n".join(lines) + "\n")
