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
        dtype = stored_dtype(ds)
        if dtype is None:
            raise InputError(f"{self.where}: weight {path} holds {ds.dtype} data, not numbers (a malformed file)")
        if path in self._paths:
            n = 1
            while f"{path}_{n}" in self._paths:
                n += 1
            self.warnings.append(f"two weights are named {path}; the second is shown as {path}_{n}")
            path, name = f"{path}_{n}", f"{name}_{n}"
        self._paths.add(path)
        self.weights.append(WeightInfo(path=path, layer=layer, name=name, shape=tuple(int(d) for d in ds.shape),
                                       dtype=dtype, trainable=trainable, h5_name=ds.name.lstrip("/")))


def stored_dtype(ds: Any) -> str | None:
    """The dtype a dataset's values have: Keras writes bfloat16 as 2-byte opaque data with the
    attribute dtype="bfloat16" (its H5IOStore reads it back so). None when it is not numbers."""
    if ds.dtype.kind in NUMERIC_KINDS:
        return str(ds.dtype)
    if ds.dtype.kind == "V" and ds.dtype.itemsize == 2 and ds.dtype.names is None:
        marker = ds.attrs.get("dtype") if "dtype" in ds.attrs else None
        if isinstance(marker, bytes):
            marker = marker.decode("utf-8", "replace")
        if marker == "bfloat16":
            return "bfloat16"
    return None


def as_stored(values: Any, dtype: str) -> Any:
    """Raw bytes read from a dataset, viewed as the dtype `stored_dtype` gave (bfloat16 through ml_dtypes)."""
    import numpy as np

    arr = np.asarray(values)
    if dtype == "bfloat16" and arr.dtype.kind == "V":
        import ml_dtypes

        return arr.view(ml_dtypes.bfloat16)
    return arr
