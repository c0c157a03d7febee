"""Writing a keras-hub preset directory: the whole folder staged beside OUT, then renamed into place.

The backbone keeps its form (one `model.weights.h5`, or the sharded map with the input's own split,
through `wtool.store.sharded_write`); `task/...` weights go into `task.weights.h5`; every other file
(config.json, metadata.json, task.json, tokenizer and preprocessor files, assets/) is copied byte for
byte. A folder cannot replace another atomically, so OUT must not exist yet (and --in-place is refused).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wtool.errors import InputError, UsageError
from wtool.store.preset import MODEL_WEIGHTS_FILE, SHARDED_MAP_FILE, TASK_H5_PREFIX, TASK_WEIGHTS_FILE
from wtool.store.sharded import MAP_SUFFIX, base_name


def is_preset_output(model: str | os.PathLike[str]) -> bool:
    """MODEL is a keras-hub preset folder (metadata.json names keras-hub, or it has task weights or a
    sharded backbone), so it is written as one."""
    from wtool.store.preset import METADATA_FILE, needs_preset_reader

    folder = Path(os.fspath(model))
    if not folder.is_dir() or folder.is_symlink():
        return False
    if needs_preset_reader(folder):
        return True
    if not (folder / METADATA_FILE).is_file() or (folder / METADATA_FILE).is_symlink():
        return False
    from wtool.store.container import _read_folder_json

    meta = _read_folder_json(folder, METADATA_FILE)
    return isinstance(meta, dict) and meta.get("keras_hub_version") is not None


def check_preset_output(model: str, out: str | None, in_place: bool) -> None:
    """Usage errors before anything is read: a folder OUT that does not exist yet."""
    if in_place:
        raise UsageError(f"{model}: --in-place cannot replace a keras-hub preset folder atomically",
                         "write a new preset folder with -o OUT_DIR")
    if out is None:
        return
    if os.path.lexists(out):
        raise UsageError(f"{out}: exists; a keras-hub preset is written as a new folder (never over one)",
                         "give -o a path that does not exist yet")
    if out.lower().endswith((".keras", ".h5", ".hdf5", ".json")):
        raise UsageError(f"{out}: a keras-hub preset is written as a preset folder, not a file",
                         "name the output folder without a file suffix, e.g. -o my_preset_edited")


def write_preset(source: Path, out: Path, writes: Sequence[Any], *, max_shard_bytes: int | None,
                 write_file: Callable[..., Any], result: Any) -> Any:
    """Stage the new folder beside OUT, write its weights files with `write_file` (wtool.store.write's
    write_weights, passed in: that module calls this one), then rename it to OUT (nothing on failure)."""
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{out}: output directory {directory} does not exist")
    task_writes = [w for w in writes if w.h5_name.startswith(TASK_H5_PREFIX)]
    backbone_writes = [w for w in writes if not w.h5_name.startswith(TASK_H5_PREFIX)]
    sharded = not (source / MODEL_WEIGHTS_FILE).exists()
    if max_shard_bytes is not None and not sharded:
        raise UsageError(f"{source}: --max-shard-size re-shards a sharded backbone; this preset's is one file")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=directory))
    try:
        weights_files = _copy_other_files(source, staging, sharded)
        backbone = SHARDED_MAP_FILE if sharded else MODEL_WEIGHTS_FILE
        _write_file(write_file, source / backbone, staging / backbone, backbone_writes, result, max_shard_bytes)
        if (source / TASK_WEIGHTS_FILE).exists():
            _write_file(write_file, source / TASK_WEIGHTS_FILE, staging / TASK_WEIGHTS_FILE,
                        [_strip(w) for w in task_writes], result, None)
        elif task_writes:
            raise InputError(f"{source}: has no {TASK_WEIGHTS_FILE} to write {task_writes[0].h5_name} into")
        _fsync_tree(staging)
        os.chmod(staging, source.stat().st_mode & 0o777)  # mkdtemp's 0700 is no preset's mode
        if os.path.lexists(out):  # appeared while writing: never replaced
            raise UsageError(f"{out}: exists; a keras-hub preset is written as a new folder (never over one)")
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.notes.append(f"wrote the preset folder {out} ({'sharded' if sharded else 'single-file'} backbone"
                        f"{', ' + TASK_WEIGHTS_FILE if (out / TASK_WEIGHTS_FILE).exists() else ''}; "
                        f"{len(weights_files)} other file(s) copied as they are)")
    return result


def _strip(w: Any) -> Any:
    from dataclasses import replace

    return replace(w, h5_name=w.h5_name[len(TASK_H5_PREFIX):])


def _weights_names(source: Path, sharded: bool) -> set[str]:
    """The backbone's and task's weights files (written, not copied)."""
    names = {MODEL_WEIGHTS_FILE, TASK_WEIGHTS_FILE}
    if sharded:
        from wtool.store.sharded_write import _old_shards

        names |= {SHARDED_MAP_FILE, *_old_shards(source / SHARDED_MAP_FILE)}
        stem = base_name(source / SHARDED_MAP_FILE)
        names |= {p.name for p in source.glob(f"{stem}_*.weights.h5")}
    return names


def _copy_other_files(source: Path, staging: Path, sharded: bool) -> list[str]:
    """Everything but the weights files, byte for byte; a symbolic link anywhere is refused (as on reading)."""
    skip = _weights_names(source, sharded)
    copied = []
    for root, dirs, files in os.walk(source, followlinks=False):
        rel_root = Path(root).relative_to(source)
        for name in [*dirs, *files]:
            if (Path(root) / name).is_symlink():
                raise InputError(f"{source}: refused: {rel_root / name} is a symbolic link (a model folder "
                                 "holds plain files)", "copy the files themselves into the folder")
        for name in dirs:
            (staging / rel_root / name).mkdir()
        for name in files:
            rel = rel_root / name
            if str(rel) in skip:
                continue
            shutil.copyfile(Path(root) / name, staging / rel)
            copied.append(str(rel))
    return copied


def _write_file(write_weights: Callable[..., Any], src: Path, dst: Path, writes: Sequence[Any], result: Any,
                max_shard_bytes: int | None) -> None:
    """One weights file (or the sharded map and its shards): copied as is without writes, else rewritten."""
    sharded = src.name.endswith(MAP_SUFFIX)
    if not writes and max_shard_bytes is None:  # unchanged: the same bytes (a map with its shards)
        from wtool.store.sharded_write import _old_shards

        for name in [*(_old_shards(src) if sharded else []), src.name]:
            shutil.copyfile(src.parent / name, dst.parent / name)
        return
    done = write_weights(src, "weights.json" if sharded else "weights.h5", dst, writes,
                         max_shard_bytes=max_shard_bytes)
    result.written += done.written
    result.bytes_written += done.bytes_written
    result.verified += done.verified
    result.notes.extend(done.notes)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb+") as fh:
                os.fsync(fh.fileno())
