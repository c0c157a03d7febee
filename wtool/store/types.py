"""What the store returns: one record per weight and per layer, format-independent."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from wtool.errors import IncompatibleError
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, iter_blocks

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class WeightInfo:
    """One saved weight array, named by its canonical path `LAYER[/SUB]/VAR`.

    `layer` is the path of the layer that owns it (a key of `ModelFile.layers`),
    `name` the rest (`kernel`, or `forward_lstm/kernel` under a wrapper), so
    `path == layer + "/" + name`. `h5_name` is the dataset's full name inside
    the HDF5 file, so a writer can overwrite it in place.
    """

    path: str
    layer: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool
    h5_name: str

    @property
    def params(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        import numpy as np

        if self.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            import ml_dtypes  # noqa: F401 - registers the names with numpy

        return self.params * np.dtype(self.dtype).itemsize


@dataclass
class LayerInfo:
    """One layer as saved: nested layers have `depth` > 0 and a path `outer/inner`."""

    path: str
    name: str
    class_name: str | None
    depth: int
    trainable: bool
    weights: list[str] = field(default_factory=list)
    params: int = 0
    missing: bool = False  # listed in the file but its group is absent (broken legacy files)
    quantization: str | None = None  # the dtype policy's mode (`int8`, `int4/128`, `float8`...)
    lora_rank: int | None = None  # saved after `enable_lora`: the file holds merged kernels
    group: str | None = None  # its HDF5 group in a Keras 3 weights file ("/layers/string_lookup"): assets sit there too


def layers_from_paths(weights: list[WeightInfo]) -> list[LayerInfo]:
    """Layers from the weight paths alone (class unknown, trainable), enclosing ones first as nested models
    list them: for sources that store no layer list (TF / Orbax checkpoints, safetensors)."""
    layers: dict[str, LayerInfo] = {}
    for w in weights:
        parts = w.layer.split("/")
        for depth in range(len(parts)):
            prefix = "/".join(parts[: depth + 1])
            layers.setdefault(prefix, LayerInfo(prefix, parts[depth], None, depth, True))
        info = layers[w.layer]
        info.weights.append(w.path)
        info.params += w.params
    return list(layers.values())


class WeightTotals:
    """Totals every opened weights source reports alike (model file, checkpoint, preset, safetensors)."""

    weights: list[WeightInfo]
    optimizer_weights: int = 0

    @property
    def has_optimizer(self) -> bool:
        return self.optimizer_weights > 0

    @property
    def total_params(self) -> int:
        return sum(w.params for w in self.weights)

    @property
    def trainable_params(self) -> int:
        return sum(w.params for w in self.weights if w.trainable)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights)


_Opened = TypeVar("_Opened", bound="WeightsFile")


class WeightsFile(WeightTotals):
    """An opened weights source: its weights looked up by canonical path, and a context manager."""

    path: Path
    _by_path: dict[str, WeightInfo]

    def weight(self, path: str) -> WeightInfo:
        try:
            return self._by_path[path]
        except KeyError:
            raise IncompatibleError(f"{self.path}: has no weight {path!r}",
                                    f"`wtool inspect {self.path} --weights` lists its weights") from None

    def close(self) -> None:
        pass

    def __enter__(self: _Opened) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WeightsOnlyFile(WeightsFile):
    """An opened source that is not a Keras model file (TF / Orbax checkpoint, safetensors, keras-hub preset):
    by default no architecture, training config or HDF5 file (a preset sets its config.json and its
    backbone's h5), never written in place. `read_block` and `iter_chunks` slice `read()`'s whole array;
    a reader that can read less overrides them."""

    keras_version: str | None = None
    backend: str | None = None
    has_training_config = False
    config: dict[str, Any] | None = None
    training_config: dict[str, Any] | None = None
    compile_config: dict[str, Any] | None = None
    model_name: str | None = None
    model_class: str | None = None
    in_place = False
    h5: Any = None
    class_names: list[str] | None = None  # none saved (train and infer then look at --arch, or go without)

    def read(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def read_block(self, path: str, index: tuple[object, ...]) -> np.ndarray:
        value = self.read(path)
        return value[index] if index else value  # type: ignore[index]

    def iter_chunks(self, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[np.ndarray]:
        value = self.read(path)
        for index in iter_blocks(value.shape, max_elements):
            yield value[index] if index else value  # type: ignore[index]
