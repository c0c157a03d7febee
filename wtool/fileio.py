"""Atomic output writes and safe opening of inputs.

Every file wtool writes goes through `atomic_output`: a temporary file beside the
target, fsync, rename. A failure or an interrupt leaves the old file (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=directory)
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


def check_input_file(path: str | os.PathLike[str]) -> Path:
    """Refuse anything but an existing regular file, without blocking on FIFOs or devices."""
    text = os.fspath(path)
    if text.lower().startswith(REMOTE_PREFIXES) or "://" in text:
        raise InputError(f"{text}: remote paths are not supported", "download the file first")
    p = Path(text)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{text}: no such file") from None
    except OSError as exc:
        raise InputError(f"{text}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{text}: is a directory, not a model file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{text}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{text}: empty file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{text}: permission denied")
    return p
