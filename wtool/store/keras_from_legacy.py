"""Legacy `.h5` written by Keras 3 -> `.keras` at the HDF5 level: the reverse of `wtool.store.legacy_h5`.

The archive Keras's `model.save("x.keras")` writes: `config.json` (the legacy config with each
layer entry's `module` / `registered_name` put back, and the training config as
`compile_config`), `metadata.json`, and `model.weights.h5` with `layers/<class>[_n]/vars/<i>`
(groups named as Keras names them: the snake-cased class, numbered in layer order), an RNN's
cell under `cell/vars`, the optimizer's arrays under `optimizer/vars` in their saved order.

Only files whose config is Keras 3's own (keras_version 3.x) and whose layers are plain
(the same conditions as the other direction) are mapped here; older files need their config
translated, which is Keras's (and wtool's legacy graph code's) job: `NeedsGraph`.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from wtool.store import write as store_write
from wtool.store.legacy import read_attr_list
from wtool.store.legacy_h5 import RNN_CLASSES, NeedsGraph, _allocated_dataset, _name_of
from wtool.store.naming import keras3_var_names, to_snake_case

TOP_MODULES = {"Sequential": ("keras", None), "Functional": ("keras.src.models.functional", "Functional"),
               "Model": ("keras.src.models.functional", "Functional")}


@dataclass
class KerasPlan:
    config: dict[str, Any]
    metadata: dict[str, Any]
    groups: list[tuple[str, str]]                          # (vars group, saved name) to create
    datasets: list[tuple[str, str]] = field(default_factory=list)  # (output dataset, source dataset)
    notes: list[str] = field(default_factory=list)


def _keras3_entry(entry: dict[str, Any]) -> dict[str, Any]:
    out = {"module": "keras.layers", **entry, "registered_name": None}
    inner = entry.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        raise NeedsGraph(f"layer {_name_of(entry)} is a nested model")
    return out


def _config(mf: Any) -> dict[str, Any]:
    cfg = mf.config
    cls = cfg.get("class_name") if isinstance(cfg, dict) else None
    if cls not in TOP_MODULES or not str(mf.keras_version or "").startswith("3."):
        raise NeedsGraph("the file is not a plain Sequential or Functional model saved by Keras 3")
    inner = dict(cfg["config"]) if isinstance(cfg.get("config"), dict) else {}
    layers = inner.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise NeedsGraph("the config has no layer list")
    inner["layers"] = [_keras3_entry(x) for x in layers]
    module, registered = TOP_MODULES[cls]
    out: dict[str, Any] = {"module": module, "class_name": cls, "config": inner, "registered_name": registered}
    training = mf.training_config
    if isinstance(training, dict) and isinstance(training.get("optimizer_config"), dict):
        opt = training["optimizer_config"]
        modules = {"loss": "keras.losses", "metrics": "keras.metrics", "weighted_metrics": "keras.metrics"}
        out["compile_config"] = {
            "optimizer": {"module": "keras.optimizers", "class_name": opt.get("class_name"),
                          "config": opt.get("config"), "registered_name": None},
            **{k: _restore_objects(v, modules[k]) if k in modules else v
               for k, v in training.items() if k != "optimizer_config"}}
    return out


def _restore_objects(value: Any, module: str) -> Any:
    """A loss or metric object in the legacy {class_name, config} form, back in Keras 3's (built-ins only)."""
    if isinstance(value, list):
        return [_restore_objects(v, module) for v in value]
    if isinstance(value, dict) and "class_name" in value:
        if not isinstance(value.get("config"), dict) or set(value) - {"class_name", "config"}:
            raise NeedsGraph(f"the training config holds a {value.get('class_name')} it cannot place")
        return {"module": module, "class_name": value["class_name"], "config": value["config"],
                "registered_name": None}
    if isinstance(value, dict):
        return {k: _restore_objects(v, module) for k, v in value.items()}
    return value


