"""Atomic output writes and safe opening of inputs.

Every file wtool writes goes through `atomic_output`: a temporary file beside the
target, fsync, rename. A failure or an interrupt leaves the old file (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wtool.errors import InputError, UsageError

REMOTE_PREFIXES = ("http://", "https://", "ftp://", "gs://", "s3://", "hdfs://", "ram://", "file://")


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync and rename it into place.

    The temporary name keeps the target's suffix (Keras picks a format from it).
    On any exception the temporary file is removed and the target is untouched.
    """
    target = Path(target)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{target}: output directory {directory} does not exist")
    if suffix is None:
        suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".weights.h5") else target.suffix
    if target.is_dir():
        raise UsageError(f"{target}: is a directory; give a file name for the output")
    import tempfile  # here, not at the top: reading commands never write and skip its import

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=directory)
    except OSError as exc:
        raise UsageError(f"{target}: cannot write here ({exc.strerror or exc})",
                         "choose an output path in a directory you can write to") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if target.exists():
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        else:
            with contextlib.suppress(OSError):
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _refuse_remote(text: str) -> None:
    lowered = text.strip().lower()
    if lowered.startswith(REMOTE_PREFIXES) or "://" in lowered:
        raise InputError(f"{text}: remote paths are not supported", "download the file first")


ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "orbax.checkpoint", "_METADATA")


def checkpoint_kind(path: str | os.PathLike[str]) -> str | None:
    """'orbax' or 'tf' when the path is a checkpoint rather than a model file, from names alone."""
    p = Path(os.fspath(path))
    if p.is_dir() and not p.is_symlink():
        try:
            names = set(os.listdir(p))
        except OSError:
            return None
        steps = [n for n in names if n.isdigit() and (p / n).is_dir()]
        if names & set(ORBAX_MARKERS) or any(
                set(os.listdir(p / s)) & set(ORBAX_MARKERS) for s in steps[:3] if os.access(p / s, os.R_OK)):
            return "orbax"
        if "checkpoint" in names and any(n.endswith(".index") for n in names):
            return "tf"
        return None
    name = p.name
    if name.endswith(".index") or ".data-" in name:
        return "tf" if any(q.name.startswith(name.split(".index")[0].split(".data-")[0] + ".data-")
                           for q in p.parent.glob("*")) else None
    if not p.exists() and Path(f"{p}.index").is_file():
        return "tf"
    return None


def refuse_checkpoint(path: str | os.PathLike[str]) -> None:
    """One clear line for a checkpoint given where a model file was expected (exit 3)."""
    kind = checkpoint_kind(path)
    text = os.fspath(path)
    if kind == "orbax":
        raise InputError(f"{text}: an Orbax checkpoint folder (orbax.checkpoint / _CHECKPOINT_METADATA) where a "
                         "model file is needed",
                         f"`wtool inspect {text}` and `wtool diff` read it (with the orbax-checkpoint package: "
                         "pip install 'wtool[orbax]'); to use it here, restore it with Keras "
                         "(`model.load_weights(DIR)`) and save a .keras file")
    if kind == "tf":
        raise InputError(f"{text}: a TensorFlow checkpoint (.index + .data-* files) where a model file is needed",
                         f"`wtool inspect {text}` and `wtool diff` read it; `wtool set-weights MODEL "
                         f"--from-checkpoint {text} -o OUT` turns it into a model file")


def check_model_input(path: str | os.PathLike[str]) -> Path:
    """As check_input_file, but a model folder (an unzipped .keras: a real directory with a config.json)
    passes too; the store checks its contents (wtool.store.container.open_folder)."""
    p = Path(os.fspath(path))
    if p.is_dir() and not p.is_symlink() and (p / "config.json").exists():
        return p
    refuse_checkpoint(path)
    return check_input_file(path)


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """Open an input for reading, refusing anything but a regular file, without ever blocking.

    The path is stat-ed first (a FIFO, device, socket or directory, or a symlink to one,
    is refused before it is opened), then opened with O_NONBLOCK|O_NOCTTY and checked
    again on the open descriptor (same inode, still a regular file), so a file swapped
    for a FIFO between the two steps cannot hang the tool. Returns a binary file object.
    """
    text = os.fspath(path)
    _refuse_remote(text)
    st = _stat_regular(text)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(text, flags)
    except OSError as exc:
        raise InputError(f"{text}: cannot read ({exc.strerror})") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise InputError(f"{text}: not a regular file (it changed while being opened)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _stat_regular(text: str) -> os.stat_result:
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise InputError(f"{text}: no such file") from None
    except OSError as exc:
        raise InputError(f"{text}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{text}: is a directory, not a model file",
                         "wtool reads model files (.keras, .h5, .weights.h5) and model folders with a config.json")
    if stat.S_ISFIFO(st.st_mode):
        raise InputError(f"{text}: is a named pipe (FIFO), not a regular file")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        raise InputError(f"{text}: is a device, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{text}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{text}: empty file")
    return st


def check_input_file(path: str | os.PathLike[str]) -> Path:
    """Refuse anything but an existing, readable, non-empty regular file, without blocking on FIFOs or devices.

    Remote paths (URLs, gs://, s3://, ...) are refused: Keras would hand them to tf.io.gfile.
    The file is opened once (non-blocking) to prove it is readable and still regular.
    """
    with open_input(path):
        pass
    return Path(os.fspath(path))

