"""A keras-hub preset directory read without keras-hub: the backbone's weights (`model.weights.h5`, or the
sharded `model.weights.json` + `model_NNNNN.weights.h5`) and the task's own (`task.weights.h5`, which
keras-hub writes with `keras.saving.save_weights(task, objects_to_skip=backbone layers)`), as one model.

File names and metadata keys are keras-hub's (`keras_hub/src/utils/preset_utils.py`). The task's weights
are shown under `task/` (`task/logits/kernel`): the two files name their layers independently, so a
prefix keeps every path unique. A preset with neither task weights nor a sharded backbone is the plain
folder reader's (`wtool.store.container.open_folder`); this class is for the other two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import InputError
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS
from wtool.store.types import LayerInfo, WeightInfo, WeightsOnlyFile

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
SHARDED_MAP_FILE = "model.weights.json"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
TASK_PREFIX = "task"
FORMAT = "keras-hub-preset"
TASK_H5_PREFIX = "task.weights.h5::"  # a task weight's h5_name: the two files' names may collide


def needs_preset_reader(folder: Path) -> bool:
    """Task weights, or a sharded backbone without model.weights.h5 (keras-hub reads one or the other)."""
    if (folder / TASK_WEIGHTS_FILE).exists():
        return True
    return not (folder / MODEL_WEIGHTS_FILE).exists() and (folder / SHARDED_MAP_FILE).exists()


def preset_info(folder: Path, metadata: dict[str, Any], task_config: Any = None) -> dict[str, Any]:
    """metadata.json's keras-hub fields and what the folder holds (`--json` "keras_hub")."""
    count = metadata.get("parameter_count")
    version = metadata.get("keras_hub_version")
    task_class = task_config.get("class_name") if isinstance(task_config, dict) else None
    return {"keras_hub_version": str(version) if version is not None else None,
            "parameter_count": count if isinstance(count, int) and not isinstance(count, bool) else None,
            "task_weights": (folder / TASK_WEIGHTS_FILE).is_file(),
            "task_class": str(task_class) if task_class is not None else None,
            "sharded": not (folder / MODEL_WEIGHTS_FILE).exists() and (folder / SHARDED_MAP_FILE).is_file()}


class PresetModelFile(WeightsOnlyFile):
    """The backbone's ModelFile and the task's, behind the one ModelFile interface (paths routed by prefix)."""

    def __init__(self, folder: Path, backbone: Any, task: Any | None, config: dict[str, Any] | None,
                 metadata: dict[str, Any], task_config: Any) -> None:
        self.path = folder
        self.backbone, self.task = backbone, task
        self.format, self.layout = FORMAT, "keras3"
        self.config = config
        self.keras_version = _text(metadata.get("keras_version")) or backbone.keras_version
        self.backend = backbone.backend
        self.optimizer_weights = backbone.optimizer_weights
        self.optimizer_moments = backbone.optimizer_moments
        self.preset = preset_info(folder, metadata, task_config)
        self.file_size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        self.warnings = [w for w in backbone.warnings if "task.weights.h5" not in w]
        self.weights: list[WeightInfo] = list(backbone.weights)
        self.layers: list[LayerInfo] = list(backbone.layers)
        self._owner: dict[str, tuple[Any, str]] = {w.path: (backbone, w.path) for w in backbone.weights}
        if task is not None:
            self._add_task(task)
        self._by_path = {w.path: w for w in self.weights}
        from wtool.store.config import parse_model_config

        root = parse_model_config(config) if config is not None else None
        self.model_name = root.name if root is not None else backbone.model_name
        self.model_class = root.class_name if root is not None else backbone.model_class
        self.shard_names = list(getattr(backbone, "shard_names", []))

    def _add_task(self, task: Any) -> None:
        self.warnings += [f"{TASK_WEIGHTS_FILE}: {w}" for w in task.warnings]
        head = LayerInfo(TASK_PREFIX, TASK_PREFIX, self.preset["task_class"] or "Task", 0, True,
                         params=sum(w.params for w in task.weights))
        self.layers.append(head)
        self.preset["task_parameters"] = head.params
        for layer in task.layers:
            self.layers.append(replace(layer, path=f"{TASK_PREFIX}/{layer.path}", depth=layer.depth + 1,
                                       weights=[f"{TASK_PREFIX}/{p}" for p in layer.weights]))
        for w in task.weights:
            path = f"{TASK_PREFIX}/{w.path}"
            if path in self._owner:
                raise InputError(f"{self.path}: weight {path} is in both model.weights and {TASK_WEIGHTS_FILE}")
            self.weights.append(replace(w, path=path, layer=f"{TASK_PREFIX}/{w.layer}",
                                        h5_name=TASK_H5_PREFIX + w.h5_name))
            self._owner[path] = (task, w.path)
        self.optimizer_weights += task.optimizer_weights
        self.optimizer_moments += task.optimizer_moments

    # -- the ModelFile interface -------------------------------------------------------------

    def _route(self, path: str) -> tuple[Any, str]:
        """(the backbone's or the task's file, the weight's path in it)."""
        return self._owner[self.weight(path).path]

    def dataset(self, path: str) -> Any:
        mf, inner = self._route(path)
        return mf.dataset(inner)

    def raw_dataset(self, h5_name: str) -> Any:
        if h5_name.startswith(TASK_H5_PREFIX) and self.task is not None:
            return self.task.raw_dataset(h5_name[len(TASK_H5_PREFIX):])
        return self.backbone.raw_dataset(h5_name)

    def weight_source(self, path: str) -> tuple[Path, str, str]:
        mf, inner = self._route(path)
        if mf is not self.backbone:  # the task's own file
            return mf.path, "weights.h5", mf.weight(inner).h5_name
        return mf.weight_source(inner)  # type: ignore[no-any-return]

    def read(self, path: str) -> np.ndarray:
        mf, inner = self._route(path)
        return mf.read(inner)  # type: ignore[no-any-return]

    def read_block(self, path: str, index: tuple[object, ...]) -> np.ndarray:
        mf, inner = self._route(path)
        return mf.read_block(inner, index)  # type: ignore[no-any-return]

    def iter_chunks(self, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[np.ndarray]:
        mf, inner = self._route(path)
        return mf.iter_chunks(inner, max_elements)  # type: ignore[no-any-return]

    @property
    def h5(self) -> Any:
        return self.backbone.h5

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
        self.backbone.close()

    def __repr__(self) -> str:
        return f"<PresetModelFile {self.path} weights={len(self.weights)}>"


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def read_preset_files(folder: Path) -> tuple[dict[str, Any] | None, dict[str, Any], Any]:
    """config.json, metadata.json and task.json, after refusing links anywhere in the folder (as in zips)."""
    from wtool.store.container import _read_folder_json, _refuse_links

    _refuse_links(folder, str(folder))
    config = _read_folder_json(folder, CONFIG_FILE)
    metadata = _read_folder_json(folder, METADATA_FILE) if (folder / METADATA_FILE).is_file() else {}
    task_config = _read_folder_json(folder, TASK_CONFIG_FILE) if (folder / TASK_CONFIG_FILE).is_file() else None
    return (config if isinstance(config, dict) else None, metadata if isinstance(metadata, dict) else {},
            task_config)


def check_task_file(task: Any, folder: Path) -> None:
    if task.layout != "keras3":
        raise InputError(f"{folder}: {TASK_WEIGHTS_FILE} is not in the Keras 3 weights layout keras-hub writes")
