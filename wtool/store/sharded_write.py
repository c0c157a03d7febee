"""Writing a Keras 3 weights set as sharded `X.weights.json` + shards (or one `.weights.h5`), atomically.

The datasets go out in save order (the source's group order, variables by index), split the
way Keras's `ShardedH5IOStore` splits them: a shard takes values until the next one would
pass `max_shard_bytes`; a single value larger than that is refused, as Keras refuses it.
Without `max_shard_bytes`, a sharded source keeps its own split (shard i stays shard i).

Atomic as a whole: every shard and the map are written to a staging folder beside OUT and
read back. With no set at OUT the shards are then renamed into place and the map last. Over an
existing set (`--in-place`, `-o` onto a map) the shard names collide with the old set's, so:
1. each old shard under a standard name gets a second name (a hard link, a copy where links
   are refused): `X_00000.wtool-old-ID.weights.h5`;
2. the map at OUT is atomically replaced by the old map naming those second names (a "transit"
   map: the old model, which Keras and wtool read as before; it lists the standard names as
   `metadata.wtool_in_transit`, so wtool does not refuse them as stale shards);
3. old shards the new set has no counterpart for leave their standard names (an unnamed
   `X_NNNNN.weights.h5` beside the new map would be refused); the new shards are renamed onto
   the standard names, the first shard (which Keras opens before it reads the map) last;
4. the new map replaces the transit map: this one rename decides old or new;
5. the second names (and any other file only the old map named) are removed.
So after a kill (SIGKILL, power aside) at any moment OUT reads as exactly the old model or
exactly the new one, and what wtool writes keeps Keras's own shard names. A failure (not a
kill) before step 4 restores the old map and shards. Leftovers of a killed write (the hidden
staging folder, second names once step 4 is done) are ignored by readers; the next write of
the set removes the second names.

The map and each shard carry the same write id (`metadata.wtool_write_id`, a root attribute of
each shard, both ignored by Keras), so a shard from another write (copied in, or a set
interrupted by an older wtool) is refused on reading ("from another write") instead of being
read as a mix of old and new values.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, InternalError, UsageError
from wtool.store.sharded import IN_TRANSIT, MAP_SUFFIX, SHARD_SUFFIX, WRITE_ID, base_name, shard_name

KERAS_DEFAULT_SHARD_BYTES = 5 * 1024**3  # ShardedH5IOStore's max_shard_size=5 (GB)
OPTIMIZER_GROUP = "optimizer"
# Tests only: SIGKILL this process just before the Nth file operation of a commit (1, 2, ...).
KILL_HOOK = "WTOOL_TEST_KILL_AT"
BACKUP_TAG = ".wtool-old-"


@dataclass
class SetWritten:
    shards: list[str]
    total_bytes: int
    written: int
    verified: int


def _ordered_datasets(h5: Any, drop_optimizer: bool) -> list[str]:
    """Dataset names in save order: by their group's header address, then by variable index."""
    import h5py

    from wtool.store.keras3 import natural_key

    found: list[tuple[int, list[Any], str]] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if drop_optimizer and name.split("/")[0] == OPTIMIZER_GROUP:
            return
        parent = name.rpartition("/")[0]
        addr = int(h5py.h5o.get_info(h5[parent].id).addr) if parent else 0
        found.append((addr, natural_key(name.rpartition("/")[2]), name))

    h5.visititems(visit)
    return [name for _, _, name in sorted(found)]


def _assign_shards(names: list[str], sizes: dict[str, int], max_bytes: int | None,
                   keep: Callable[[str], int] | None, out_base: str | None) -> dict[str, str]:
    """Dataset -> output shard file name, by Keras's rule (or the source's own split, `keep`)."""
    if out_base is None:
        return dict.fromkeys(names, "")
    if keep is not None and max_bytes is None:
        return {n: shard_name(out_base, keep(n)) for n in names}
    limit = max_bytes or KERAS_DEFAULT_SHARD_BYTES
    index, current, out = 0, 0, {}
    for n in names:
        size = sizes[n]
        if size > limit:
            raise UsageError(f"--max-shard-size: weight /{n} is {size:,} bytes, more than a shard of {limit:,} "
                             "bytes may hold", "give a larger --max-shard-size")
        current += size
        if current > limit:
            index, current = index + 1, size
        out[n] = shard_name(out_base, index)
    return out


