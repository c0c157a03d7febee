"""One output object: data to stdout (a rich table or one JSON document), everything else to stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console


def _jsonable(value: Any) -> Any:
    """Make numpy scalars/arrays and non-finite floats JSON-safe (NaN -> null would lose info: use strings)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None  # type: ignore[assignment]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if np is not None:
        if isinstance(value, np.ndarray):
            return _jsonable(value.tolist())
        if isinstance(value, np.generic):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


@dataclass
class Output:
    """Where a command's results go. Commands build data; this decides how it is shown."""

    json_mode: bool = False
    quiet: bool = False
    stdout: Console = field(default_factory=lambda: Console(file=sys.stdout, soft_wrap=True))
    stderr: Console = field(default_factory=lambda: Console(file=sys.stderr, soft_wrap=True))

    def result(self, document: dict[str, Any], human: Callable[[Console], None] | None = None) -> None:
        """Emit the command's result: one JSON document with --json, else the human rendering."""
        if self.json_mode:
            sys.stdout.write(json.dumps(_jsonable(document), indent=2) + "\n")
            sys.stdout.flush()
        elif human is not None:
            human(self.stdout)

    def info(self, message: str) -> None:
        """Progress and notes: stderr, silenced by --quiet."""
        if not self.quiet:
            self.stderr.print(message, highlight=False)

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with --quiet."""
        self.stderr.print(f"[yellow]warning:[/] {message}", highlight=False)

    @property
    def show_progress(self) -> bool:
        return not self.quiet and not self.json_mode and self.stderr.is_terminal


def fmt_shape(shape: tuple[int, ...] | list[int] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_float(x: float) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.3e}"
    return f"{x:.4f}"


def fmt_table(headers: list[str], rows: list[list[str]], right: set[str] | frozenset[str] = frozenset()) -> str:
    """A plain fixed-width table (two spaces between columns), fast for tens of thousands of rows.

    Columns named in `right` are right-aligned. No trailing spaces, no folding: scripts can grep it.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    aligned_right = [h in right for h in headers]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, aligned_right, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
