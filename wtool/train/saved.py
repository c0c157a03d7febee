"""Training state stored in a model file: its compile config and optimizer variables (read with h5py and
zipfile only), and continuing those variables in this run's optimizer."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, InputError
from wtool.fileio import check_input_file
from wtool.graph.model import import_keras


@dataclass
class SavedOptimizerState:
    """Optimizer variables stored in a model file, in the optimizer's own order."""

    values: list[np.ndarray]
    names: list[str] | None  # tf.keras 2: `iteration` or `WEIGHT/PATH::slot`; None: the optimizer's own order
    legacy: bool = False  # Keras 1/2 names that cannot be mapped
    source: str = ""

    @property
    def iterations(self) -> int:
        if self.names:
            for key, value in zip(self.names, self.values, strict=False):
                if key in ("iteration", "iterations"):
                    return int(value)
        if self.values and np.asarray(self.values[0]).shape == ():
            return int(self.values[0])
        return 0


@dataclass
class SavedTraining:
    compile_config: dict[str, Any] | None
    optimizer_state: SavedOptimizerState | None


_LEGACY_SLOTS = {"m": "momentum", "v": "velocity", "vhat": "velocity_hat", "momentum": "momentum",
                 "rms": "velocity", "mg": "average_gradient", "accumulator": "accumulator"}


