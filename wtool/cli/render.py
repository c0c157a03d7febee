"""One output object: data to stdout (text or one JSON document), everything else to stderr; value formatting."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal, TextIO

from wtool.text import jsonable as _jsonable
from wtool.text import one_line, printable, write_all

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["_jsonable", "one_line", "printable", "write_all"]  # re-exported: commands import them from here


def cell(text: object) -> str:
    """Text from a file, safe inside rich markup: control characters escaped, brackets not taken as markup."""
    from rich.markup import escape

    return escape(one_line(text))


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away (`| head`), so the exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout descriptor (embedded use, test runners)
        pass


def can_encode(encoding: str | None, text: str) -> bool:
    try:
        text.encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def colour_terminal(stream: IO[str]) -> bool:
    """Whether to style text on `stream`: NO_COLOR set turns styling off, FORCE_COLOR on; else a TTY
    whose TERM is not dumb. (rich keeps bold under NO_COLOR; plain text here has nothing but bold.)"""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") not in ("dumb", "unknown")


Style = Literal["bold", "yellow"]


class TextWriter:
    """Plain lines, control characters escaped, a styled lead-in only on a colour terminal.

    inspect, diff and the notes on stderr print this way: no markup is parsed (a path with
    brackets stays as it is) and rich is not imported (a tenth of inspect's run time).
    """

    STYLES: dict[str, str] = {"bold": "\x1b[1m", "yellow": "\x1b[33m"}
    RESET = "\x1b[0m"

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.styled = colour_terminal(stream)

    def line(self, text: str = "", head: str = "", style: Style = "bold") -> None:
        """Write `head` (styled where the stream is a colour terminal), then `text`, then a newline."""
        head = printable(head)
        if head and self.styled:
            head = f"{self.STYLES[style]}{head}{self.RESET}"
        line = f"{head}{printable(text)}\n"
        try:
            write_all(self.stream, line)
        except UnicodeEncodeError:  # a stdout that is not UTF-8 (PYTHONIOENCODING=ascii, a latin-1 locale)
            encoding = self.encoding
            write_all(self.stream, line.encode(encoding, "backslashreplace").decode(encoding))

    def table(self, headers: list[str], rows: list[list[str]], right: set[str] | frozenset[str] = frozenset()) -> None:
        """A fixed-width table (see fmt_table) with its header line in bold."""
        head, _, body = fmt_table(headers, rows, right).partition("\n")
        self.line(head=head)
        if body:
            self.line(body)

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def can_show(self, text: str) -> bool:
        """Whether the stream's encoding has these characters (else pick an ASCII form)."""
        return can_encode(self.encoding, text)


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

        class PipeConsole(Console):
            def on_broken_pipe(self) -> None:
                """rich would exit 1 here; let wtool's one handler end the command (cli.WtoolGroup.invoke)."""
                self.quiet = True
                raise BrokenPipeError

        if not can_encode(getattr(stream, "encoding", None), "±█") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # a stdout that is not UTF-8: no UnicodeEncodeError
        return PipeConsole(file=stream, soft_wrap=True)

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
            human(TextWriter(self._data_stream))
            self._data_stream.flush()

    @property
    def _data_stream(self) -> IO[str]:
        return self._stdout.file if self._stdout is not None else sys.stdout

    def _write_json(self, document: dict[str, Any]) -> None:
        # Streamed in pieces (a large --sample is megabytes), so a reader that stops early is noticed.
        stream = self._data_stream
        json.dump(_jsonable(document), stream, indent=2)
        stream.write("\n")
        stream.flush()

    def _notes(self) -> TextWriter:
        # sys.stderr looked up now: a running rich progress bar redirects it, and keeps its place below.
        return TextWriter(self._stderr.file if self._stderr is not None else sys.stderr)

    def info(self, message: str) -> None:
        """Progress and notes: stderr, silenced by --quiet."""
        if not self.quiet:
            self._notes().line(message)

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with --quiet."""
        self._notes().line(f" {message}", head="warning:", style="yellow")

    @property
    def show_progress(self) -> bool:
        return not self.quiet and not self.json_mode and self.stderr.is_terminal


def fmt_shape(shape: tuple[int, ...] | list[int] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_plural(n: int, noun: str) -> str:
    """`1 weight`, `2 weights`, `1,024 params`."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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
    Cells are made one-line and printable first, so the widths are those of what is shown.
    """
    rows = [[one_line(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, value in enumerate(row):
            if len(value) > widths[i]:
                widths[i] = len(value)
    aligned_right = [h in right for h in headers]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, aligned_right, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
