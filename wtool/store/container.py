"""Find the HDF5 weights in a file, whatever its name says: detect by magic bytes, open in place.

A `.keras` archive stores `model.weights.h5` uncompressed: it is opened where it
lies inside the zip (through a file-like window on the archive), never copied into
memory. A compressed member is extracted to a bounded temporary file instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtool.errors import InputError
from wtool.safety import guards as safety
from wtool.safety import limits
from wtool.store.npz_sniff import is_numpy_archive, numpy_archive_message

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
LFS_MAGIC = b"version https://git-lfs"
WEIGHTS_MEMBER = "model.weights.h5"
# HDF5 allows a user block before the superblock: the signature is searched at 0, 512, 1024, ...
HDF5_SIGNATURE_OFFSETS = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class MemberWindow(io.RawIOBase):
    """A read-only file-like view of bytes [offset, offset+size) of a file (a stored zip member)."""

    def __init__(self, path: str | os.PathLike[str], offset: int, size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._offset = offset
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._size + pos
        else:  # pragma: no cover
            raise ValueError(f"bad whence {whence}")
        if new < 0:
            raise OSError("negative seek position")
        self._pos = new
        return new

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._offset + self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        super().close()


@dataclass
class Source:
    """An opened weights file: the h5py.File plus what it came from and what to clean up."""

    kind: str  # "zip" or "hdf5"
    h5: Any  # h5py.File
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    zip_members: list[str] = field(default_factory=list)
    in_place: bool = True
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.h5.close()
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()


def sniff(path: Path) -> str:
    """Return "zip" or "hdf5" from the file's bytes, or raise InputError naming what it is instead."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
        if head.startswith(HDF5_MAGIC):
            return "hdf5"
        if head.startswith(ZIP_MAGICS):
            return "zip"
        if head.startswith(LFS_MAGIC):
            raise InputError(f"{path}: is a Git LFS pointer, not the model file itself",
                             "run `git lfs pull` in the repository it came from")
        size = os.fstat(fh.fileno()).st_size
        for offset in HDF5_SIGNATURE_OFFSETS[1:]:
            if offset + 8 > size:
                break
            fh.seek(offset)
            if fh.read(8) == HDF5_MAGIC:
                return "hdf5"
    if zipfile.is_zipfile(path):
        return "zip"
    if _looks_like_text(head):
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:40] if head.strip() else ""
        raise InputError(f"{path}: is a text file, not a Keras model (starts with {first!r})",
                         "wtool reads .keras, .h5/.hdf5 and .weights.h5 files")
    raise InputError(f"{path}: not a Keras model file (neither an HDF5 file nor a .keras zip archive)",
                     "wtool reads .keras, .h5/.hdf5 and .weights.h5 files")


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def open_hdf5(path: Path, fileobj: Any = None, where: str | None = None) -> Any:
    import h5py

    where = where or str(path)
    try:
        return h5py.File(fileobj if fileobj is not None else path, "r")
    except OSError as exc:
        text = str(exc)
        sizes = re.search(r"\beof = (\d+).*stored_eof = (\d+)", text)
        if sizes:  # HDF5 knows how long the file was: say that, not its superblock fields
            have, want = int(sizes.group(1)), int(sizes.group(2))
            detail = f"truncated: {have:,} of {want:,} bytes"
        else:
            detail = f"{'truncated' if 'truncated' in text else 'corrupt or not HDF5'} ({_short(text)})"
        raise InputError(f"{where}: cannot read the HDF5 data: file is {detail}",
                         "the file may be incomplete: download or save it again") from None


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line[:160]


def open_source(path: Path) -> Source:
    kind = sniff(path)
    if kind == "hdf5":
        return Source(kind="hdf5", h5=open_hdf5(path))
    return _open_zip(path)


