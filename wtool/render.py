"""One output object: data to stdout (text or one JSON document), everything else to stderr; value formatting."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
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


_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: str) -> str:
    """The text with terminal control characters escaped (names and messages can come from untrusted files)."""
    return str(text).translate(_ESCAPES)


def cell(text: object) -> str:
    """Text from a file, safe inside rich markup: control characters escaped, brackets not taken as markup."""
    from rich.markup import escape

    return escape(printable(str(text)))


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away (`| head`), so the exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout descriptor (embedded use, test runners)
        pass


def colour_terminal(stream: TextIO) -> bool:
    """Whether to style text on `stream`, deciding as rich does: NO_COLOR, FORCE_COLOR, a TTY that is not dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") not in ("dumb", "unknown")


class TextWriter:
    """Plain lines, with control characters escaped and a styled lead-in only on a colour terminal.

    inspect and diff print fixed-width text and notes go to stderr as plain lines: no markup is
    parsed (a path with brackets stays as it is) and no rich import (a tenth of inspect's run time).
    """

    STYLES = {"bold": "\x1b[1m", "yellow": "\x1b[33m"}
    RESET = "\x1b[0m"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.styled = colour_terminal(stream)

    def line(self, text: str = "", head: str = "", style: str = "bold") -> None:
        """Write `head` (styled where the stream is a colour terminal), then `text`, then a newline."""
        head = printable(head)
        if head and self.styled:
            head = f"{self.STYLES[style]}{head}{self.RESET}"
        line = f"{head}{printable(text)}\n"
        try:
            self.stream.write(line)
        except UnicodeEncodeError:  # a stdout that is not UTF-8 (PYTHONIOENCODING=ascii, a latin-1 locale)
            encoding = self.encoding
            self.stream.write(line.encode(encoding, "backslashreplace").decode(encoding))

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def can_show(self, text: str) -> bool:
        """Whether the stream's encoding has these characters (else pick an ASCII form)."""
        try:
            text.encode(self.encoding)
        except (UnicodeEncodeError, LookupError):
            return False
        return True


class Output:
    """Where a command's results go. Commands build data; this decides how it is shown.

    The rich consoles are made on first use, so commands that print plain text never import rich.
    """

    def __init__(self, json_mode: bool = False, quiet: bool = False, stdout: Console | None = None,
                 stderr: Console | None = None) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._stdout = stdout
        self._stderr = stderr

    @staticmethod
    def _console(stream: TextIO) -> Console:
        from rich.console import Console

        return Console(file=stream, soft_wrap=True)

    @property
    def stdout(self) -> Console:
        if self._stdout is None:
            self._stdout = self._console(sys.stdout)
        return self._stdout

    @property
    def stderr(self) -> Console:
        if self._stderr is None:
            self._stderr = self._console(sys.stderr)
        return self._stderr

    def result(self, document: dict[str, Any], human: Callable[[Console], None] | None = None) -> None:
        """Emit the command's result: one JSON document with --json, else the human rendering."""
        if self.json_mode:
            self._write_json(document)
        elif human is not None:
            human(self.stdout)

    def result_text(self, document: dict[str, Any], human: Callable[[TextWriter], None]) -> None:
        """As `result`, for a human rendering in plain lines (no rich)."""
        if self.json_mode:
            self._write_json(document)
        else:
            human(TextWriter(sys.stdout))
            sys.stdout.flush()

    @staticmethod
    def _write_json(document: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(_jsonable(document), indent=2) + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """Progress and notes: stderr, silenced by --quiet. Plain text (sys.stderr looked up now, so a
        running rich progress bar, which redirects it, keeps its place below the note)."""
        if not self.quiet:
            TextWriter(sys.stderr).line(message)

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with --quiet."""
        TextWriter(sys.stderr).line(f" {message}", head="warning:", style="yellow")

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
