"""Loading and re-saving through Keras, for the few edits that need the graph (lazy TF import)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wtool.store import write as store_write


def load_with_compile(path: str | os.PathLike[str], *, unsafe: bool = False) -> Any:
    """Load with the saved compile settings when Keras can rebuild them, else without (quietly)."""
    import warnings

    from wtool.errors import UnsafeError, WtoolError
    from wtool.graph.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_model(path, unsafe=unsafe, compile=True)
        except UnsafeError:
            raise
        except WtoolError:
            return load_model(path, unsafe=unsafe, compile=False)


def rebuild_with_keras(unsafe: bool = False) -> store_write.Rebuild:
    """How the store converts an edited copy between formats: Keras loads it and saves `out`."""

    def rebuild(staged: Path, out: Path, include_optimizer: bool) -> None:
        from wtool.graph.model import save_model

        save_model(load_with_compile(staged, unsafe=unsafe), out, include_optimizer=include_optimizer)

    return rebuild