def _layer(mf: Any, entry: dict[str, Any], group_name: str, plan: KerasPlan) -> None:
    """One layer's vars group(s) and datasets, checked against Keras 3's own legacy naming."""
    name, cls = _name_of(entry), str(entry.get("class_name"))
    base = f"layers/{group_name}"
    plan.groups.append((f"{base}/vars", name))
    layer_group = mf.h5.get(f"model_weights/{name}")
    names = read_attr_list(layer_group, "weight_names", str(mf.path)) if layer_group is not None else []
    if not names:
        return
    config = entry.get("config") if isinstance(entry.get("config"), dict) else None
    # Names are variable paths: `dense/kernel` for a loaded model, `model/dense/kernel` for one built
    # in a session (its name scope); the layer (and cell) and variable names are what must match.
    sub = ""
    if cls in RNN_CLASSES:
        cell = names[0].split("/")[-2] if names[0].count("/") >= 2 else ""
        plan.groups.append((f"{base}/cell/vars", cell))
        sub, prefix = "cell/", f"{name}/{cell}"
        expected = keras3_var_names(f"{cls}Cell", config, len(names))
    else:
        prefix = name
        expected = keras3_var_names(cls, config, len(names))
    if expected is None or len(expected) != len(names) or not all(
            n == f"{prefix}/{v}" or n.endswith(f"/{prefix}/{v}") for n, v in zip(names, expected, strict=True)):
        raise NeedsGraph(f"layer {name} ({cls}): its weight names are not Keras 3's for the class")
    for i, weight in enumerate(names):
        plan.datasets.append((f"{base}/{sub}vars/{i}", f"model_weights/{name}/{weight}"))


def plan_keras_archive(mf: Any) -> KerasPlan:
    """What the .keras of this legacy .h5 holds, or NeedsGraph with the reason Keras is needed."""
    if mf.format != "h5":
        raise NeedsGraph("the input is not a full-model .h5 file")
    config = _config(mf)
    meta = {"keras_version": mf.keras_version, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    plan = KerasPlan(config, meta, [("vars", str(config["config"].get("name") or "model"))])
    entries = config["config"]["layers"]
    if config["class_name"] == "Sequential":
        entries = [e for e in entries if e.get("class_name") != "InputLayer"]
    used: dict[str, int] = {}
    for entry in entries:
        if not str(entry.get("module", "")).startswith("keras"):
            raise NeedsGraph(f"layer {_name_of(entry)} is a custom class")
        snake = to_snake_case(str(entry.get("class_name")))
        used[snake] = used.get(snake, -1) + 1
        _layer(mf, entry, snake if not used[snake] else f"{snake}_{used[snake]}", plan)
    if len(plan.datasets) != len(mf.weights):
        raise NeedsGraph("the file holds weights outside its layers' groups")
    opt = mf.h5.get("optimizer_weights")
    if opt is not None:
        opt_names = read_attr_list(opt, "weight_names", str(mf.path)) or []
        oname = opt_names[0].split("/")[0] if opt_names else "optimizer"
        plan.groups.append(("optimizer/vars", oname))
        plan.datasets += [(f"optimizer/vars/{i}", f"optimizer_weights/{n}") for i, n in enumerate(opt_names)]
    return plan


def write_keras_archive(source: Path, plan: KerasPlan, tmp: Path) -> None:
    """Write the archive to `tmp` (the caller makes it atomic): the weights file staged beside it."""
    with tempfile.TemporaryDirectory(prefix=".wtool-", dir=tmp.parent) as tmpdir:
        weights = Path(tmpdir) / store_write.WEIGHTS_MEMBER
        _write_weights(source, plan, weights)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr("metadata.json", json.dumps(plan.metadata))
            zf.writestr(store_write.CONFIG_MEMBER, json.dumps(plan.config))
            info = zipfile.ZipInfo(store_write.WEIGHTS_MEMBER, date_time=datetime.datetime.now().timetuple()[:6])
            with open(weights, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, store_write.SLAB_BYTES)


def _write_weights(source: Path, plan: KerasPlan, out_path: Path) -> None:
    pending = []
    with h5py.File(source, "r") as src, h5py.File(out_path, "w") as out:
        for group, name in plan.groups:
            out.require_group(group).attrs["name"] = name
        out.require_group("layers")
        for out_name, src_name in plan.datasets:
            sds = src[src_name]
            extent = store_write.dataset_extent(sds)
            if extent is None:
                parent, _, leaf = out_name.rpartition("/")
                out.copy(sds, out.require_group(parent), name=leaf)
            else:
                _allocated_dataset(out, out_name, sds)
                pending.append((out_name, extent))
    with open(source, "rb") as fin, open(out_path, "r+b") as fout, h5py.File(out_path, "r") as check:
        for out_name, (src_off, nbytes) in pending:
            ext = store_write.dataset_extent(check[out_name])
            if ext is None or ext[1] != nbytes:
                from wtool.errors import InternalError

                raise InternalError(f"{out_path}: {out_name} was not allocated as one byte range")
            store_write.copy_bytes(fin.fileno(), fout.fileno(), nbytes, src_off, ext[0])
