"""Checking a zip (.keras archive, .npz) before anything else reads it.

`check_archive(path)` proves a `.keras` file is a plain Keras archive before Keras,
h5py or the store see it: exactly the expected members (config.json, metadata.json,
one model.weights.h5 or model.weights.npz, optional assets/...), no duplicate names
(Python's zipfile silently takes the last one), no absolute or `..` names, no symlink
or device entries, no overlapping members, no encryption, only stored/deflated data.
Every member is then streamed once: per-member and total uncompressed caps are
enforced on the bytes actually produced (the declared sizes are never trusted) and
zipfile verifies each CRC at the end of the stream.

`check_zip_structure` is the same structural check for any zip (used for .npz).
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from wtool.errors import InputError, UnsafeError
from wtool.fileio import open_input
from wtool.safety import limits as _limits
from wtool.safety.crc import crc32
from wtool.safety.limits import Limits, fmt_bytes, shown

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBERS = ("model.weights.h5", "model.weights.npz")
ASSETS_PREFIX = "assets/"

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
CHUNK = 1 << 20
STORED_CHUNK = 4 << 20
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_MAX_COMMENT = 0xFFFF


@dataclass
class ArchiveReport:
    """What check_archive found: member names -> uncompressed bytes, and the config text."""

    path: str
    members: dict[str, int] = field(default_factory=dict)
    weights_member: str = ""
    total_bytes: int = 0
    config_bytes: bytes = b""
    metadata_bytes: bytes = b""


def is_zip(head: bytes) -> bool:
    """True when the first bytes of a file are a zip local header (format by magic, not extension)."""
    return head.startswith(ZIP_MAGIC)


def _entry_count(fh: IO[bytes], path: str, size: int) -> int:
    """Entries declared by the end-of-central-directory record, read before zipfile builds its list."""
    tail_len = min(size, 22 + _MAX_COMMENT)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(_EOCD_SIG)
    if pos < 0 or len(tail) - pos < 22:
        raise InputError(f"{path}: not a valid zip archive (no end-of-archive record)")
    (_sig, _disk, _cd_disk, _n_disk, n_total, _cd_size, _cd_off, _clen) = struct.unpack(
        "<4sHHHHIIH", tail[pos:pos + 22])
    count = int(n_total)
    if n_total == 0xFFFF and pos >= 20:
        loc = tail[pos - 20:pos]
        if loc[:4] == _ZIP64_LOCATOR_SIG:
            (eocd64_off,) = struct.unpack("<Q", loc[8:16])
            if eocd64_off + 56 <= size:
                fh.seek(eocd64_off)
                rec = fh.read(56)
                if rec[:4] == _ZIP64_EOCD_SIG:
                    (count,) = struct.unpack("<Q", rec[32:40])
    return count


def _member_name_problem(name: str) -> str | None:
    """Why a member name could escape or confuse an extraction, or None when it is plain."""
    if not name:
        return "an empty member name"
    if "\x00" in name:
        return "a member name with a NUL byte"
    if "\\" in name:
        return "a member name with a backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute member name"
    parts = name.rstrip("/").split("/")
    if any(part == ".." for part in parts):
        return "a member name with '..'"
    if any(part in ("", ".") for part in parts):
        return "a member name with an empty or '.' component"
    return None


def _entry_type_problem(info: zipfile.ZipInfo) -> str | None:
    """Symlinks, devices, FIFOs and sockets recorded in a member's Unix mode are refused."""
    mode = info.external_attr >> 16
    if not mode:
        return None
    kind = stat.S_IFMT(mode)
    if kind == 0 or stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symlink entry"
    return "a special-file entry (device, FIFO or socket)"


def check_zip_structure(zf: zipfile.ZipFile, fh: IO[bytes], path: str, size: int,
                        limits: Limits) -> list[zipfile.ZipInfo]:
    """Structural checks on an open zip: names, entry types, encryption, methods, overlaps."""
    infos = zf.infolist()
    if len(infos) > limits.max_archive_members:
        raise InputError(f"{path}: archive has {len(infos)} members (limit {limits.max_archive_members})")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        problem = _member_name_problem(name) or _entry_type_problem(info)
        if problem:
            raise UnsafeError(f"{path}: refused: {problem} ({shown(name)})",
                              "this is not a plain Keras/numpy archive; --unsafe does not change this")
        folded = name.lower()
        if folded in seen:
            raise UnsafeError(f"{path}: refused: duplicate member name {shown(name)}",
                              "two members with one name is a known way to show a checker one file "
                              "and a loader another; --unsafe does not change this")
        seen.add(folded)
        if info.flag_bits & 0x1:
            raise InputError(f"{path}: member {shown(name)} is encrypted (not supported)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InputError(f"{path}: member {shown(name)} uses compression method {info.compress_type} "
                             "(only stored and deflated are supported)")
    _check_no_overlap(infos, fh, path, size)
    return infos