def write_weight_set(reader: Any, out: Path, values: Mapping[str, Callable[[], Any]], *,
                     max_shard_bytes: int | None = None, drop_optimizer: bool = False) -> SetWritten:
    """Write `reader`'s datasets (those in `values` replaced) to OUT: a sharded map or one .weights.h5."""
    if reader.layout != "keras3":
        raise IncompatibleError(f"{reader.path}: only Keras 3 weights (the .keras / .weights.h5 layout) can be "
                                "written as sharded .weights.json", "convert it to .keras first")
    sharded_out = out.name.lower().endswith(MAP_SUFFIX)
    names = _ordered_datasets(reader.h5, drop_optimizer)
    missing = sorted(set(values) - set(names))
    if missing:
        raise IncompatibleError(f"{missing[0]}: no such dataset in {reader.path}")
    sizes = {n: math.prod(reader.h5[n].shape) * reader.h5[n].dtype.itemsize for n in names}
    keep = reader.shard_index_of if hasattr(reader, "shard_index_of") else None
    placement = _assign_shards(names, sizes, max_shard_bytes, keep, base_name(out) if sharded_out else None)
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{out}: output directory {directory} does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=directory))
    try:
        write_id = uuid.uuid4().hex
        files = _write_staged(reader, staging, out.name, names, placement, values, write_id, drop_optimizer)
        verified = _verify(staging, placement, values, reader)
        if sharded_out:
            _write_map(staging / out.name, placement, sizes, write_id)
        _commit(staging, out, files, sharded_out, write_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SetWritten(files if sharded_out else [], sum(sizes.values()), len(values), verified)


def _write_staged(reader: Any, staging: Path, out_name: str, names: list[str], placement: dict[str, str],
                  values: Mapping[str, Callable[[], Any]], write_id: str, drop_optimizer: bool) -> list[str]:
    import h5py

    files = list(dict.fromkeys(placement[n] for n in names)) or [shard_name(base_name(Path(out_name)), 0)
                                                                 if out_name.lower().endswith(MAP_SUFFIX) else ""]
    opened: dict[str, Any] = {}
    try:
        for f in files:
            opened[f] = h5py.File(staging / (f or out_name), "w")
            if f:
                opened[f].attrs[WRITE_ID] = write_id
        _copy_groups(reader.h5, opened[files[0]], drop_optimizer)
        for n in names:
            src = reader.raw_dataset(n)
            value = np.asarray(values[n]() if n in values else src[()])
            if value.shape != src.shape:
                raise InternalError(f"/{n}: a value of shape {value.shape} for a dataset of shape {src.shape}")
            dst = opened[placement[n]]
            parent = n.rpartition("/")[0]
            group = dst.require_group(parent) if parent else dst
            ds = group.create_dataset(n.rpartition("/")[2], data=value.astype(src.dtype, copy=False))
            for key in src.attrs:
                ds.attrs[key] = src.attrs[key]
    finally:
        for h5 in opened.values():
            h5.close()
    return [f for f in files if f]


def _copy_groups(src: Any, dst: Any, drop_optimizer: bool) -> None:
    """Every group (and its attributes: Keras's layer `name`) into the first output file, in save order."""
    import h5py

    for key in src.attrs:
        if key != WRITE_ID:  # the new set has its own
            dst.attrs[key] = src.attrs[key]
    groups: list[str] = []
    src.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) else None)
    groups.sort(key=lambda n: h5py.h5o.get_info(src[n].id).addr)
    for n in groups:
        if drop_optimizer and n.split("/")[0] == OPTIMIZER_GROUP:
            continue
        g = dst.require_group(n)
        for key in src[n].attrs:
            g.attrs[key] = src[n].attrs[key]


