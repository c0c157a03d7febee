"""`.keras` -> legacy `.h5` at the HDF5 level: the layout Keras 3's `save_model_to_hdf5` writes, without Keras.

What Keras writes, and so what this writes:
- file attributes `model_config` (the config with each layer entry's `module`, `registered_name`,
  `build_config` and `compile_config` left out, and no `shared_object_id`: Keras's legacy form),
  `training_config` (the compile config, its optimizer as `optimizer_config`), `keras_version`, `backend`;
- `model_weights` with `layer_names` (Sequential: without the InputLayer), `backend`, `keras_version`,
  and per layer a group with `weight_names` = the variables' paths (`dense/kernel`,
  `lstm/lstm_cell/kernel`) and the datasets under them; an empty `top_level_model_weights`;
- `optimizer_weights` (names `adam/iteration`, `adam/dense_kernel_momentum`, ...) when the
  optimizer has been built and its slots are known.

Keras loads a legacy file by order: each layer's `trainable_weights + non_trainable_weights`.
For a layer without sublayers that is the order of its `vars/<i>` in the .keras file, so the
mapping is exact; an RNN's single cell is the same one level down. Anything else (nested
models, wrappers, attention's sublayers, custom or quantized layers, bfloat16) raises
`NeedsGraph`, and the caller goes through Keras.

Datasets are created contiguous and allocated at once (no fill), then their bytes are copied
from the archive by the kernel (`copy_file_range`): memory stays flat, nothing passes through
numpy. A source dataset that is not a contiguous byte range is copied by HDF5 (`H5Ocopy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wtool.errors import InternalError
from wtool.store import write as store_write
from wtool.store.naming import keras3_var_names

HDF5_OBJECT_HEADER_LIMIT = 64512  # Keras splits longer name lists into `weight_names0`, `weight_names1`, ...
LAYER_ONLY_KEYS = ("module", "registered_name", "build_config", "compile_config")
RNN_CLASSES = ("LSTM", "GRU", "SimpleRNN")
PLAIN_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64", "bool"}
# Optimizer classes whose slot layout is known: (per-variable slots, interleaved), then extra blocks.
OPTIMIZER_SLOTS = {"Adam": ["momentum", "velocity"], "AdamW": ["momentum", "velocity"], "SGD": ["momentum"]}


class NeedsGraph(Exception):
    """The .keras -> .h5 mapping is not certain for this model: the reason, for the note."""


@dataclass
class LegacyLayer:
    name: str
    weights: list[tuple[str, str]] = field(default_factory=list)  # (legacy weight name, source dataset)


@dataclass
class LegacyPlan:
    attrs: dict[str, bytes | str]
    layer_names: list[str]
    layers: list[LegacyLayer]
    optimizer: list[tuple[str, str]] | None
    notes: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[tuple[str, str]]:
        """(output dataset, source dataset) for every array, model weights then optimizer."""
        out = [(f"model_weights/{layer.name}/{w}", src) for layer in self.layers for w, src in layer.weights]
        return out + [(f"optimizer_weights/{w}", src) for w, src in self.optimizer or []]


def legacy_config(entry: Any, layer: bool = True) -> Any:
    """The config as Keras's legacy h5 writer serializes it (see the module docstring)."""
    if isinstance(entry, list):
        return [legacy_config(x, layer) for x in entry]
    if not isinstance(entry, dict):
        return entry
    out = {}
    for key, value in entry.items():
        if key == "shared_object_id" or (layer and key in LAYER_ONLY_KEYS):
            continue
        if key == "config" and layer and isinstance(value, dict):
            out[key] = {k: legacy_config(v, k == "layers") for k, v in value.items()
                        if k != "shared_object_id"}
        else:
            out[key] = legacy_config(value, False)
    return out


def _layer_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    cls = config.get("class_name")
    if cls not in ("Sequential", "Functional", "Model") or not str(config.get("module", "keras")).startswith("keras"):
        raise NeedsGraph(f"the model class {cls} is not a plain Sequential or Functional model")
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise NeedsGraph("the config has no layer list")
    if cls == "Sequential":
        if not layers or layers[0].get("class_name") != "InputLayer":
            raise NeedsGraph("the Sequential model has no InputLayer in its config")
        layers = layers[1:]
    for entry in layers:
        module = str(entry.get("module") or "")
        if not module.startswith("keras") or entry.get("registered_name") not in (None, entry.get("class_name")):
            raise NeedsGraph(f"layer {_name_of(entry)} is a custom class ({entry.get('registered_name')})")
    return layers