def decode(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _h5_state(h5: Any, source: str) -> SavedOptimizerState | None:
    """Keras 3 `optimizer/vars/<i>` or legacy `optimizer_weights` (with `weight_names`)."""
    if "optimizer" in h5 and "vars" in h5["optimizer"]:
        group = h5["optimizer"]["vars"]
        order = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
        return SavedOptimizerState([np.asarray(group[k]) for k in order], None, source=source)
    if "optimizer_weights" in h5:
        group = h5["optimizer_weights"]
        raw = group.attrs.get("weight_names")
        if raw is None:
            return None
        names = [decode(n) for n in raw]
        if not names:
            return None
        values = [np.asarray(group[n]) for n in names]
        if all(":" not in n for n in names):  # Keras 3: in the optimizer's own order, like `optimizer/vars`
            return SavedOptimizerState(values, None, source=source)
        keys: list[str] = []
        for n in names:  # tf.keras 2: `Adam/iter:0`, `Adam/hidden/kernel/m:0`
            base = n.rsplit(":", 1)[0]
            parts = base.split("/")
            if parts[-1] in ("iter", "iterations"):
                keys.append("iteration")
            elif len(parts) >= 4 and parts[-1] in _LEGACY_SLOTS:
                keys.append("/".join(parts[1:-1]) + "::" + _LEGACY_SLOTS[parts[-1]])
            else:
                return SavedOptimizerState(values, None, legacy=True, source=source)
        return SavedOptimizerState(values, keys, source=source)
    return None


def read_saved_training(path: str, arch: str | None = None) -> SavedTraining:
    """Compile config and optimizer state stored in a model file (h5py and zipfile only)."""
    import h5py

    if Path(path).is_dir() and not Path(path).is_symlink():  # a keras-hub preset: keras-hub saves neither
        return SavedTraining(None, None)
    if _weights_only(path):  # e.g. .safetensors: no training state saved; the compile config is --arch's
        return SavedTraining(read_saved_training(arch).compile_config if arch is not None else None, None)
    p = check_input_file(path)
    name = p.name.lower()
    compile_config: dict[str, Any] | None = None
    state: SavedOptimizerState | None = None
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
                if "config.json" in names:
                    cfg = json.loads(zf.read("config.json"))
                    compile_config = cfg.get("compile_config") or None
                if "model.weights.h5" in names:
                    with h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
                        state = _h5_state(h5, str(p))
        else:
            with h5py.File(p, "r") as h5:
                raw = h5.attrs.get("training_config")
                if raw is not None:
                    tc = json.loads(decode(raw))
                    compile_config = {
                        "optimizer": tc.get("optimizer_config"),
                        "loss": tc.get("loss"),
                        "metrics": tc.get("metrics"),
                    }
                state = _h5_state(h5, str(p))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read the saved training state ({str(exc).splitlines()[0][:200]})") from None
    if name.endswith(".weights.h5") and arch is not None and compile_config is None:
        compile_config = read_saved_training(arch).compile_config
    return SavedTraining(compile_config, state)




def _weights_only(path: str) -> bool:
    """Whether the store reads `path` as weights without a model around them (no training state saved)."""
    from wtool.store import open_model
    from wtool.store.types import WeightsOnlyFile

    with open_model(path) as mf:
        return isinstance(mf, WeightsOnlyFile)


def _slot_key(var: Any) -> str:
    return var.path.split("/", 1)[-1]


def _slot_owners(opt_vars: list[Any], refs: list[Any]) -> list[tuple[int, str] | None]:
    """(index into refs, slot name) of each optimizer variable; None for iteration/learning_rate.

    Keras names a slot `<optimizer>/<weight path with _>_<slot>`; the longest matching weight
    prefix wins, and weights with the same path are taken in order."""
    prefixes = [ref.path.replace("/", "_") + "_" for ref in refs]
    used: dict[tuple[str, str], int] = {}
    owners: list[tuple[int, str] | None] = []
    for var in opt_vars:
        key = _slot_key(var)
        hits = [(len(p), i) for i, p in enumerate(prefixes) if key.startswith(p)]
        if not hits:
            owners.append(None)
            continue
        longest = max(h[0] for h in hits)
        same = [i for n, i in hits if n == longest]
        slot = key[longest:]
        nth = used.get((prefixes[same[0]], slot), 0)
        used[(prefixes[same[0]], slot)] = nth + 1
        owners.append((same[min(nth, len(same) - 1)], slot))
    return owners


def restore_optimizer_state(optimizer: Any, state: SavedOptimizerState, saved_base: Any | None,
                            saved_trainable: list[Any], trainable: list[Any]) -> list[str]:
    """Continue from saved optimizer variables; anything present that cannot be restored is an error (exit 4).

    Slots are matched to weights by identity (Keras 3 files, whose state is in the optimizer's
    own order for the saved trainable weights) or by weight path (tf.keras 2 names), so a run
    that freezes or unfreezes layers keeps the moments of the weights it still trains.
    """
    hint = "pass --reset-optimizer to start the optimizer fresh"
    src = state.source
    if state.legacy:
        raise IncompatibleError(f"{src}: the saved optimizer state uses Keras 1/2 variable names that cannot be "
                                "matched to this model's weights", hint)
    if saved_base is None:
        raise IncompatibleError(f"{src}: the file has optimizer state but no optimizer config to read it with", hint)
    if type(saved_base) is not type(optimizer):
        raise IncompatibleError(f"{src}: the saved optimizer state is {type(saved_base).__name__}'s; "
                                f"{type(optimizer).__name__} cannot continue it", hint)
    values = state.values
    saved: dict[tuple[int, str], np.ndarray] = {}  # (id of weight, slot) -> value
    iteration: np.ndarray | None = None
    if state.names is None:
        reader = type(saved_base).from_config(saved_base.get_config())
        with import_keras().name_scope(reader.name, caller=reader):
            reader.build(saved_trainable)
        layout = reader.variables
        if len(layout) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(layout, values, strict=True)):
            raise IncompatibleError(f"{src}: the saved optimizer state ({len(values)} arrays) does not fit "
                                    f"{type(optimizer).__name__} on this model ({len(layout)} variables)", hint)
        for var, owner, value in zip(layout, _slot_owners(layout, saved_trainable), values, strict=True):
            if owner is not None:
                saved[(id(saved_trainable[owner[0]]), owner[1])] = value
            elif _slot_key(var) == "iteration":
                iteration = value
    else:
        for key, value in zip(state.names, values, strict=True):
            if key == "iteration":
                iteration = value
                continue
            weight, _, slot = key.partition("::")
            found = [v for v in saved_trainable if v.path == weight or v.path.endswith("/" + weight)]
            if len(found) != 1:
                raise IncompatibleError(f"{src}: saved optimizer variable for '{weight}' matches "
                                        f"{len(found) or 'no'} weights of this model", hint)
            saved[(id(found[0]), slot)] = value
    opt_vars = optimizer.variables
    used = 0
    missing = 0
    for var, owner in zip(opt_vars, _slot_owners(opt_vars, trainable), strict=True):
        if owner is None:
            if _slot_key(var) == "iteration" and iteration is not None:
                var.assign(iteration)
            continue
        saved_value = saved.get((id(trainable[owner[0]]), owner[1]))
        if saved_value is None:
            missing += 1
            continue
        if tuple(var.shape) != saved_value.shape:
            raise IncompatibleError(f"{src}: saved optimizer variable {_slot_key(var)} has shape {saved_value.shape}, "
                                    f"this model needs {tuple(var.shape)}", hint)
        var.assign(saved_value)
        used += 1
    if saved and not used:
        raise IncompatibleError(f"{src}: none of the {len(saved)} saved optimizer variables belongs to a weight "
                                "this run trains", hint)
    notes = []
    if missing:
        notes.append(f"{missing} optimizer variables had no saved value (newly trainable weights) and start at zero")
    if len(saved) > used:
        notes.append(f"{len(saved) - used} saved optimizer variables belong to weights frozen in this run")
    return notes
