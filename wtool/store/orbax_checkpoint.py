"""Orbax checkpoints (Keras 3's `OrbaxCheckpoint` callback, a JAX loop's `CheckpointManager`, a bare
`StandardCheckpointer`/`PyTreeCheckpointer` save) as a read-only weights file, read by orbax itself.

Orbax's on-disk format (OCDBT/Zarr through TensorStore) is not one wtool parses by hand: the optional
`orbax-checkpoint` package (`pip install 'wtool[orbax]'`) reads it, imported only here and only when
such a folder is opened. Shapes and dtypes come from the checkpoint's metadata; values are restored
as numpy arrays on the CPU (`RestoreArgs(restore_type=np.ndarray)`), the whole tree at the first read.
A root folder of numbered steps opens its latest step; a step folder (`run/10`) or one item folder
(`run/10/default`) opens that one. Leaves are named by their pytree keys joined by '/'. For Keras's
state tree (`trainable_variables`, `non_trainable_variables`, `optimizer_variables`,
`metrics_variables`) the model's variables are listed under their own paths, trainability from the
branch they sit in; optimizer and metric state (Keras's, or a JAX loop's `opt_state`) is counted, not
listed.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import InputError
from wtool.safety import guards as safety
from wtool.store.types import WeightInfo, WeightsOnlyFile, layers_from_paths

ITEM_METADATA = "_METADATA"  # a pytree item folder
STEP_METADATA = "_CHECKPOINT_METADATA"  # a step folder
PREFERRED_ITEMS = ("pytree", "default", "state")  # Keras's checkpointable, CheckpointManager's single item
KERAS_MODEL = {"trainable_variables": True, "non_trainable_variables": False}
NOT_WEIGHTS = ("optimizer_variables", "metrics_variables", "opt_state", "optimizer", "optimizer_state", "step")
INSTALL_HINT = "pip install 'wtool[orbax]' (or pip install orbax-checkpoint), then run this again"


def _orbax(where: Path) -> Any:
    """orbax.checkpoint, or exit 3 naming the package; its absl chatter silenced."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise InputError(f"{where}: an Orbax checkpoint folder (orbax.checkpoint / _CHECKPOINT_METADATA): reading "
                         "it needs the orbax-checkpoint package, which is not installed", INSTALL_HINT) from None
    logging.getLogger("absl").setLevel(logging.ERROR)
    if sys.unraisablehook is not _quiet_unraisable:
        global _PREVIOUS_HOOK
        _PREVIOUS_HOOK = sys.unraisablehook
        sys.unraisablehook = _quiet_unraisable
    return ocp


_PREVIOUS_HOOK = sys.unraisablehook


def _quiet_unraisable(args: Any) -> None:
    """After a failed read, TensorStore's callbacks may still reach orbax's event loop once it is closed:
    that `RuntimeError('Event loop is closed')` is noise after the one-line error, so it is dropped."""
    if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
        return
    _PREVIOUS_HOOK(args)


def _steps(root: Path) -> list[int]:
    """Committed numbered step folders (orbax's temporary `N.orbax-checkpoint-tmp-*` are not digits)."""
    try:
        names = os.listdir(root)
    except OSError as exc:
        raise InputError(f"{root}: cannot read ({exc.strerror})") from None
    return sorted(int(n) for n in names if n.isdigit() and (root / n).is_dir() and not (root / n).is_symlink())


def find_item(path: Path) -> tuple[Path, int | None, list[int]]:
    """The pytree item folder to read, its step (None for a bare save) and every step of the run."""
    if (path / ITEM_METADATA).is_file():  # an item folder (run/10/default) or a bare save
        nested = not (path / STEP_METADATA).is_file() and (path.parent / STEP_METADATA).is_file()
        item, step_dir = path, (path.parent if nested else path)
    elif (path / STEP_METADATA).is_file():  # one step folder (run/10)
        step_dir = path
        item = _pick_item(path)
    else:  # the run's root: its latest step
        steps = _steps(path)
        if not steps:
            raise InputError(f"{path}: an Orbax checkpoint folder without a committed step folder",
                             "the run may still be writing, or the folder is a partial copy")
        step_dir = path / str(steps[-1])
        item = _pick_item(step_dir)
    step = int(step_dir.name) if step_dir.name.isdigit() else None
    return item, step, (_steps(step_dir.parent) if step is not None else [])


