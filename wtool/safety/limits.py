"""Named limits for reading files from strangers, and how the command line overrides them.

Every cap wtool enforces on an input lives here as a module constant. A command runs
with one `Limits` value, `current()`; `--max-params`, `--max-layers` and `--max-bytes`
(or the environment variables WTOOL_MAX_PARAMS / WTOOL_MAX_LAYERS / WTOOL_MAX_BYTES)
replace the defaults for that run, and tests shrink them with `override(...)` to
exercise the checks on small files.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass

from wtool.errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Graph size, computed from the config before anything is built.
MAX_PARAMS = 1_000_000_000  # weights (all variables) one model may declare: 4 GB of float32
MAX_LAYERS = 10_000  # layers, counting those inside nested models and wrappers

# Config JSON (config.json, the `model_config` attribute, new --config).
MAX_CONFIG_BYTES = 32 * MiB
MAX_CONFIG_DEPTH = 64  # nesting of JSON objects/arrays
MAX_CONFIG_NODES = 2_000_000  # JSON values in total

# Bytes read from one input: the sum of uncompressed archive members, of HDF5
# datasets that will be read, of arrays in an .npz.
MAX_BYTES = 16 * GiB
MAX_METADATA_BYTES = 1 * MiB  # metadata.json inside a .keras archive
MAX_ARCHIVE_MEMBERS = 10_000  # entries in a .keras or .npz zip (central directory)
MAX_ARRAY_DIMS = 32  # dimensions of one array
MAX_LABELS_BYTES = 256 * MiB  # a --labels file (class names), read whole: millions of names


@dataclass(frozen=True)
class Limits:
    """The caps one command run enforces. Build variants with `dataclasses.replace`."""

    max_params: int = MAX_PARAMS
    max_layers: int = MAX_LAYERS
    max_bytes: int = MAX_BYTES
    max_config_bytes: int = MAX_CONFIG_BYTES
    max_config_depth: int = MAX_CONFIG_DEPTH
    max_config_nodes: int = MAX_CONFIG_NODES
    max_metadata_bytes: int = MAX_METADATA_BYTES
    max_archive_members: int = MAX_ARCHIVE_MEMBERS
    max_array_dims: int = MAX_ARRAY_DIMS
    max_labels_bytes: int = MAX_LABELS_BYTES


DEFAULT = Limits()

_current: contextvars.ContextVar[Limits] = contextvars.ContextVar("wtool_limits", default=DEFAULT)


def current() -> Limits:
    """The limits of the running command (the defaults unless overridden)."""
    return _current.get()


@contextlib.contextmanager
def override(**changes: int) -> Iterator[Limits]:
    """Run a block with some limits replaced, e.g. `with override(max_params=10**6): ...`."""
    new = dataclasses.replace(current(), **changes)
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)


def set_current(limits: Limits) -> contextvars.Token[Limits]:
    """Install `limits` for the rest of this command (the CLI options call this)."""
    return _current.set(limits)


def reset(token: contextvars.Token[Limits]) -> None:
    """Undo `set_current` (the CLI does this when the command ends)."""
    _current.reset(token)


_SIZE_UNITS = {"": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
               "g": GiB, "gb": GiB, "gib": GiB, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_count(text: str, option: str) -> int:
    """'1000000', '1e9', '500M', '2G' (or B) -> int; UsageError naming the option otherwise."""
    raw = str(text).strip().lower().replace("_", "")
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)", raw)
    if match and match.group(2) in _COUNT_UNITS:
        value = float(match.group(1)) * _COUNT_UNITS[match.group(2)]
        if value >= 1:
            return int(value)
    raise UsageError(f"{option}: expected a positive count like 1000000, 1e9 or 500M (not {text!r})")


def parse_size(text: str, option: str) -> int:
    """'4096', '512M', '16GiB' -> bytes; UsageError naming the option otherwise."""
    raw = str(text).strip().lower().replace("_", "")
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)", raw)
    if match and match.group(2) in _SIZE_UNITS:
        value = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if value >= 1:
            return int(value)
    raise UsageError(f"{option}: expected a positive size like 4096, 512M or 16G (not {text!r})")


def from_options(max_params: str | None = None, max_layers: str | None = None,
                 max_bytes: str | None = None) -> Limits:
    """The current limits with the command-line / environment overrides applied."""
    changes: dict[str, int] = {}
    if max_params is not None:
        changes["max_params"] = parse_count(max_params, "--max-params")
    if max_layers is not None:
        changes["max_layers"] = parse_count(max_layers, "--max-layers")
    if max_bytes is not None:
        changes["max_bytes"] = parse_size(max_bytes, "--max-bytes")
    return dataclasses.replace(current(), **changes)


def fmt_count(n: int) -> str:
    """1000000000 -> '1,000,000,000' (for messages)."""
    return f"{n:,}"


def fmt_bytes(n: int) -> str:
    """Bytes in the largest binary unit that keeps at least 1 ('16 GiB', '512 MiB', '37 B')."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{n} B"


def shown(text: object, limit: int = 80) -> str:
    """An untrusted string (a member name, a class name from a file) made safe for one message line.

    Control characters and non-ASCII are escaped (no terminal escapes reach the user's
    screen), and long strings are cut, so messages never replay a file's contents.
    """
    value = str(text)
    cut = len(value) > limit
    value = value[:limit]
    out = repr(value).encode("ascii", "backslashreplace").decode("ascii")
    return out + ("..." if cut else "")
