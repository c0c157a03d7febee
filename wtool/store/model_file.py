"""`open_model(path) -> ModelFile`: one interface over .keras, legacy .h5 and .weights.h5."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, InputError
from wtool.fileio import check_input_file
from wtool.safety import guards as safety
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, iter_blocks
from wtool.store.collector import as_stored
from wtool.store.config import parse_model_config
from wtool.store.container import Source, open_source
from wtool.store.keras3 import Keras3Reader
from wtool.store.legacy import LegacyReader, read_attr_list, read_text_attr
from wtool.store.types import LayerInfo, WeightInfo, WeightsFile

WEIGHTS_FILE = "model.weights.h5"
KERAS3_MARKERS = ("layers", "vars", "_layer_checkpoint_dependencies")


class ModelFile(WeightsFile):
    """An opened model or weights file. Use as a context manager, or call close()."""

    def __init__(self, path: Path, source: Source, arch_config: dict[str, Any] | None = None) -> None:
        self.path = path
        self.file_size = path.stat().st_size if source.kind != "folder" else sum(
            p.stat().st_size for p in path.iterdir() if p.is_file())
        self._source = source
        self.h5 = source.h5
        from wtool.safety.h5walk import check_every_object

        check_every_object(self.h5, str(path))  # links / external / virtual / plugin data anywhere in the file
        self.config: dict[str, Any] | None = None
        self.training_config: dict[str, Any] | None = None
        self.compile_config: dict[str, Any] | None = None
        self.keras_version: str | None = None
        self.backend: str | None = None
        self.optimizer_weights = 0
        self.optimizer_moments = 0  # non-scalar optimizer arrays: per-weight slots, there once it has stepped
        self.warnings: list[str] = []
        self.preset: dict[str, Any] | None = None  # keras-hub preset: version, declared parameter count
        self.in_place = source.in_place
        where = str(path)
        if source.kind in ("zip", "folder"):
            self.format, self.layout = ("keras" if source.kind == "zip" else "keras-folder"), "keras3"
            self._read_zip_metadata()
        else:
            self._read_h5_metadata(where)
        naming_config = self.config if self.config is not None else arch_config
        root = parse_model_config(naming_config) if naming_config is not None else None
        reader: Keras3Reader | LegacyReader
        reader = Keras3Reader(self.h5, root, where) if self.layout == "keras3" else LegacyReader(self.h5, root, where)
        reader.read()
        self.weights: list[WeightInfo] = reader.weights
        self.layers: list[LayerInfo] = reader.layers
        self.warnings.extend(reader.warnings)
        safety.check_total_bytes(sum(w.nbytes for w in self.weights), where)
        self._by_path = {w.path: w for w in self.weights}
        by_layer: dict[str, LayerInfo] = {layer.path: layer for layer in self.layers}
        for w in self.weights:
            layer = by_layer.get(w.layer)
            if layer is not None:
                layer.weights.append(w.path)
                layer.params += w.params
        self.model_name = root.name if root is not None else None
        self.model_class = root.class_name if root is not None else None

    @property
    def class_names(self) -> list[str] | None:
        """Class names wtool saved with the model (wtool.store.class_names), or None."""
        from wtool.store.class_names import KEY, parse

        if self._source.kind == "zip":
            meta = self._source.metadata if isinstance(self._source.metadata, dict) else {}
            return parse(meta.get(KEY))
        return parse(self.h5.attrs.get(KEY))

    # -- metadata ---------------------------------------------------------------------------

    def _read_zip_metadata(self) -> None:
        src = self._source
        self.config = src.config if isinstance(src.config, dict) else None
        if self.config is not None and isinstance(self.config.get("compile_config"), dict):
            self.compile_config = self.config["compile_config"]
        meta = src.metadata if isinstance(src.metadata, dict) else {}
        self.keras_version = _str_or_none(meta.get("keras_version"))
        self.backend = _str_or_none(meta.get("backend"))
        if src.kind == "folder" and meta.get("keras_hub_version") is not None:  # a keras-hub preset directory
            from wtool.store.preset import preset_info

            self.preset = preset_info(self.path, meta)
        self.optimizer_weights = _count_datasets(self.h5.get("optimizer"))
        self.optimizer_moments = _count_datasets(self.h5.get("optimizer"), slots_only=True)

    def _read_h5_metadata(self, where: str) -> None:
        h5 = self.h5
        is_full = "model_config" in h5.attrs or "model_weights" in h5
        if is_full:
            self.format, self.layout = "h5", "legacy"
        elif read_attr_list(h5, "layer_names", where) is not None:
            self.format, self.layout = "weights.h5", "legacy"
        elif any(k in h5 or any(key.startswith(k) for key in h5.keys()) for k in KERAS3_MARKERS):
            self.format, self.layout = "weights.h5", "keras3"
        else:
            raise InputError(f"{where}: an HDF5 file, but not a Keras model or weights file "
                             f"(top-level groups: {', '.join(list(h5.keys())[:6]) or 'none'})",
                             "wtool reads .keras, .h5/.hdf5 and .weights.h5 files saved by Keras")
        text = read_text_attr(h5, "model_config", where)
        if text is not None:
            self.config = _parse_json(text, where, "model_config")
        text = read_text_attr(h5, "training_config", where)
        if text is not None:
            self.training_config = _parse_json(text, where, "training_config", strict=False)
        for group in (h5, h5.get("model_weights")):
            if group is None or not hasattr(group, "attrs"):
                continue
            self.keras_version = self.keras_version or read_text_attr(group, "keras_version", where)
            self.backend = self.backend or read_text_attr(group, "backend", where)
        opt = "optimizer_weights" if self.layout == "legacy" else "optimizer"
        self.optimizer_weights = _count_datasets(h5.get(opt))
        self.optimizer_moments = _count_datasets(h5.get(opt), slots_only=True)

    @property
    def has_training_config(self) -> bool:
        # An uncompiled Keras 3 model saves `compile_config: {}`: that is no training config.
        return bool(self.training_config) or bool(self.compile_config)

    # -- weights ----------------------------------------------------------------------------

    def dataset(self, path: str) -> Any:
        """The h5py dataset behind a weight (for in-place writers), after the safety checks."""
        info = self.weight(path)
        try:
            ds = self.h5[info.h5_name]
        except CORRUPT_HDF5 as exc:
            raise corrupt(self.path, exc, f"weight {path}") from None
        safety.check_h5_dataset(ds, str(self.path))
        return ds

    def raw_dataset(self, h5_name: str) -> Any:
        """Any dataset of the weights file by its HDF5 name (optimizer state included), checked."""
        try:
            ds = self.h5[h5_name]
        except CORRUPT_HDF5 as exc:
            raise corrupt(self.path, exc, f"dataset {h5_name}") from None
        safety.check_h5_dataset(ds, str(self.path))
        return ds

    def weight_source(self, path: str) -> tuple[Path, str, str]:
        """(file, format, dataset name) holding a weight, for writers that copy it byte for byte."""
        info = self.weight(path)
        if self.format == "keras-folder":  # the folder's own weights file
            return self.path / WEIGHTS_FILE, "weights.h5", info.h5_name
        return self.path, self.format, info.h5_name

    def read(self, path: str) -> np.ndarray:
        return self.read_block(path, ())

    def read_block(self, path: str, index: tuple[object, ...]) -> np.ndarray:
        ds = self.dataset(path)
        try:
            return as_stored(ds[index] if index else ds[()], self.weight(path).dtype)
        except CORRUPT_HDF5 as exc:
            raise corrupt(self.path, exc, f"weight {path}") from None

    def iter_chunks(self, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[np.ndarray]:
        """The weight's values in C-ordered blocks of at most `max_elements` elements."""
        ds = self.dataset(path)
        dtype = self.weight(path).dtype
        for index in iter_blocks(tuple(ds.shape), max_elements):
            try:
                block = as_stored(ds[index] if index else ds[()], dtype)
            except CORRUPT_HDF5 as exc:
                raise corrupt(self.path, exc, f"weight {path}") from None
            yield block

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        self._source.close()

    def __repr__(self) -> str:
        return f"<ModelFile {self.path} format={self.format} layout={self.layout} weights={len(self.weights)}>"


