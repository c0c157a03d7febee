"""Class names saved with a model, so `infer` prints `dog` where train was given `dog`.

`train` writes them when it learnt them (string labels in a CSV, a folder per class): in a
`.keras` archive as the key `wtool_class_names` of `metadata.json` (Keras keeps and ignores
extra keys there), in `.h5` / `.weights.h5` as the root attribute `wtool_class_names` (a JSON
list). Read with the rest of the file by `ModelFile.class_names`; no TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEY = "wtool_class_names"
MAX_NAMES = 100_000
MAX_NAME_CHARS = 1_000


def parse(value: Any) -> list[str] | None:
    """A saved value -> names, or None when absent or not a plain list of short strings."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list) or not value or len(value) > MAX_NAMES:
        return None
    if not all(isinstance(v, str) and len(v) <= MAX_NAME_CHARS for v in value):
        return None
    return list(value)


def write(path: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Add the names to a model file Keras has just written (a staged file, before it is renamed)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        _write_zip(path, list(names))
        return
    import h5py

    with h5py.File(path, "a") as h5:
        h5.attrs[KEY] = json.dumps(list(names))


def _write_zip(path: Path, names: list[str]) -> None:
    staged = path.with_name(path.name + ".names")
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(staged, "w") as dst:
            for info in src.infolist():
                if info.filename == "metadata.json":
                    meta = json.loads(src.read(info))
                    meta[KEY] = names
                    dst.writestr(info, json.dumps(meta))
                    continue
                with src.open(info) as reader, dst.open(info, "w") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
