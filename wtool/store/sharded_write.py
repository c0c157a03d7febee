"""Writing a Keras 3 weights set as sharded `X.weights.json` + shards (or one `.weights.h5`), atomically.

The datasets go out in save order (the source's group order, variables by index), split the
way Keras's `ShardedH5IOStore` splits them: a shard takes values until the next one would
pass `max_shard_bytes`; a single value larger than that is refused, as Keras refuses it.
Without `max_shard_bytes`, a sharded source keeps its own split (shard i stays shard i).

Atomic as a whole: every shard and the map are written to a staging folder beside OUT
and read back; only then are the shards renamed into place, the map last. The map and
each shard carry the same write id (`metadata.wtool_write_id`, a root attribute of each
shard, both ignored by Keras), so a set whose renames a kill interrupted is refused on
reading ("from another write") instead of being read as a mix of old and new values.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, InternalError, UsageError
from wtool.store.sharded import MAP_SUFFIX, WRITE_ID, base_name, shard_name

KERAS_DEFAULT_SHARD_BYTES = 5 * 1024**3  # ShardedH5IOStore's max_shard_size=5 (GB)
OPTIMIZER_GROUP = "optimizer"


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
        _commit(staging, out, files, sharded_out)
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


def _commit(staging: Path, out: Path, files: list[str], sharded_out: bool) -> None:
    """fsync, then rename the shards into place and the map (or the single file) last."""
    old = _old_shards(out) if sharded_out else []
    final = [*files, out.name] if sharded_out else [next(p.name for p in staging.iterdir())]
    for name in final:
        with open(staging / name, "rb+") as fh:
            os.fsync(fh.fileno())
    for name in files if sharded_out else []:
        os.replace(staging / name, out.parent / name)
    os.replace(staging / final[-1], out)
    for name in old:
        if name not in files:
            with_path = out.parent / name
            if with_path.is_file() and not with_path.is_symlink():
                with_path.unlink()


def _old_shards(out: Path) -> list[str]:
    """The shards an existing map at OUT names (removed after the new set is in place, unless reused)."""
    try:
        doc = json.loads(out.read_text(encoding="utf-8"))
        return sorted({n for v in doc["weight_map"].values() for n in (v if isinstance(v, list) else [v])
                       if isinstance(n, str) and "/" not in n and "\\" not in n and n not in (".", "..")})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