def _name_of(entry: dict[str, Any]) -> str:
    inner = entry.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return str(name if name is not None else entry.get("name"))


def _class_of(mf: Any, path: str) -> str:
    return next((str(x.class_name) for x in mf.layers if x.path == path), "?")


def _plan_layer(mf: Any, entry: dict[str, Any], by_layer: dict[str, list[Any]]) -> LegacyLayer:
    """One top-level layer: its legacy weight names, in Keras's load order."""
    name = _name_of(entry)
    cls = str(entry.get("class_name"))
    weights = by_layer.get(name, [])
    info = next((x for x in mf.layers if x.path == name and x.depth == 0), None)
    if not weights:
        return LegacyLayer(name)
    if info is None or info.quantization or info.lora_rank:
        raise NeedsGraph(f"layer {name} ({cls}) is quantized or not found in the weights file")
    group = (info.group or "").lstrip("/")
    sub, prefix = "", name
    if cls in RNN_CLASSES:
        sub, prefix = "cell/", f"{name}/{_cell_name(mf, group, cls)}"
    config = entry.get("config") if isinstance(entry.get("config"), dict) else None
    expected = keras3_var_names(f"{cls}Cell" if sub else cls, config, len(weights))
    out = LegacyLayer(name)
    for i, w in enumerate(weights):
        if w.h5_name != f"{group}/{sub}vars/{i}" or expected is None or w.name != expected[i]:
            raise NeedsGraph(f"layer {name} ({cls}) holds sublayers (or its variables are not a plain list)")
        if w.dtype not in PLAIN_DTYPES:
            raise NeedsGraph(f"layer {name} ({cls}) holds {w.dtype} weights")
        out.weights.append((f"{prefix}/{w.name}", w.h5_name))
    return out


def _cell_name(mf: Any, group: str, cls: str) -> str:
    from wtool.store.naming import to_snake_case

    vars_group = mf.h5.get(f"{group}/cell/vars")
    value = vars_group.attrs.get("name") if vars_group is not None else None
    if isinstance(value, bytes | np.bytes_):
        value = bytes(value).decode("utf-8", "replace")
    return str(value) if value else to_snake_case(f"{cls}Cell")


def _plan_optimizer(mf: Any, trainable: list[str]) -> tuple[list[tuple[str, str]] | None, list[str]]:
    """The optimizer's arrays under their legacy names, or None with a note when that is not certain."""
    group = mf.h5.get("optimizer/vars")
    if group is None or not len(group):
        return None, []
    opt = (mf.compile_config or {}).get("optimizer")
    cls = opt.get("class_name") if isinstance(opt, dict) else None
    cfg: dict[str, Any] = opt["config"] if isinstance(opt, dict) and isinstance(opt.get("config"), dict) else {}
    slots = list(OPTIMIZER_SLOTS.get(str(cls), []))
    if cls == "SGD" and not cfg.get("momentum"):
        slots = []
    extra = ["velocity_hat"] if cls in ("Adam", "AdamW") and cfg.get("amsgrad") else []
    n = len(group)
    oname = str(cfg.get("name") or str(cls).lower())
    names = [f"{oname}/iteration", f"{oname}/learning_rate"]
    paths = [p.replace("/", "_") for p in trainable]
    names += [f"{oname}/{p}_{s}" for p in paths for s in slots] + [f"{oname}/{p}_{s}" for s in extra for p in paths]
    if cls in OPTIMIZER_SLOTS and n == 2 and len(names) > 2:
        return None, ["the optimizer was never built (no training step): there is no state to keep"]
    if cls not in OPTIMIZER_SLOTS or n != len(names):
        return None, [f"the optimizer state ({cls}, {n} arrays) is dropped: its legacy names are not known here"]
    return list(zip(names, (f"optimizer/vars/{i}" for i in range(n)), strict=True)), []