def _open_zip(path: Path) -> Source:
    # The whole archive is checked first (structure, names, caps, every CRC, streamed): wtool.safety.archive.
    from wtool.safety.archive import check_archive

    if is_numpy_archive(path):
        raise InputError(*numpy_archive_message(path))
    try:
        report = check_archive(path)
    except (OSError, ValueError, EOFError) as exc:  # a corrupt directory can send the checker astray
        raise InputError(f"{path}: corrupt zip archive ({_short(str(exc)) or type(exc).__name__})",
                         "the file may be damaged: download or save it again") from None
    if report.weights_member != WEIGHTS_MEMBER:
        raise InputError(f"{path}: weights stored as {report.weights_member} are not supported",
                         "save the model with Keras's default .keras format (model.weights.h5)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{path}: corrupt zip archive ({_short(str(exc))})",
                         "the file may be truncated: download or save it again") from None
    try:
        names = zf.namelist()
        safety.check_zip_members(len(names), str(path))
        if WEIGHTS_MEMBER not in names:
            extra = " (it has model.weights.npz: sharded/npz weights are not supported)" \
                if "model.weights.npz" in names else ""
            raise InputError(f"{path}: zip archive without {WEIGHTS_MEMBER}{extra}; "
                             f"members: {', '.join(names[:6]) or 'none'}",
                             "a .keras file is a zip with config.json, metadata.json and model.weights.h5")
        config = _parse_json(report.config_bytes, "config.json", path)
        metadata = _parse_json(report.metadata_bytes, "metadata.json", path) if report.metadata_bytes else {}
        info = zf.getinfo(WEIGHTS_MEMBER)
        safety.check_zip_member(info, str(path))
        if info.flag_bits & 0x1:
            raise InputError(f"{path}: {WEIGHTS_MEMBER} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            offset = _member_data_offset(path, info)
            window = MemberWindow(path, offset, info.file_size)
            h5 = open_hdf5(path, fileobj=window, where=f"{path} ({WEIGHTS_MEMBER})")
            return Source(kind="zip", h5=h5, config=config, metadata=metadata, zip_members=names,
                          in_place=True, _closers=[window.close])
        import tempfile  # only compressed archives need it

        tmpdir = tempfile.mkdtemp(prefix="wtool-")
        target = Path(tmpdir) / WEIGHTS_MEMBER
        try:
            _extract_bounded(zf, info, target, path)
            h5 = open_hdf5(target, where=f"{path} ({WEIGHTS_MEMBER})")
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return Source(kind="zip", h5=h5, config=config, metadata=metadata, zip_members=names,
                      in_place=False, _closers=[lambda: shutil.rmtree(tmpdir, ignore_errors=True)])
    finally:
        zf.close()


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (whose extra field may differ)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise InputError(f"{path}: corrupt zip archive (bad local header for {info.filename})")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    offset = info.header_offset + 30 + name_len + extra_len
    if offset + info.file_size > os.path.getsize(path):
        raise InputError(f"{path}: truncated zip archive ({info.filename} runs past the end of the file)",
                         "the file may be incomplete: download or save it again")
    return offset


def _extract_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, path: Path) -> None:
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while True:
                block = src.read(1 << 20)
                if not block:
                    break
                written += len(block)
                if written > info.file_size or written > limits.current().max_bytes:
                    raise InputError(f"{path}: refused: {info.filename} decompresses beyond its declared size")
                dst.write(block)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{path}: corrupt zip member {info.filename} ({_short(str(exc))})") from None


def _parse_json(data: bytes, name: str, path: Path) -> Any:
    from wtool.safety.safejson import parse_config_json  # duplicate keys, depth and size caps

    return parse_config_json(data, str(path), what=name)


# --------------------------------------------------------------------------- unzipped folders

FOLDER_MEMBERS = ("config.json", "metadata.json", WEIGHTS_MEMBER)
FOLDER_MAX_ENTRIES = 10_000


def is_model_folder(path: Path) -> bool:
    """An unzipped `.keras` folder (Keras's `save(..., zipped=False)`) or a keras-hub preset directory."""
    return path.is_dir() and not path.is_symlink() and (path / "config.json").exists()


def open_folder(path: Path) -> Source:
    """config.json + metadata.json + model.weights.h5 in a folder, read like the zip; links refused as in zips."""
    where = str(path)
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise InputError(f"{where}: cannot read the folder ({exc.strerror or exc})") from None
    if len(entries) > FOLDER_MAX_ENTRIES:
        raise InputError(f"{where}: refused: more than {FOLDER_MAX_ENTRIES:,} entries in a model folder")
    _refuse_links(path, where)
    weights = path / WEIGHTS_MEMBER
    if not weights.is_file():
        names = ", ".join(sorted(e.name for e in entries)[:6]) or "nothing"
        raise InputError(f"{where}: a model folder without {WEIGHTS_MEMBER} (it holds {names})",
                         "an unzipped .keras folder holds config.json, metadata.json and model.weights.h5")
    config = _read_folder_json(path, "config.json")
    metadata = _read_folder_json(path, "metadata.json") if (path / "metadata.json").is_file() else {}
    if sniff(weights) != "hdf5":
        raise InputError(f"{where}: {WEIGHTS_MEMBER} is not an HDF5 file")
    h5 = open_hdf5(weights, where=f"{path} ({WEIGHTS_MEMBER})")
    return Source(kind="folder", h5=h5, config=config if isinstance(config, dict) else None,
                  metadata=metadata if isinstance(metadata, dict) else {},
                  zip_members=sorted(e.name for e in entries), in_place=False)


def _refuse_links(path: Path, where: str) -> None:
    """No symbolic link anywhere in the folder (assets/ included), as in zips; the walk is bounded."""
    seen = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in [*dirs, *files]:
            seen += 1
            if seen > FOLDER_MAX_ENTRIES:
                raise InputError(f"{where}: refused: more than {FOLDER_MAX_ENTRIES:,} entries in a model folder")
            entry = Path(root) / name
            if entry.is_symlink():
                rel = entry.relative_to(path)
                raise InputError(f"{where}: refused: {rel} is a symbolic link (a model folder holds plain files)",
                                 "copy the files themselves into the folder")


def _read_folder_json(path: Path, name: str) -> Any:
    from wtool.fileio import check_input_file

    member = check_input_file(path / name)
    cap = limits.current().max_config_bytes
    if member.stat().st_size > cap:
        raise InputError(f"{path}: {name} is larger than {cap:,} bytes (limit)")
    return _parse_json(member.read_bytes(), name, path)