def _str_or_none(value: Any) -> str | None:
    return str(value) if value is not None else None


def _parse_json(text: str, where: str, name: str, strict: bool = True) -> dict[str, Any] | None:
    from wtool.safety.safejson import parse_config_json  # duplicate keys, depth and size caps

    try:
        value = parse_config_json(text, where, what=f"the {name} attribute")
    except InputError:
        if strict:
            raise
        return None
    return value if isinstance(value, dict) else None


def _count_datasets(group: Any, slots_only: bool = False) -> int:
    """Datasets under `group`; with `slots_only`, those with a shape (not iteration counts or learning rates)."""
    if group is None or not hasattr(group, "visititems"):
        return 0
    import h5py

    count = 0

    def visit(_name: str, obj: Any) -> None:
        nonlocal count
        if isinstance(obj, h5py.Dataset) and not (slots_only and obj.shape == ()):
            count += 1

    group.visititems(visit)
    return count


class ShardedModelFile(ModelFile):
    """`X.weights.json` and its shards as one weights file (see `wtool.store.sharded`)."""

    def __init__(self, path: Path, arch_config: dict[str, Any] | None = None) -> None:
        from wtool.store.sharded import build_skeleton, check_total_size, read_map

        self.weight_map = read_map(path)
        skel = build_skeleton(self.weight_map)
        self._skeleton = skel
        closers = [h5.close for h5 in skel.shards.values()]
        super().__init__(path, Source(kind="hdf5", h5=skel.h5, in_place=False, _closers=closers),
                         arch_config=arch_config)
        self.format = "weights.json"
        self.file_size += sum((path.parent / n).stat().st_size for n in self.weight_map.shards)
        check_total_size(self.weight_map, skel.data_bytes)
        if skel.ignored:
            self.warnings.append(f"{skel.ignored} dataset(s) in the shards lie outside what the map assigns; "
                                 "ignored, as Keras's load_weights ignores them")

    @property
    def shard_names(self) -> list[str]:
        return list(self.weight_map.shards)

    def shard_of_weight(self, path: str) -> str:
        return self._skeleton.route[self.weight(path).h5_name]

    def dataset(self, path: str) -> Any:
        return self.raw_dataset(self.weight(path).h5_name)

    def raw_dataset(self, h5_name: str) -> Any:
        name = self._skeleton.route.get(h5_name)
        if name is None:  # a group without variables, or a dataset the map does not assign
            raise IncompatibleError(f"{self.path}: no dataset {h5_name} in any shard")
        try:
            ds = self._skeleton.shards[name][h5_name]
        except CORRUPT_HDF5 as exc:
            raise corrupt(self.path.parent / name, exc, f"dataset {h5_name}") from None
        safety.check_h5_dataset(ds, f"{self.path} (shard {name})")
        return ds

    def shard_index_of(self, h5_name: str) -> int:
        """Which of the map's shards (0, 1, ...) holds a dataset: a rewrite keeps the split."""
        return self.weight_map.shards.index(self._skeleton.route[h5_name])

    def weight_source(self, path: str) -> tuple[Path, str, str]:
        info = self.weight(path)
        return self.path.parent / self._skeleton.route[info.h5_name], "weights.h5", info.h5_name