def _attrs(mf: Any) -> dict[str, bytes | str]:
    attrs: dict[str, bytes | str] = {"keras_version": mf.keras_version or "3", "backend": mf.backend or "tensorflow"}
    model = {"class_name": mf.config.get("class_name"), "config": legacy_config(mf.config.get("config"), False)}
    model["config"]["layers"] = legacy_config(mf.config["config"]["layers"], True)
    attrs["model_config"] = json.dumps(model).encode("utf8")
    compiled = mf.compile_config
    if compiled and isinstance(compiled.get("optimizer"), dict):
        training = {k: _strip_objects(v) for k, v in compiled.items() if k != "optimizer"}
        opt = compiled["optimizer"]
        training["optimizer_config"] = {"class_name": opt.get("class_name"),
                                        "config": _strip_objects(opt.get("config"))}
        attrs["training_config"] = json.dumps(training).encode("utf8")
    return attrs


def _strip_objects(value: Any) -> Any:
    """Serialized objects in the compile config (a loss, a schedule) in the legacy {class_name, config} form."""
    if isinstance(value, list):
        return [_strip_objects(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_objects(v) for k, v in value.items()
                if k not in ("module", "registered_name", "shared_object_id")}
    return value


def plan_legacy_h5(mf: Any) -> LegacyPlan:
    """What the .h5 of this .keras model holds, or NeedsGraph with the reason Keras is needed."""
    if mf.format != "keras" or not isinstance(mf.config, dict):
        raise NeedsGraph("the input is not a .keras archive with a config")
    entries = _layer_entries(mf.config)
    root = mf.h5.get("vars")
    if root is not None and len(root):
        raise NeedsGraph("the model holds variables of its own")
    names = [_name_of(e) for e in entries]
    for layer in mf.layers:
        top = layer.path.split("/")[0]
        if layer.depth > 0 and top in names:
            raise NeedsGraph(f"layer {top} ({_class_of(mf, top)}) holds sublayers")
    by_layer: dict[str, list[Any]] = {}
    for w in mf.weights:
        by_layer.setdefault(w.layer, []).append(w)
    if len(set(names)) != len(names) or set(by_layer) - set(names):
        raise NeedsGraph("the weights file's layers do not match the config's")
    layers = [_plan_layer(mf, e, by_layer) for e in entries]
    trainable = [w for layer in layers for w, _ in layer.weights
                 if mf.weight(_canonical(layer.name, w)).trainable]
    optimizer, notes = _plan_optimizer(mf, trainable)
    return LegacyPlan(_attrs(mf), names, sorted(layers, key=lambda x: x.name), optimizer, notes)


def _canonical(layer: str, legacy_name: str) -> str:
    """`lstm` + `lstm/lstm_cell/kernel` -> `lstm/kernel` (wtool's path of the weight)."""
    return f"{layer}/{legacy_name.rsplit('/', 1)[-1]}"


# --------------------------------------------------------------------------- writing


def _save_name_list(group: h5py.Group, name: str, data: list[str]) -> None:
    """Keras's save_attributes_to_hdf5_group: split over numbered attributes past the header limit."""
    encoded = [x.encode("utf8") for x in data]
    arr = np.asarray(encoded)
    chunks = 1
    parts = np.array_split(arr, chunks)
    while any(x.nbytes > HDF5_OBJECT_HEADER_LIMIT for x in parts):
        chunks += 1
        parts = np.array_split(arr, chunks)
    if chunks > 1:
        for i, part in enumerate(parts):
            group.attrs[f"{name}{i}"] = part
    else:
        group.attrs[name] = encoded if encoded else np.asarray([])


def _allocated_dataset(group: h5py.Group, name: str, like: h5py.Dataset) -> h5py.Dataset:
    """A contiguous dataset of `like`'s shape and type, its storage allocated now and never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(like.shape) if like.shape else h5py.h5s.create(h5py.h5s.SCALAR)
    parent, _, leaf = name.rpartition("/")
    target = group.require_group(parent) if parent else group
    dsid = h5py.h5d.create(target.id, leaf.encode("utf8"), like.id.get_type(), space, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _write_structure(src: h5py.File, plan: LegacyPlan, tmp: Path, raw: bool) -> list[tuple[str, str, int]]:
    """Groups, attributes and datasets of the output; the byte-copyable ones left to copy: (out, src, src offset).

    `raw`: the source image is a byte range of its file (a stored member), so contiguous datasets can be
    copied by the kernel; a compressed member's datasets are copied by HDF5."""
    pending = []
    with h5py.File(tmp, "w") as out:
        for key, value in plan.attrs.items():
            out.attrs[key] = value
        mw = out.create_group("model_weights")
        _save_name_list(mw, "layer_names", plan.layer_names)
        mw.attrs["backend"] = str(plan.attrs["backend"]).encode("utf8")
        mw.attrs["keras_version"] = str(plan.attrs["keras_version"]).encode("utf8")
        for layer in plan.layers:
            _save_name_list(mw.create_group(layer.name), "weight_names", [w for w, _ in layer.weights])
        _save_name_list(mw.create_group("top_level_model_weights"), "weight_names", [])
        if plan.optimizer is not None:
            _save_name_list(out.create_group("optimizer_weights"), "weight_names", [w for w, _ in plan.optimizer])
        for out_name, src_name in plan.datasets:
            sds = src[src_name]
            extent = store_write.dataset_extent(sds) if raw else None
            if extent is None:
                parent, _, leaf = out_name.rpartition("/")
                out.copy(sds, out.require_group(parent), name=leaf)  # H5Ocopy, chunk by chunk in the library
                continue
            _allocated_dataset(out, out_name, sds)
            pending.append((out_name, src_name, extent[0]))
    return pending


def write_legacy_h5(source: Path, plan: LegacyPlan, tmp: Path) -> int:
    """Write the plan to `tmp` (the caller makes it atomic), check it, and return the bytes copied."""
    image = store_write.locate_image(source, "keras")
    raw = image.length > 0  # a stored member: its datasets are byte ranges of the archive
    with store_write.open_image(image) as src:
        pending = _write_structure(src, plan, tmp, raw)
    copied = 0
    with open(source, "rb") as fin, open(tmp, "r+b") as fout, h5py.File(tmp, "r") as check:
        offsets = {name: store_write.dataset_extent(check[name]) for name, _, _ in pending}
        for out_name, _src_name, src_off in pending:
            ext = offsets[out_name]
            if ext is None:
                raise InternalError(f"{tmp}: {out_name} was not allocated as one byte range")
            store_write.copy_bytes(fin.fileno(), fout.fileno(), ext[1], image.offset + src_off, ext[0])
            copied += ext[1]
    _verify(image, plan, tmp, pending)
    return copied


def _verify(image: Any, plan: LegacyPlan, tmp: Path, pending: list[tuple[str, str, int]]) -> None:
    """Every dataset there with the source's shape and type; byte-copied ranges compared at spread windows
    and first and last rows read back through HDF5 (a wrong offset shows in both); the others in full."""
    reader = store_write._Reader()
    copied = {name: off for name, _, off in pending}
    bad = []
    with store_write.open_image(image) as src, h5py.File(tmp, "r") as out, \
            open(image.path, "rb") as fin, open(tmp, "rb") as fout:
        for out_name, src_name in plan.datasets:
            sds, ds = src[src_name], out.get(out_name)
            if not isinstance(ds, h5py.Dataset) or ds.shape != sds.shape or ds.dtype != sds.dtype:
                bad.append(out_name)
                continue
            ext = store_write.dataset_extent(ds)
            if out_name in copied and ext is not None and not store_write._same_copy(
                    reader, fin.fileno(), image.offset + copied[out_name], fout.fileno(), ext[0], ext[1]):
                bad.append(out_name)
                continue
            rows = [(0, 1), (max(0, ds.shape[0] - 1), ds.shape[0])] if ds.shape and ds.shape[0] else [(0, 0)]
            if out_name not in copied:  # copied by HDF5: compared in full, slab by slab
                rows = list(store_write._row_slabs(ds.shape, ds.dtype.itemsize)) if ds.shape else [(0, 0)]
            for lo, hi in rows:
                if not np.array_equal(store_write._read_slab(ds, lo, hi), store_write._read_slab(sds, lo, hi),
                                      equal_nan=ds.dtype.kind in "fc"):
                    bad.append(out_name)
                    break
    if bad:
        raise InternalError("read-back check failed for " + ", ".join(bad[:5]), "this is a bug in wtool")
