"""Text safety and output primitives shared by every layer: escaping names from untrusted files,
JSON-safe values, and writes that do not lose bytes in a pipe.

Foundation module: imports nothing from wtool.
"""

from __future__ import annotations

import math
import os
from typing import IO, Any


def jsonable(value: Any) -> Any:
    """Make numpy scalars/arrays and non-finite floats JSON-safe (NaN -> null would lose info: use strings)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None  # type: ignore[assignment]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if np is not None:
        if isinstance(value, np.ndarray):
            return jsonable(value.tolist())
        if isinstance(value, np.generic):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


# Terminal control characters, shown as \\xNN: all of C0 (but newline), DEL and C1; and the
# invisible format characters that reorder or hide text (bidi overrides, zero-width), as \\uNNNN.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x0A), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]}
_ESCAPES.update({c: f"\\u{c:04x}" for c in [*range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065),
                                             *range(0x2066, 0x206A), 0xFEFF]})
_ESCAPES_ONE_LINE = {**_ESCAPES, 0x0A: "\\x0a"}


def printable(text: object) -> str:
    """The text with terminal control characters escaped (names and messages can come from untrusted files).

    Newlines are kept: use `one_line` for a name, a path or a table cell.
    """
    return str(text).translate(_ESCAPES)


def one_line(text: object) -> str:
    """As `printable`, newlines escaped too: a name from a file cannot start a line of its own."""
    return str(text).translate(_ESCAPES_ONE_LINE)


def write_all(stream: IO[str], text: str) -> None:
    """Write text to a stream that may be a pipe, as `cat` does: every byte, or an error.

    A single large write into a pipe whose reader quits (`| head`) can come back short, and
    Python's text layer then drops the rest without a word, so the run would look complete.
    Where the stream has a file descriptor, the bytes go out with os.write until all are taken
    (a reader that has gone raises BrokenPipeError); elsewhere (tests, StringIO) a plain write.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        stream.write(text)
        return
    stream.flush()
    data = memoryview(text.encode(getattr(stream, "encoding", None) or "utf-8",
                                  getattr(stream, "errors", None) or "strict"))
    while data:
        data = data[os.write(fd, data):]
