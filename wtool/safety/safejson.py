"""JSON from untrusted files, parsed with caps: size, nesting depth, number of values, no duplicate keys.

Kept apart from wtool.safety.config_check so that reading a file's config (inspect, diff) does not
import the whole config walker. Malformed or over a cap -> InputError (exit 3).
"""

from __future__ import annotations

import json
from typing import Any

from wtool.errors import InputError
from wtool.safety import limits as _limits
from wtool.safety.limits import Limits, shown


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def parse_config_json(data: bytes | str, source: str, limits: Limits | None = None,
                      what: str = "model config") -> Any:
    """Parse config JSON from an untrusted file with caps; InputError (exit 3) when it is malformed or too big."""
    limits = limits or _limits.current()
    size = len(data)
    if size > limits.max_config_bytes:
        raise InputError(f"{source}: {what} is {size:,} bytes (limit {limits.max_config_bytes:,})")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{source}: {what} is not UTF-8 text") from None
    else:
        text = data
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_constant)
    except _DuplicateKey as exc:
        raise InputError(f"{source}: {what} has a duplicate key {shown(exc.args[0])}") from None
    except RecursionError:
        raise InputError(f"{source}: {what} nests too deeply") from None
    except ValueError as exc:
        # json errors carry a position, not content; keep only that.
        pos = getattr(exc, "pos", None)
        where = f" at byte {pos}" if isinstance(pos, int) else ""
        raise InputError(f"{source}: {what} is not valid JSON{where}") from None
    check_json_shape(value, source, limits, what)
    return value


def _constant(name: str) -> float:
    # NaN / Infinity are legal in Keras configs (e.g. clip values); keep them as floats.
    return float(name.replace("Infinity", "inf"))


def check_json_shape(value: Any, source: str, limits: Limits | None = None, what: str = "model config") -> None:
    """Depth and node-count caps on an already parsed JSON value (level by level: no recursion, C-speed)."""
    limits = limits or _limits.current()
    nodes = 0
    depth = 0
    level: list[Any] = [value]
    while level:
        depth += 1
        nodes += len(level)
        if nodes > limits.max_config_nodes:
            raise InputError(f"{source}: {what} has more than {limits.max_config_nodes:,} values (limit)")
        if depth > limits.max_config_depth:
            raise InputError(f"{source}: {what} nests deeper than {limits.max_config_depth} levels (limit)")
        below: list[Any] = []
        for item in level:
            if type(item) is dict:
                below.extend(item.values())
            elif type(item) is list:
                below.extend(item)
        level = below