def _verify(staging: Path, placement: dict[str, str], values: Mapping[str, Callable[[], Any]], reader: Any) -> int:
    """Read every replaced dataset back from the staged files and compare it with what was meant."""
    import h5py

    count = 0
    for n, make in values.items():
        f = placement[n] or None
        target = staging / f if f else next(p for p in staging.iterdir() if p.suffix == ".h5")
        with h5py.File(target, "r") as h5:
            got = h5[n][()]
        want = np.asarray(make()).astype(reader.raw_dataset(n).dtype, copy=False)
        if not np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
            raise InternalError(f"/{n}: the value read back from {target.name} is not the one written")
        count += 1
    return count


def _write_map(path: Path, placement: dict[str, str], sizes: dict[str, int], write_id: str) -> None:
    weight_map: dict[str, list[str]] = {}
    for n, f in placement.items():
        key = "/" + (n.rpartition("/")[0] or "vars")
        if f not in weight_map.setdefault(key, []):
            weight_map[key].append(f)
    doc = {"metadata": {"total_size": float(sum(sizes.values())), WRITE_ID: write_id}, "weight_map": weight_map}
    path.write_text(json.dumps(doc, indent=4), encoding="utf-8")


class _Steps:
    """Numbers a commit's file operations; `WTOOL_TEST_KILL_AT=N` (tests only) SIGKILLs before the Nth."""

    def __init__(self) -> None:
        raw = os.environ.get(KILL_HOOK, "")
        self.kill_at = int(raw) if raw.isdigit() else 0
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _OldSet:
    """The map at OUT before the write: its bytes (to restore), parsed form and in-folder shard names."""

    raw: bytes
    doc: dict[str, Any]
    names: list[str]


def _commit(staging: Path, out: Path, files: list[str], sharded_out: bool, write_id: str) -> None:
    """fsync, then put the new set in place so that OUT is the old set or the new one at every moment."""
    step = _Steps()
    final = [*files, out.name] if sharded_out else [next(p.name for p in staging.iterdir())]
    for name in final:
        with open(staging / name, "rb+") as fh:
            os.fsync(fh.fileno())
    folder = out.parent if str(out.parent) else Path(".")
    if not sharded_out:
        step()
        os.replace(staging / final[-1], out)
        _fsync_dir(folder)
        return
    old = _read_old_set(out)
    backups = _enter_transit(staging, out, old, files, write_id, step) if old is not None else {}
    moved: list[str] = []  # standard names no longer holding the old shard
    try:
        for name in backups:  # old shards the new set has no counterpart for: unnamed beside the new map
            if name not in files:
                step()
                (folder / name).unlink()
                moved.append(name)
        for name in reversed(files):  # the first shard last: Keras opens it before it reads the map
            step()
            os.replace(staging / name, folder / name)
            moved.append(name)
        _fsync_dir(folder)
        step()
        os.replace(staging / out.name, out)  # the one rename that decides old or new
    except BaseException:
        if old is not None:
            _roll_back(staging, out, old, backups, moved, files)
        raise
    _fsync_dir(folder)
    stale = _stale_backups(folder, base_name(out), set(files))
    if old is not None:  # a killed write's new shards, which its transit map (now the old map) listed
        stale += [n for n in _in_transit(old.doc, base_name(out)) if n not in files and n not in old.names]
    for name in [n for n in (old.names if old else []) if n not in files and n not in stale and n not in backups]:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            step()
            path.unlink()
    for name in stale:  # ours: this write's second names, or those of a killed one
        step()
        _unlink_all(folder, [name])


