"""Shell-style globs over weight paths, shared by every command's --layer / --weight options."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from wtool.errors import UsageError


def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def matches(path: str, glob: str) -> bool:
    """True when `glob` matches the weight path or one of its layer prefixes (`features` -> `features/c1/kernel`)."""
    return any(fnmatchcase(prefix, glob) for prefix in _prefixes(path))


def select(paths: Iterable[str], globs: Sequence[str] | None, *, option: str = "--layer",
           strict: bool = True) -> list[str]:
    """The paths (in their order) matched by any glob; all of them when there is no glob.

    With `strict`, a glob that matches nothing is a usage error naming the glob.
    """
    paths = list(paths)
    if not globs:
        return paths
    chosen = [p for p in paths if any(matches(p, g) for g in globs)]
    if strict:
        for glob in globs:
            if not any(matches(p, glob) for p in paths):
                sample = ", ".join(paths[:4]) + (" ..." if len(paths) > 4 else "")
                raise UsageError(f"{option} {glob!r} matches no weight",
                                 f"weights are named like: {sample or '(none)'}; "
                                 "`wtool inspect MODEL --weights` lists them")
    return chosen