# What h5py raises on a damaged file (bad B-tree, addresses past the end, broken heaps, ...).
CORRUPT_HDF5 = (OSError, RuntimeError, KeyError, ValueError, EOFError)


def corrupt(path: Path, exc: BaseException, what: str = "the HDF5 structure") -> InputError:
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return InputError(f"{path}: cannot read {what}: the file is corrupt ({text})",
                      "the file may be damaged or truncated: download or save it again")


def open_model(path: str | os.PathLike[str], *, arch_config: dict[str, Any] | None = None) -> ModelFile:
    """Open a .keras, legacy .h5 or .weights.h5 file (the format comes from its bytes, not its name),
    a .safetensors file / sharded .safetensors.index.json (by name), a TensorFlow or an Orbax checkpoint.

    `arch_config` (a model config, e.g. another ModelFile's `.config`) names the layers and
    variables of a weights-only file that has no config of its own.
    """
    from wtool.store.container import is_model_folder, open_folder

    if is_model_folder(Path(os.fspath(path))):
        folder = Path(os.fspath(path))
        from wtool.store.preset import needs_preset_reader

        if needs_preset_reader(folder):  # task weights or a sharded backbone: keras-hub's two files as one
            return _open_preset(folder)  # type: ignore[return-value]
        return _model_file(folder, open_folder(folder), arch_config)
    from wtool.fileio import checkpoint_kind, refuse_checkpoint

    if checkpoint_kind(path) == "tf":  # read without TensorFlow (wtool.store.tf_checkpoint)
        from wtool.store.tf_checkpoint import open_tf_checkpoint

        return open_tf_checkpoint(path)  # type: ignore[return-value]
    if checkpoint_kind(path) == "orbax":  # read by orbax itself, when installed (wtool.store.orbax_checkpoint)
        from wtool.store.orbax_checkpoint import open_orbax_checkpoint

        return open_orbax_checkpoint(path)  # type: ignore[return-value]
    refuse_checkpoint(path)
    p = check_input_file(path)
    from wtool.store.safetensors_file import is_safetensors_name

    if is_safetensors_name(p):  # not HDF5: its own reader, same interface
        from wtool.store.safetensors_file import open_safetensors

        return open_safetensors(p)  # type: ignore[return-value]
    from wtool.store.sharded import is_map_name, shard_of

    if is_map_name(p):
        try:
            return ShardedModelFile(p, arch_config=arch_config)
        except CORRUPT_HDF5 as exc:
            raise corrupt(p, exc) from None
    mf = _model_file(p, open_source(p), arch_config)
    try:
        whole = shard_of(p)
    except BaseException:
        mf.close()
        raise
    if whole is not None:
        map_path, index, count = whole
        mf.warnings.append(f"this is shard {index + 1} of {count} of {map_path.name}: it holds part of the "
                           f"model; `wtool inspect {map_path}` reads the whole set")
    return mf


