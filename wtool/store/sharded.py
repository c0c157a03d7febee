"""Sharded Keras weights: `X.weights.json` (the map) + `X_00000.weights.h5`, ... (the shards).

Keras 3's `save_weights(path, max_shard_size=GB)` writes the map as
`{"metadata": {"total_size": BYTES}, "weight_map": {"/layers/dense/vars": ["X_00000.weights.h5"], ...}}`:
one entry per variable group (the HDF5 group name), listing the shard(s) that hold its
datasets, in save order. A group may be split over several shards (its first datasets in
one, the rest in the next), and a shard also holds the empty groups (with their `name`
attribute) of the layers saved while it was current.

wtool reads the set as one model: an in-memory skeleton file merges every shard's groups
and attributes and holds a zero-storage placeholder for each dataset the map assigns (so
the Keras 3 reader names weights exactly as for one `.weights.h5`); reads go to the shard
that holds the dataset. Only the shards a group's entry lists are read, as Keras's own
`load_weights` does. Every entry is checked before anything is read (exit 3, naming the
map and the shard).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from wtool.errors import InputError
from wtool.fileio import check_input_file
from wtool.safety import limits

MAP_SUFFIX = ".weights.json"
SHARD_SUFFIX = ".weights.h5"
MAX_SHARDS = 10_000
# A declared total_size may differ from the datasets' bytes by rounding; more than this is refused.
TOTAL_SIZE_SLACK = 0.01
TOTAL_SIZE_SLACK_BYTES = 4096
# Written by wtool into the map's metadata and each shard's root attributes (Keras ignores both):
# a shard whose id differs from the map's is left over from another write (an interrupted one).
WRITE_ID = "wtool_write_id"
# Written by wtool into a "transit" map (the old set, while a new one is renamed into place; see
# wtool.store.sharded_write): the new set's shard names, which lie beside it unnamed until the new
# map replaces it. Only these are let pass; any other unnamed shard is still refused.
IN_TRANSIT = "wtool_in_transit"


def is_map_name(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(MAP_SUFFIX)


def base_name(map_path: Path) -> str:
    """`X` of `X.weights.json`: Keras names the shards `X_00000.weights.h5`, ..."""
    return map_path.name[: -len(MAP_SUFFIX)]


def shard_name(base: str, index: int) -> str:
    return f"{base}_{index:05}{SHARD_SUFFIX}"


@dataclass
class WeightMap:
    """A parsed, checked weight map: group -> shard names, in the map's order."""

    path: Path
    groups: dict[str, list[str]]
    total_size: float | None
    shards: list[str] = field(default_factory=list)  # every shard named, first-mention order
    write_id: str | None = None


def read_map(path: Path) -> WeightMap:
    """Parse and check the map itself (names, folder, files present); InputError on any fault."""
    from wtool.safety.safejson import parse_config_json

    where = str(path)
    check_input_file(path)
    cap = limits.current().max_config_bytes
    if path.stat().st_size > cap:
        raise InputError(f"{where}: a weight map larger than {cap:,} bytes (limit)")
    doc = parse_config_json(path.read_bytes(), where, what="the weight map")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{where}: not a Keras weight map: it needs a non-empty \"weight_map\" object",
                         "a sharded Keras weights file is what save_weights(..., max_shard_size=) writes")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    total = meta.get("total_size")
    if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float))
                              or not math.isfinite(total) or total < 0):
        raise InputError(f"{where}: metadata.total_size must be a number of bytes, not {str(total)[:40]!r}")
    groups: dict[str, list[str]] = {}
    seen_norm: dict[str, str] = {}
    shards: list[str] = []
    for key, value in weight_map.items():
        group = _group_name(key, where)
        if group in seen_norm:
            raise InputError(f"{where}: the map names group {group!r} twice ({seen_norm[group]!r} and {key!r})")
        seen_norm[group] = key
        names = value if isinstance(value, list) else [value]
        if not names:
            raise InputError(f"{where}: map entry {key!r} names no shard")
        for name in names:
            _check_shard_name(name, key, where)
        if len(set(names)) != len(names):
            raise InputError(f"{where}: map entry {key!r} names the same shard twice")
        groups[group] = list(names)
        for name in names:
            if name not in shards:
                shards.append(name)
    if len(shards) > MAX_SHARDS:
        raise InputError(f"{where}: refused: {len(shards):,} shards (limit {MAX_SHARDS:,})")
    for name in shards:
        _check_shard_file(path, name)
    transit = meta.get(IN_TRANSIT)
    _check_unnamed_shards(path, shards, {n for n in transit if isinstance(n, str)} if isinstance(transit, list)
                          else set())
    write_id = meta.get(WRITE_ID)
    return WeightMap(path, groups, float(total) if total is not None else None, shards,
                     write_id if isinstance(write_id, str) else None)