def _pick_item(step_dir: Path) -> Path:
    if (step_dir / ITEM_METADATA).is_file():  # StandardCheckpointer().save(dir, tree): the step is the item
        return step_dir
    try:
        items = sorted(n for n in os.listdir(step_dir) if (step_dir / n / ITEM_METADATA).is_file()
                       and not (step_dir / n).is_symlink())
    except OSError as exc:
        raise InputError(f"{step_dir}: cannot read ({exc.strerror})") from None
    for name in PREFERRED_ITEMS:
        if name in items:
            return step_dir / name
    if len(items) == 1:
        return step_dir / items[0]
    if not items:
        raise InputError(f"{step_dir}: an Orbax checkpoint folder with no pytree in it (no {ITEM_METADATA} file)",
                         "give a step folder (run/10) or its item folder (run/10/default)")
    raise InputError(f"{step_dir}: an Orbax step with several items ({', '.join(items)}): wtool reads one",
                     f"give one of them: {step_dir / items[0]}")


def _key(entry: Any) -> str:
    """One pytree key as text: a dict key, a sequence index or an attribute name."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _failure(where: Path, exc: BaseException, what: str) -> InputError:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return InputError(f"{where}: the Orbax checkpoint is damaged or incomplete ({what}: {type(exc).__name__}: "
                      f"{first})", "copy the whole step folder again, or give another step")


def _name(keys: list[str], sequential: str | None = None) -> tuple[str, bool] | None:
    """(weight path, trainable) of a leaf, or None for optimizer or metric state. A Keras Sequential's
    variables carry its own name first (`sequential/dense/kernel`), which its .keras file does not."""
    if keys[0] in NOT_WEIGHTS:
        return None
    if keys[0] in KERAS_MODEL and len(keys) > 1:
        own = keys[2:] if sequential is not None and keys[1] == sequential and len(keys) > 2 else keys[1:]
        return "/".join(own), KERAS_MODEL[keys[0]]
    return "/".join(keys), True


def _leaves(tree: Any) -> list[tuple[list[str], Any]]:
    """(keys, leaf) of a nested tree of dicts, lists and metadata leaves, in orbax's order."""
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [([_key(k) for k in keys], leaf) for keys, leaf in flat]


