"""Safety checks on untrusted files, as small named helpers (as Keras's own saving code does).

Limits are module constants so tests can shrink them. Links, external and virtual
storage are refused as unsafe (exit 5); sizes over a limit are refused as
unreadable input (exit 3).
"""

from __future__ import annotations

import math
import zipfile
from typing import Any

from wtool.errors import InputError, UnsafeError
from wtool.safety import limits

# A dataset may declare far more bytes than it stores (compression), but not more
# than H5_DATASET_MAX_EXPANSION times, once it is over H5_DATASET_BOMB_FLOOR_BYTES.
H5_DATASET_BOMB_FLOOR_BYTES = 1 << 30  # 1 GiB
H5_DATASET_MAX_EXPANSION = 1000
# A zip member may not expand beyond ZIP_MEMBER_MAX_EXPANSION x its stored size once
# over ZIP_MEMBER_BOMB_FLOOR_BYTES. Absolute sizes (a member, all weights of a file,
# config.json, metadata.json, the member count) follow wtool.safety.limits (--max-bytes).
ZIP_MEMBER_BOMB_FLOOR_BYTES = 1 << 28  # 256 MiB
ZIP_MEMBER_MAX_EXPANSION = 100
# HDF5 filters built into the library (deflate, shuffle, fletcher32, szip, nbit, scale-offset) and h5py (lzf).
BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
# Attributes (model_config, layer_names) are read into memory.
H5_ATTR_MAX_BYTES = 256 << 20


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def check_h5_link(group: Any, name: str, where: str) -> None:
    """Refuse a soft or external link at `group[name]` (they can point outside the file)."""
    import h5py

    link = group.get(name, default=None, getlink=True)
    if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
        kind = "external link" if isinstance(link, h5py.ExternalLink) else "soft link"
        raise UnsafeError(f"{where}: refused: HDF5 {kind} at {group.name.rstrip('/')}/{name}",
                          "wtool reads only data stored inside the file itself")


def check_h5_dataset(dataset: Any, where: str) -> None:
    """Refuse external or virtual storage and declared sizes far beyond the stored bytes."""
    if dataset.external:
        raise UnsafeError(f"{where}: refused: dataset {dataset.name} keeps its data in external files",
                          "wtool reads only data stored inside the file itself")
    if dataset.is_virtual:
        raise UnsafeError(f"{where}: refused: dataset {dataset.name} is a virtual dataset",
                          "wtool reads only data stored inside the file itself")
    check_h5_filters(dataset, where)
    check_h5_dataset_size(dataset, where)


def check_h5_filters(dataset: Any, where: str) -> None:
    """Refuse compression filters that HDF5 would have to load from a plugin (only built-ins are read)."""
    plist = dataset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in BUILTIN_FILTERS:
            raise UnsafeError(f"{where}: refused: dataset {dataset.name} uses HDF5 filter {code}, which needs a plugin",
                              "wtool reads only gzip, lzf, szip, shuffle, fletcher32, nbit and scale-offset data")


def check_h5_dataset_size(dataset: Any, where: str) -> None:
    shape = dataset.shape or ()
    declared = math.prod(shape) * dataset.dtype.itemsize
    if declared <= H5_DATASET_BOMB_FLOOR_BYTES:
        return
    stored = dataset.id.get_storage_size()
    if declared > H5_DATASET_MAX_EXPANSION * stored:
        raise InputError(f"{where}: refused: dataset {dataset.name} declares {_human(declared)} "
                         f"but stores only {_human(stored)} (a shape or decompression bomb)")


def check_h5_attr_size(value: Any, where: str, name: str) -> None:
    nbytes = getattr(value, "nbytes", None)
    if nbytes is None:
        nbytes = len(value) if isinstance(value, (bytes, str)) else 0
    if nbytes > H5_ATTR_MAX_BYTES:
        raise InputError(f"{where}: refused: attribute {name} is {_human(nbytes)} "
                         f"(over the {_human(H5_ATTR_MAX_BYTES)} limit)")


def check_zip_member(info: zipfile.ZipInfo, where: str, limit: int | None = None) -> None:
    """Refuse a zip member that decompresses far beyond its stored size or beyond `limit`."""
    limit = limits.current().max_bytes if limit is None else limit
    if info.file_size > ZIP_MEMBER_BOMB_FLOOR_BYTES and info.file_size > ZIP_MEMBER_MAX_EXPANSION * max(
            info.compress_size, 1):
        raise InputError(f"{where}: refused: archive member {info.filename} expands from "
                         f"{_human(info.compress_size)} to {_human(info.file_size)} (a decompression bomb)")
    if info.file_size > limit:
        raise InputError(f"{where}: refused: archive member {info.filename} is {_human(info.file_size)} "
                         f"(over the {_human(limit)} limit)", "raise the limit with --max-bytes if you trust it")


def check_zip_members(count: int, where: str) -> None:
    cap = limits.current().max_archive_members
    if count > cap:
        raise InputError(f"{where}: refused: the archive has {count} members (over the limit of {cap})")


def check_total_bytes(total: int, where: str) -> None:
    """All weights of one file together may not declare more than --max-bytes."""
    cap = limits.current().max_bytes
    if total > cap:
        raise InputError(f"{where}: refused: the weights declare {_human(total)} (over the {_human(cap)} limit)",
                         "raise the limit with --max-bytes if you trust the file")