def _group_name(key: Any, where: str) -> str:
    """`/layers/dense/vars` -> `layers/dense/vars` (the HDF5 group, relative); `/vars` for the root."""
    if not isinstance(key, str) or not key.startswith("/") or not (key == "/vars" or key.endswith("/vars")):
        raise InputError(f"{where}: bad map entry {str(key)[:80]!r}: a key is a variable group such as "
                         "\"/layers/dense/vars\"")
    parts = key.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise InputError(f"{where}: refused map entry {key[:80]!r}: empty, '.' or '..' parts")
    return "/".join(parts)


def _check_shard_name(name: Any, key: str, where: str) -> None:
    p = PurePosixPath(name) if isinstance(name, str) else None
    if p is None or not name or p.is_absolute() or len(p.parts) != 1 or name in (".", "..") \
            or "\\" in name or ":" in name or "\x00" in name:
        raise InputError(f"{where}: refused shard name {str(name)[:80]!r} (entry {key!r}): a shard must be "
                         f"a file name in the map's own folder, without '/', '..' or a drive")
    if not name.lower().endswith(SHARD_SUFFIX):
        raise InputError(f"{where}: refused shard name {name[:80]!r} (entry {key!r}): a shard is a "
                         f"{SHARD_SUFFIX} file")


def _check_shard_file(map_path: Path, name: str) -> None:
    shard = map_path.parent / name
    where = str(map_path)
    if shard.is_symlink():
        folder = os.path.realpath(map_path.parent)
        target = os.path.realpath(shard)
        if os.path.dirname(target) != folder:
            raise InputError(f"{where}: refused shard {name}: a symbolic link out of the map's folder "
                             f"(to {target[:120]})")
    if not os.path.lexists(shard):
        raise InputError(f"{where}: shard {name} is missing (named by the map, not in {map_path.parent or '.'})",
                         "copy every shard next to the map: a sharded model is the map plus all its files")
    check_input_file(shard)


_SHARD_RE = re.compile(r"_(\d{5,})" + re.escape(SHARD_SUFFIX) + "$")


def _check_unnamed_shards(map_path: Path, shards: list[str], in_transit: set[str]) -> None:
    """A `X_NNNNN.weights.h5` beside `X.weights.json` that no entry names: a stale or foreign shard.

    `in_transit`: the names a wtool transit map lists (an interrupted write's new shards), let pass.
    """
    base = base_name(map_path)
    named = set(shards) | in_transit
    try:
        entries = sorted(os.listdir(map_path.parent or "."))
    except OSError:
        return
    for entry in entries:
        m = _SHARD_RE.search(entry)
        if m and entry[: m.start()] == base and entry not in named:
            raise InputError(f"{map_path}: shard {entry} lies beside the map but no map entry names it",
                             "a leftover of another save? remove it, or restore the map that lists it")


def shard_of(path: Path) -> tuple[Path, int, int] | None:
    """(map, shard index, shard count) when `path` is one shard of a map beside it, else None."""
    m = _SHARD_RE.search(path.name)
    if not m:
        return None
    map_path = path.with_name(path.name[: m.start()] + MAP_SUFFIX)
    if not map_path.is_file():
        return None
    try:
        wmap = read_map(map_path)
    except InputError:
        return None
    if path.name not in wmap.shards:
        return None
    return map_path, wmap.shards.index(path.name), len(wmap.shards)


def check_total_size(wmap: WeightMap, real: int) -> None:
    if wmap.total_size is None:
        return
    if abs(wmap.total_size - real) > max(TOTAL_SIZE_SLACK * real, TOTAL_SIZE_SLACK_BYTES):
        raise InputError(f"{wmap.path}: metadata.total_size declares {wmap.total_size:,.0f} bytes, the shards "
                         f"hold {real:,} bytes of weights", "the map does not describe these shards: save again")


