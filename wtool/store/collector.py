"""What both readers fill in: layers, weights (unique paths) and warnings."""

from __future__ import annotations

from typing import Any

from wtool.errors import InputError
from wtool.store.types import LayerInfo, WeightInfo

NUMERIC_KINDS = frozenset("biuf")  # bool, int, uint, float: what Keras saves


class Collector:
    def __init__(self, h5: Any, where: str) -> None:
        self.h5 = h5
        self.where = where
        self.layers: list[LayerInfo] = []
        self.weights: list[WeightInfo] = []
        self.warnings: list[str] = []
        self._paths: set[str] = set()

    def add_weight(self, layer: str, name: str, ds: Any, trainable: bool) -> None:
        path = f"{layer}/{name}"
        if ds.dtype.kind not in NUMERIC_KINDS:
            raise InputError(f"{self.where}: weight {path} holds {ds.dtype} data, not numbers (a malformed file)")
        if path in self._paths:
            n = 1
            while f"{path}_{n}" in self._paths:
                n += 1
            self.warnings.append(f"two weights are named {path}; the second is shown as {path}_{n}")
            path, name = f"{path}_{n}", f"{name}_{n}"
        self._paths.add(path)
        self.weights.append(WeightInfo(path=path, layer=layer, name=name, shape=tuple(int(d) for d in ds.shape),
                                       dtype=str(ds.dtype), trainable=trainable, h5_name=ds.name.lstrip("/")))
