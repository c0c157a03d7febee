"""Telling a numpy .npz archive from a Keras model archive, from the first bytes alone.

Both are zips; a model argument that turns out to be an .npz gets its own message.
"""

from __future__ import annotations

import os
import struct
from typing import Any


def is_numpy_archive(path: str | os.PathLike[str]) -> bool:
    """A zip whose first member is a `.npy` array (numpy's savez layout), judged from its first bytes.

    An empty zip named `*.npz` counts too: `np.savez(f)` with no arrays (or `inspect --export`
    of a model without weights) writes just the zip's end record, and np.load reads it as
    an archive of zero arrays.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(30)
            if head[:4] == EMPTY_ZIP_MAGIC:
                return os.fspath(path).lower().endswith(".npz") and _is_empty_zip(head, fh)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                return False
            name_len = struct.unpack("<H", head[26:28])[0]
            name = fh.read(name_len)
    except OSError:
        return False
    return name.endswith(b".npy")


EMPTY_ZIP_MAGIC = b"PK\x05\x06"  # the end-of-central-directory record, first: no members before it


def _is_empty_zip(head: bytes, fh: Any) -> bool:
    """An end record at offset 0 that declares no entries and ends the file (after its comment)."""
    if len(head) < 22:
        return False
    disk, cd_disk, entries_here, entries, cd_size, cd_offset, comment_len = struct.unpack("<HHHHIIH", head[4:22])
    size = os.fstat(fh.fileno()).st_size
    return entries_here == entries == 0 and cd_size == 0 and 22 + comment_len == size


def numpy_archive_message(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The (error, hint) for an .npz given where a model file is expected."""
    error = (f"{os.fspath(path)}: a numpy .npz archive (data, or weights exported by `inspect --export`), "
             "not a Keras model")
    hint = ("`wtool diff MODEL FILE.npz` compares a model with exported weights; "
            "`wtool set-weights MODEL --npz FILE.npz -o OUT` assigns them")
    return error, hint