# --------------------------------------------------------------------------- the merged view


@dataclass
class Skeleton:
    """The merged in-memory file, the opened shards and which shard holds each dataset."""

    h5: Any
    shards: dict[str, Any]
    route: dict[str, str]
    ignored: int = 0

    @property
    def data_bytes(self) -> int:
        """The bytes of every dataset the map assigns (optimizer state included, as Keras counts them)."""
        return sum(math.prod(self.h5[n].shape) * self.h5[n].dtype.itemsize for n in self.route)


def build_skeleton(wmap: WeightMap) -> Skeleton:
    import h5py

    from wtool.safety.h5walk import check_every_object
    from wtool.store.container import open_hdf5

    shards: dict[str, Any] = {}
    skel = None
    try:
        for name in wmap.shards:
            shards[name] = open_hdf5(wmap.path.parent / name, where=f"{wmap.path} (shard {name})")
            check_every_object(shards[name], f"{wmap.path} (shard {name})")
            _check_write_id(wmap, name, shards[name])
        skel = h5py.File(f"wtool-sharded-{id(wmap)}", "w", driver="core", backing_store=False)
        for name in wmap.shards:
            _merge_groups(skel, shards[name])
        route = _place_datasets(skel, wmap, shards)
        ignored = sum(_count_unrouted(h5, route, name) for name, h5 in shards.items())
        return Skeleton(skel, shards, route, ignored)
    except BaseException:
        if skel is not None:
            skel.close()
        for h5 in shards.values():
            h5.close()
        raise


def _check_write_id(wmap: WeightMap, name: str, shard: Any) -> None:
    """Map and shard carry the same id, or neither has one (Keras's own sets)."""
    value = shard.attrs.get(WRITE_ID)
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if value != wmap.write_id:
        raise InputError(f"{wmap.path}: shard {name} is from another write than the map "
                         "(an interrupted save or a shard copied in from another set)",
                         "write the set again, or restore the shards that belong to this map")


def _merge_groups(skel: Any, shard: Any) -> None:
    """Every group of the shard (in save order: by header address) with its attributes; first shard wins."""
    import h5py

    names: list[str] = []
    shard.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) else None)
    names.sort(key=lambda n: h5py.h5o.get_info(shard[n].id).addr)
    _copy_attrs(shard, skel)
    for n in names:
        if n in skel and not isinstance(skel[n], h5py.Group):
            continue
        _copy_attrs(shard[n], skel.require_group(n))


def _copy_attrs(src: Any, dst: Any) -> None:
    for key in src.attrs:
        if key not in dst.attrs:
            dst.attrs[key] = src.attrs[key]


def _place_datasets(skel: Any, wmap: WeightMap, shards: dict[str, Any]) -> dict[str, str]:
    """A zero-storage placeholder per dataset of each entry's shards; refuse absent groups and clashes."""
    import h5py

    route: dict[str, str] = {}
    where = str(wmap.path)
    for group, names in wmap.groups.items():
        key = "/" + group
        for name in names:
            grp = shards[name].get(group)
            if not isinstance(grp, h5py.Group):
                raise InputError(f"{where}: map entry {key} names shard {name}, which has no group {key}",
                                 "the map and its shards come from different saves")
            found = 0
            for var in grp:
                obj = grp.get(var)
                if not isinstance(obj, h5py.Dataset):
                    continue
                found += 1
                full = f"{group}/{var}"
                if full in route:
                    raise InputError(f"{where}: variable {'/' + full} is in two shards, {route[full]} and {name} "
                                     f"(map entry {key} names both)", "the shards come from different saves")
                ds = skel.create_dataset(full, shape=obj.shape, dtype=obj.dtype)
                _copy_attrs(obj, ds)
                route[full] = name
            if not found:
                raise InputError(f"{where}: map entry {key} names shard {name}, which holds none of its variables",
                                 "the map and its shards come from different saves")
    return route


def _count_unrouted(shard: Any, route: dict[str, str], name: str) -> int:
    import h5py

    count = 0

    def visit(n: str, obj: Any) -> None:
        nonlocal count
        if isinstance(obj, h5py.Dataset) and route.get(n) != name:
            count += 1

    shard.visititems(visit)
    return count
