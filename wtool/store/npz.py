"""Numpy `.npz` archives of weights keyed by path (what `wtool inspect --export` writes).

`diff` compares a model with such an archive (export -> edit with numpy -> diff), so the
archive is presented with the few read methods `wtool.ops.diff.diff_models` uses. Other
commands that expect a model say plainly that an .npz is a numpy archive, not a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError
from wtool.fileio import check_input_file, check_model_input
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, iter_blocks
from wtool.store.naming import clean_key
from wtool.store.npz_sniff import is_numpy_archive
from wtool.store.types import WeightInfo


class NpzWeights:
    """An .npz of arrays keyed by weight path, read with `wtool.store.arrays.load_npz` (no pickles)."""

    format = "npz"
    layout = "npz"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from wtool.store.arrays import load_npz

        self.path = check_input_file(path)
        raw = load_npz(self.path)
        self._arrays: dict[str, np.ndarray] = {}
        for key, value in raw.items():
            self._arrays[clean_key(key)] = value
        self.weights = [WeightInfo(path=k, layer=k.rpartition("/")[0], name=k.rpartition("/")[2],
                                   shape=tuple(int(n) for n in v.shape), dtype=str(v.dtype), trainable=True,
                                   h5_name=k)
                        for k, v in self._arrays.items()]
        self._by_path = {w.path: w for w in self.weights}

    def weight(self, path: str) -> WeightInfo:
        try:
            return self._by_path[path]
        except KeyError:
            raise IncompatibleError(f"{self.path}: has no array {path!r}") from None

    def read(self, path: str) -> np.ndarray:
        return self._arrays[path]

    def iter_chunks(self, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[np.ndarray]:
        value = self._arrays[path]
        for index in iter_blocks(tuple(value.shape), max_elements):
            yield np.asarray(value[index] if index else value[()])  # type: ignore[index]

    def close(self) -> None:
        self._arrays.clear()

    def __enter__(self) -> NpzWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_weights(path: str | os.PathLike[str]) -> Any:
    """A model/weights file (`open_model`), or an .npz keyed by weight path (`NpzWeights`)."""
    from wtool.fileio import checkpoint_kind
    from wtool.store.model_file import open_model

    if checkpoint_kind(path) in ("tf", "orbax"):  # a TensorFlow or Orbax checkpoint, read as a weights file
        return open_model(path)
    p = check_model_input(path)  # before any open: no FIFO/device/URL (a model folder passes)
    if p.is_dir():
        return open_model(p)
    if is_numpy_archive(p):
        return NpzWeights(p)
    return open_model(p)