class OrbaxCheckpointFile(WeightsOnlyFile):
    """An opened Orbax checkpoint: the ModelFile interface, read-only, the model's arrays as weights."""

    format = "orbax"
    layout = "orbax"

    def __init__(self, path: Path) -> None:
        self._ocp = _orbax(path)
        self.item, self.step, self.steps = find_item(path)
        self.path = path
        self.file_size = sum(f.stat().st_size for f in self.item.rglob("*") if f.is_file() and not f.is_symlink())
        self._checkpointer = self._ocp.PyTreeCheckpointer()
        try:
            meta = self._checkpointer.metadata(self.item.resolve())  # orbax wants an absolute path
            tree = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
            if not isinstance(tree, dict | list | tuple):
                raise ValueError(f"orbax found no array metadata ({ITEM_METADATA} or the array store is damaged)")
            leaves = _leaves(tree)
            self._tree = tree
        except Exception as exc:  # orbax and TensorStore raise many kinds: any of them is a bad folder
            raise _failure(self.item, exc, "its metadata") from None
        self.warnings: list[str] = []
        self._sequential = self._sequential_name()
        self._name_weights(leaves)
        safety.check_total_bytes(sum(w.nbytes for w in self.weights), str(path))
        self._by_path = {w.path: w for w in self.weights}
        self._values: dict[str, np.ndarray] | None = None

    def _name_weights(self, leaves: list[tuple[list[str], Any]]) -> None:
        self.weights: list[WeightInfo] = []
        self._keys: dict[str, str] = {}
        self.optimizer_weights = 0
        for keys, leaf in leaves:
            named = _name(keys, self._sequential) if keys else None
            shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
            if named is None:
                self.optimizer_weights += 1
                continue
            if shape is None or dtype is None:  # a scalar saved as a Python number or a string
                self.warnings.append(f"{'/'.join(keys)}: a {type(leaf).__name__} value, not an array: not read")
                continue
            path, trainable = named
            layer, _, var = path.rpartition("/")
            self.weights.append(WeightInfo(path, layer or path, var, tuple(int(d) for d in shape),
                                           np.dtype(dtype).name, trainable, "/".join(keys)))
            self._keys[path] = "/".join(keys)
        if self.optimizer_weights:
            self.warnings.append(f"not listed, not model weights: {self.optimizer_weights} optimizer, metric or step "
                                 "value(s)")
        if self.step is not None:
            others = [s for s in self.steps if s != self.step]
            self.warnings.append(f"Orbax step {self.step}" + (f" (steps in the run: {', '.join(map(str, self.steps))};"
                                 f" give {self.item.parent.parent / str(others[0])} for another)" if others else ""))
        self.layers = layers_from_paths(self.weights)

    def _sequential_name(self) -> str | None:
        """The model's name when Keras's OrbaxCheckpoint saved a Sequential's config beside the pytree (the
        `model_config` item, read by orbax; its JSON parsed with wtool's capped parser), else None."""
        config_item = self.item.parent / "model_config"
        if self.item.name != "pytree" or not (config_item / ITEM_METADATA).is_file() or config_item.is_symlink():
            return None
        from wtool.safety.safejson import parse_config_json

        try:
            text = self._checkpointer.restore(config_item.resolve()).get("config")
        except Exception as exc:  # as for the arrays: any failure of orbax is a damaged folder
            raise _failure(config_item, exc, "its model_config") from None
        config = parse_config_json(text, str(config_item)) if isinstance(text, str) else None
        if isinstance(config, dict) and config.get("class_name") == "Sequential":
            name = (config.get("config") or {}).get("name")
            return name if isinstance(name, str) and name else None
        return None

    def _restore(self) -> dict[str, np.ndarray]:
        """Every leaf as a numpy array on the CPU, by checkpoint key: orbax's own restore, once."""
        if self._values is None:
            ocp = self._ocp
            try:
                import jax

                args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), self._tree)
                restored = self._checkpointer.restore(self.item.resolve(), args=ocp.args.PyTreeRestore(restore_args=args))
                self._values = {"/".join(k): np.asarray(v) for k, v in _leaves(restored)}
            except Exception as exc:  # a missing or truncated array file surfaces here
                raise _failure(self.item, exc, "its arrays") from None
        return self._values

    def key_of(self, path: str) -> str:
        """The weight's place in the saved tree (`trainable_variables/dense/kernel`), keys joined by '/'."""
        return self._keys[self.weight(path).path]

    def weight_source(self, path: str) -> tuple[Path, str, str]:
        return self.item, self.format, self.key_of(path)

    def read(self, path: str) -> np.ndarray:
        info = self.weight(path)
        value = self._restore().get(info.h5_name)
        if value is None or tuple(value.shape) != info.shape or value.dtype.name != info.dtype:
            raise InputError(f"{self.item}: {info.h5_name}: the restored array does not match the checkpoint's "
                             f"metadata ({info.shape} {info.dtype})")
        return value

    def close(self) -> None:
        self._values = None

    def __repr__(self) -> str:
        return f"<OrbaxCheckpointFile {self.item} weights={len(self.weights)}>"


def open_orbax_checkpoint(path: str | os.PathLike[str]) -> OrbaxCheckpointFile:
    """Open a run folder (its latest step), a step folder or an item folder."""
    return OrbaxCheckpointFile(Path(os.fspath(path)))