def _check_no_overlap(infos: list[zipfile.ZipInfo], fh: IO[bytes], path: str, size: int) -> None:
    """Each member's bytes must lie in their own span (overlapping members make quine-style bombs)."""
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) < _LOCAL_HEADER.size or raw[:4] != ZIP_MAGIC:
            raise InputError(f"{path}: member {shown(info.filename)} has no local header (corrupt archive)")
        fields = _LOCAL_HEADER.unpack(raw)
        name_len, extra_len = fields[9], fields[10]
        start = info.header_offset
        end = start + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > size:
            raise InputError(f"{path}: member {shown(info.filename)} runs past the end of the file (truncated?)")
        spans.append((start, end, info.filename))
    spans.sort()
    for (_s1, e1, n1), (s2, _e2, n2) in zip(spans, spans[1:], strict=False):
        if s2 < e1:
            raise InputError(f"{path}: members {shown(n1)} and {shown(n2)} overlap (not a valid archive; "
                             "overlapping members are a zip-bomb technique)")


def stream_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, cap: int,
                  sink: Callable[[bytes], None] | None = None, hint: str | None = None) -> int:
    """Read one member to its end in chunks, never past `cap` bytes; zipfile checks the CRC at the end."""
    if sink is None:
        stored = _stream_stored(zf, info, path, cap, hint)
        if stored is not None:
            return stored
    total = 0
    try:
        with zf.open(info) as member:
            while True:
                chunk = member.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise InputError(f"{path}: member {shown(info.filename)} decompresses to more than "
                                     f"{fmt_bytes(cap)} (limit)", hint or MAX_BYTES_HINT)
                if sink is not None:
                    sink(chunk)
    except InputError:
        raise
    except zipfile.BadZipFile as exc:
        reason = "CRC mismatch" if "CRC" in str(exc) else "corrupt member"
        raise InputError(f"{path}: member {shown(info.filename)}: {reason} (damaged archive)") from None
    except zlib.error:
        raise InputError(f"{path}: member {shown(info.filename)}: corrupt compressed data") from None
    except (EOFError, OSError, ValueError, NotImplementedError, struct.error, RuntimeError) as exc:
        raise InputError(f"{path}: member {shown(info.filename)} cannot be read ({type(exc).__name__})") from None
    return total


def _stream_stored(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, cap: int, hint: str | None) -> int | None:
    """A stored member's CRC, read with preadv into one reused buffer (twice as fast as zipfile's reads,
    which allocate every chunk: this is most of opening a large .keras file). None: take zipfile's way.

    zipfile still opens the member first, so its local-header checks (name, flags) apply as before.
    """
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.file_size != info.compress_size:
        return None
    try:
        fd = zf.fp.fileno()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return None
    n = info.file_size
    if n > cap:
        raise InputError(f"{path}: member {shown(info.filename)} decompresses to more than "
                         f"{fmt_bytes(cap)} (limit)", hint or MAX_BYTES_HINT)
    try:
        with zf.open(info):
            pass
        head = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
        if len(head) < _LOCAL_HEADER.size or head[:4] != ZIP_MAGIC:
            raise zipfile.BadZipFile("bad local header")
        fields = _LOCAL_HEADER.unpack(head)
        start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        buf = memoryview(bytearray(min(n, STORED_CHUNK) or 1))
        crc = done = 0
        while done < n:
            got = os.preadv(fd, [buf[:min(len(buf), n - done)]], start + done)
            if got <= 0:
                raise EOFError
            crc = crc32(buf[:got], crc)
            done += got
    except zipfile.BadZipFile:
        raise InputError(f"{path}: member {shown(info.filename)}: corrupt member (damaged archive)") from None
    except (EOFError, OSError, ValueError, NotImplementedError, struct.error, RuntimeError) as exc:
        raise InputError(f"{path}: member {shown(info.filename)} cannot be read ({type(exc).__name__})") from None
    if crc != info.CRC:
        raise InputError(f"{path}: member {shown(info.filename)}: CRC mismatch (damaged archive)")
    return n


