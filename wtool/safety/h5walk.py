"""Walk every object of an HDF5 file once, so no link or foreign storage hides in a part nobody reads.

The store checks each dataset it reads (wtool.safety.guards), but some readers touch more
(training resumes the optimizer state, set-weights and transfer copy everything they do not
change). `check_every_object(h5, where)` applies the store's own link and dataset checks to
every link and dataset in the file, following hard links only and each object once.
"""

from __future__ import annotations

from typing import Any

from wtool.errors import InputError

# A file with more objects than this is not a model file someone saved (exit 3).
MAX_OBJECTS = 1_000_000


def check_every_object(h5: Any, where: str) -> int:
    """Refuse soft/external links, external/virtual/plugin-filtered datasets anywhere; return the object count."""
    import h5py

    from wtool.safety import guards as safety

    seen: set[Any] = set()
    stack = [h5["/"]]
    count = 0
    while stack:
        group = stack.pop()
        for name in group:
            count += 1
            if count > MAX_OBJECTS:
                raise InputError(f"{where}: the HDF5 file has more than {MAX_OBJECTS:,} objects (limit)")
            safety.check_h5_link(group, name, where)
            obj = group.get(name)
            if obj is None:
                continue
            try:
                key: Any = h5py.h5o.get_info(obj.id).addr
            except (AttributeError, TypeError, ValueError, RuntimeError):
                key = hash(obj.id)  # h5py hashes an object id by file and address
            if key in seen:
                continue
            seen.add(key)
            if isinstance(obj, h5py.Dataset):
                safety.check_h5_dataset(obj, where)
            elif isinstance(obj, h5py.Group):
                stack.append(obj)
    return count