def _enter_transit(staging: Path, out: Path, old: _OldSet, files: list[str], write_id: str,
                   step: _Steps) -> dict[str, str]:
    """Steps 1-2: second names for the old shards under standard names; the map at OUT names them.

    Both those the new set replaces and those it has no counterpart for (removed before the new
    map lands, since an unnamed `X_NNNNN.weights.h5` beside a map is refused)."""
    folder = out.parent if str(out.parent) else Path(".")
    standard = _shard_pattern(base_name(out))
    backups: dict[str, str] = {}
    try:
        for name in old.names:
            if (name in files or standard.fullmatch(name)) and os.path.lexists(folder / name):
                backup = f"{name[: -len(SHARD_SUFFIX)]}{BACKUP_TAG}{write_id[:8]}{SHARD_SUFFIX}"
                step()
                _link(folder / name, folder / backup)
                backups[name] = backup
        doc = json.loads(json.dumps(old.doc))
        for key, value in doc["weight_map"].items():
            doc["weight_map"][key] = ([backups.get(n, n) for n in value] if isinstance(value, list)
                                      else backups.get(value, value))
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        doc["metadata"] = {**meta, IN_TRANSIT: sorted({*files, *backups})}
        transit = staging / f"{out.name}.transit"
        transit.write_text(json.dumps(doc, indent=4), encoding="utf-8")
        with open(transit, "rb+") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(folder)
        step()
        os.replace(transit, out)
    except BaseException:
        _unlink_all(folder, backups.values())  # OUT still holds the old map, which does not name them
        raise
    return backups


def _roll_back(staging: Path, out: Path, old: _OldSet, backups: dict[str, str], moved: list[str],
               files: list[str]) -> None:
    """A failed write before the map's rename: the old shards back under their names, then the old map."""
    folder = out.parent if str(out.parent) else Path(".")
    try:
        for name in moved:
            if name in backups:
                tmp = staging / f"{name}.back"
                _link(folder / backups[name], tmp)
                os.replace(tmp, folder / name)
        restore = staging / f"{out.name}.restore"
        restore.write_bytes(old.raw)
        os.replace(restore, out)
    except OSError:
        return  # the transit map stays at OUT: it reads as the old set
    _unlink_all(folder, [*backups.values(), *(n for n in moved if n in files and n not in old.names)])


def _link(src: Path, dst: Path) -> None:
    """A second name for a file (a symbolic link stays one); a copy where the file system has no links."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except (OSError, NotImplementedError):  # NotImplementedError: no follow_symlinks=False here
        shutil.copy2(src, dst, follow_symlinks=False)


def _unlink_all(folder: Path, names: Any) -> None:
    for name in names:
        try:
            (folder / name).unlink()
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stale_backups(folder: Path, base: str, keep: set[str]) -> list[str]:
    """Second names left by a write of this set that was killed after its map's rename (step 5 unfinished)."""
    pattern = re.compile(re.escape(base) + r"_\d{5,}" + re.escape(BACKUP_TAG) + "[0-9a-f]{8}"
                         + re.escape(SHARD_SUFFIX))
    try:
        return sorted(n for n in os.listdir(folder) if pattern.fullmatch(n) and n not in keep)
    except OSError:
        return []


def _shard_pattern(base: str) -> re.Pattern[str]:
    """Keras's own shard names for base `X`: `X_00000.weights.h5`, ..."""
    return re.compile(re.escape(base) + r"_\d{5,}" + re.escape(SHARD_SUFFIX))


def _in_transit(doc: dict[str, Any], base: str) -> list[str]:
    """The shard names a transit map lists as in transit (only `X_NNNNN.weights.h5` names of this set)."""
    meta = doc.get("metadata")
    names = meta.get(IN_TRANSIT) if isinstance(meta, dict) else None
    pattern = _shard_pattern(base)
    return [n for n in names if isinstance(n, str) and pattern.fullmatch(n)] if isinstance(names, list) else []


def _read_old_set(out: Path) -> _OldSet | None:
    """The map at OUT, if there is one that parses (no map, or an unreadable one: nothing to keep readable)."""
    try:
        raw = out.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError):
        return None
    names = _names_in(doc)
    return _OldSet(raw, doc, names) if names is not None else None


def _names_in(doc: Any) -> list[str] | None:
    try:
        return sorted({n for v in doc["weight_map"].values() for n in (v if isinstance(v, list) else [v])
                       if isinstance(n, str) and "/" not in n and "\\" not in n and n not in (".", "..")})
    except (KeyError, TypeError, AttributeError):
        return None


def _old_shards(out: Path) -> list[str]:
    """The shards an existing map at OUT names (removed after the new set is in place, unless reused)."""
    old = _read_old_set(out)
    return old.names if old else []