def open_zip(fh: IO[bytes], path: str, limits: Limits) -> tuple[zipfile.ZipFile, int]:
    """Open a zip after bounding its central directory; malformed zips raise InputError."""
    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    head = fh.read(4)
    if not (head.startswith(ZIP_MAGIC) or head.startswith(EMPTY_ZIP_MAGIC)):
        raise InputError(f"{path}: not a zip archive")
    count = _entry_count(fh, path, size)
    if count > limits.max_archive_members:
        raise InputError(f"{path}: archive declares {count} members (limit {limits.max_archive_members})")
    fh.seek(0)
    try:
        zf = zipfile.ZipFile(fh, "r")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error,
            NotImplementedError, UnicodeDecodeError):
        raise InputError(f"{path}: not a valid zip archive (corrupt central directory)") from None
    return zf, size


MAX_BYTES_HINT = "raise the limit with --max-bytes if you trust it"


def _member_hint(name: str) -> str:
    """--max-bytes raises the cap of weights and assets; config.json and metadata.json have fixed caps."""
    if name in (CONFIG_MEMBER, METADATA_MEMBER):
        return f"Keras writes a {name} of a few KB; this one is not from a model save"
    return MAX_BYTES_HINT


def _keras_member_cap(name: str, limits: Limits) -> int | None:
    """The uncompressed cap for an expected .keras member, or None if the name is not expected."""
    if name == CONFIG_MEMBER:
        return limits.max_config_bytes
    if name == METADATA_MEMBER:
        return limits.max_metadata_bytes
    if name in WEIGHTS_MEMBERS:
        return limits.max_bytes
    if name.startswith(ASSETS_PREFIX) or name == "assets":
        return limits.max_bytes
    return None


def check_archive(path: str | os.PathLike[str], limits: Limits | None = None) -> ArchiveReport:
    """Check a .keras archive completely before anything reads it; return its members and config text.

    Raises InputError (exit 3) for malformed, unexpected or over-limit content and
    UnsafeError (exit 5) for names or entries that could escape or confuse a reader.
    """
    limits = limits or _limits.current()
    text = os.fspath(path)
    report = ArchiveReport(path=text)
    with open_input(text) as fh:
        zf, size = open_zip(fh, text, limits)
        with zf:
            infos = check_zip_structure(zf, fh, text, size, limits)
            names = [info.filename for info in infos]
            for info in infos:
                if _keras_member_cap(info.filename, limits) is None:
                    raise InputError(f"{text}: unexpected member {shown(info.filename)} in a .keras archive "
                                     "(expected config.json, metadata.json, model.weights.h5 and assets/)")
            if CONFIG_MEMBER not in names:
                raise InputError(f"{text}: not a Keras archive (no config.json)")
            weights = [n for n in names if n in WEIGHTS_MEMBERS]
            if len(weights) > 1:
                raise InputError(f"{text}: archive has both {WEIGHTS_MEMBERS[0]} and {WEIGHTS_MEMBERS[1]}")
            if not weights:
                raise InputError(f"{text}: not a Keras archive (no {WEIGHTS_MEMBERS[0]})")
            report.weights_member = weights[0]
            for info in infos:
                cap = _keras_member_cap(info.filename, limits) or 0
                if info.file_size > cap:
                    raise InputError(f"{text}: member {shown(info.filename)} declares {fmt_bytes(info.file_size)} "
                                     f"(limit {fmt_bytes(cap)})", _member_hint(info.filename))
            total = 0
            for info in infos:
                member_cap = _keras_member_cap(info.filename, limits) or 0
                budget = limits.max_bytes - total  # what --max-bytes leaves for this member
                cap = min(member_cap, budget)
                hint = _member_hint(info.filename) if member_cap <= budget else MAX_BYTES_HINT
                keep: list[bytes] | None = [] if info.filename in (CONFIG_MEMBER, METADATA_MEMBER) else None
                n = stream_member(zf, info, text, max(cap, 0), keep.append if keep is not None else None, hint)
                total += n
                if total > limits.max_bytes:
                    raise InputError(f"{text}: archive decompresses to more than {fmt_bytes(limits.max_bytes)} "
                                     "(limit)", MAX_BYTES_HINT)
                report.members[info.filename] = n
                if info.filename == CONFIG_MEMBER and keep is not None:
                    report.config_bytes = b"".join(keep)
                elif info.filename == METADATA_MEMBER and keep is not None:
                    report.metadata_bytes = b"".join(keep)
            report.total_bytes = total
    return report