def _open_preset(folder: Path) -> Any:
    """wtool.store.preset.PresetModelFile over the backbone (one file or sharded, named from config.json)
    and the task's own weights."""
    from wtool.store.container import open_folder
    from wtool.store.preset import (
        MODEL_WEIGHTS_FILE,
        SHARDED_MAP_FILE,
        TASK_WEIGHTS_FILE,
        PresetModelFile,
        check_task_file,
        read_preset_files,
    )

    config, metadata, task_config = read_preset_files(folder)
    if (folder / MODEL_WEIGHTS_FILE).exists():
        backbone: ModelFile = _model_file(folder, open_folder(folder), None)
    else:
        backbone = ShardedModelFile(folder / SHARDED_MAP_FILE, arch_config=config)
    task = None
    try:
        task_path = folder / TASK_WEIGHTS_FILE
        if task_path.exists():
            task = _model_file(task_path, open_source(check_input_file(task_path)), None)
            check_task_file(task, folder)
        return PresetModelFile(folder, backbone, task, config, metadata, task_config)
    except BaseException:
        if task is not None:
            task.close()
        backbone.close()
        raise


def _model_file(path: Path, source: Any, arch_config: dict[str, Any] | None) -> ModelFile:
    """A ModelFile over an opened source; the source is closed if reading its metadata fails."""
    try:
        return ModelFile(path, source, arch_config=arch_config)
    except CORRUPT_HDF5 as exc:
        source.close()
        raise corrupt(path, exc) from None
    except BaseException:
        source.close()
        raise
