"""Writing weights back into model files at the HDF5 level, without TensorFlow.

The output starts as a byte copy of the input (kernel `copy_file_range`, as fast as `cp`).
Every assigned weight whose dataset is stored contiguously and unfiltered is then
overwritten in place, at its byte offset: from an in-memory array, or straight from
another file's bytes when the source dataset has the same layout. What cannot be
spliced (chunked or compressed datasets, dropping the optimizer state, editing the
saved config for `--freeze`) goes through h5py on the copy.

`.keras` archives: when `model.weights.h5` is stored uncompressed (Keras always does
that) and only dataset values change, the archive is patched in place and the
member's CRC-32 is recomputed arithmetically (old CRC xor the shifted CRC of what
changed), so a one-layer edit of a 400 MB archive reads only that layer. Anything
else rewrites the archive: every other member (config.json, metadata.json, assets)
is copied unchanged, except config.json when `--freeze` edits it.

Output formats: the input's own format; `.keras` -> `.weights.h5` by extracting the
archive's weights file. Other conversions need the graph and go through Keras
(`wtool.graph.model`), after the HDF5-level edit.

After writing, every assigned dataset is read back and compared with what was meant.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wtool.errors import IncompatibleError, InputError, InternalError, UsageError, WtoolError
from wtool.fileio import atomic_output
from wtool.safety import guards as safety
from wtool.safety.crc import crc32

WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"
# Bytes moved per step when a value has to pass through Python (casts, chunked datasets).
SLAB_BYTES = 16 << 20
# Read-back of weights copied byte for byte from another file: in full up to this size,
# else this many windows of this size spread over the range.
FULL_CHECK_BYTES = 16 << 20
COPY_CHECK_WINDOWS = 64
COPY_CHECK_WINDOW = 64 << 10
# Groups that hold optimizer state, per layout.
OPTIMIZER_GROUPS = ("optimizer_weights", "optimizer")
# (edited copy, output, include the optimizer) -> None: loads the copy through Keras and saves it.
Rebuild = Callable[[Path, Path, bool], None]


# --------------------------------------------------------------------------- formats


def format_of_name(path: str | os.PathLike[str]) -> str:
    """The format an output file gets from its name: keras, weights.h5 or h5."""
    name = os.fspath(path).lower()
    if name.endswith(".keras"):
        return "keras"
    if name.endswith(".weights.h5"):
        return "weights.h5"
    if name.endswith(".weights.json"):
        return "weights.json"
    if name.endswith((".h5", ".hdf5")):
        return "h5"
    raise UsageError(
        f"{os.fspath(path)}: cannot tell the output format from the name",
        "name the output .keras, .h5, .weights.h5 or .weights.json (sharded)",
    )


def has_config(fmt: str) -> bool:
    return fmt in ("keras", "h5")


# --------------------------------------------------------------------------- CRC-32 arithmetic
# A port of zlib's crc32_combine (multmodp / x2nmodp): shifting a CRC over n zero bytes.

_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    table = []
    p = 1 << 30  # x^1
    table.append(p)
    for _ in range(1, 32):
        p = _multmodp(p, p)
        table.append(p)
    return table


_X2N = _x2n_table()


def _x2nmodp(n: int, k: int) -> int:
    p = 1 << 31  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B), like zlib's crc32_combine."""
    return _multmodp(_x2nmodp(len2, 3), crc1) ^ (crc2 & 0xFFFFFFFF)


class _Reader:
    """Reads byte ranges of files into one reused buffer (bounded memory, no mmap in the RSS)."""

    def __init__(self, size: int = 4 << 20) -> None:
        self._bufs = [bytearray(size), bytearray(size)]

    def chunks(self, fd: int, offset: int, n: int, which: int = 0) -> Iterator[memoryview]:
        buf = self._bufs[which]
        view = memoryview(buf)
        done = 0
        while done < n:
            want = min(len(buf), n - done)
            got = os.preadv(fd, [view[:want]], offset + done)
            if got <= 0:
                raise InputError("unexpected end of file")
            yield view[:got]
            done += got

    def crc32(self, fd: int, offset: int, n: int, crc: int = 0) -> int:
        for part in self.chunks(fd, offset, n):
            crc = crc32(part, crc)
        return crc

    def same(self, fd_a: int, off_a: int, fd_b: int, off_b: int, n: int) -> bool:
        """Bytes [off_a, off_a+n) of one file equal bytes [off_b, off_b+n) of another."""
        done = 0
        other = memoryview(self._bufs[1])
        for part in self.chunks(fd_a, off_a, n, 0):
            k = len(part)
            if os.preadv(fd_b, [other[:k]], off_b + done) != k:
                return False
            if not np.array_equal(np.frombuffer(part, np.uint8), np.frombuffer(other[:k], np.uint8)):
                return False
            done += k
        return True

    def same_as(self, fd: int, offset: int, data: np.ndarray) -> bool:
        """Bytes [offset, offset+len) of a file equal the bytes of `data` (a uint8 array)."""
        done = 0
        for part in self.chunks(fd, offset, data.size):
            k = len(part)
            if not np.array_equal(np.frombuffer(part, np.uint8), data[done : done + k]):
                return False
            done += k
        return True


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class ZipMember:
    name: str
    header_offset: int   # local file header
    data_offset: int     # first byte of the member's data
    size: int            # compressed size (= size when stored)
    crc: int
    stored: bool
    descriptor: bool     # a data descriptor follows the data
    central_offset: int  # this member's central directory entry


@dataclass(frozen=True)
class H5Image:
    """Where an HDF5 image lives: a whole file, or an uncompressed member of a .keras archive."""

    path: Path
    format: str
    offset: int = 0
    length: int = 0
    member: ZipMember | None = None

    @property
    def in_archive(self) -> bool:
        return self.member is not None


def _zip_members(path: Path) -> dict[str, ZipMember]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a readable .keras archive ({exc})") from None
    members: dict[str, ZipMember] = {}
    with zf, open(path, "rb") as fh:
        central = {}
        pos = zf.start_dir  # type: ignore[attr-defined]
        for _ in zf.infolist():
            head = os.pread(fh.fileno(), 46, pos)
            if len(head) < 46 or head[:4] != b"PK\x01\x02":
                raise InputError(f"{path}: corrupt central directory")
            nlen, xlen, clen = struct.unpack("<HHH", head[28:34])
            name = os.pread(fh.fileno(), nlen, pos + 46)
            central[name] = pos
            pos += 46 + nlen + xlen + clen
        for info in zf.infolist():
            head = os.pread(fh.fileno(), 30, info.header_offset)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise InputError(f"{path}: corrupt local header for {info.filename}")
            nlen, xlen = struct.unpack("<HH", head[26:30])
            raw_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
            members[info.filename] = ZipMember(
                name=info.filename,
                header_offset=info.header_offset,
                data_offset=info.header_offset + 30 + nlen + xlen,
                size=info.compress_size,
                crc=info.CRC,
                stored=info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1,
                descriptor=bool(info.flag_bits & 0x8),
                central_offset=central.get(raw_name, -1),
            )
    return members


def locate_image(path: str | os.PathLike[str], fmt: str) -> H5Image:
    """Find the HDF5 image of a model file. A compressed .keras member has no offset (length 0)."""
    path = Path(path)
    if fmt != "keras":
        return H5Image(path, fmt, 0, path.stat().st_size)
    members = _zip_members(path)
    member = members.get(WEIGHTS_MEMBER)
    if member is None:
        raise InputError(f"{path}: the archive has no {WEIGHTS_MEMBER}")
    if not member.stored:
        return H5Image(path, fmt, 0, 0, member)
    return H5Image(path, fmt, member.data_offset, member.size, member)


class _Window(io.RawIOBase):
    """A read-only file object over bytes [start, start+length) of an open file."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        if n == 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer).cast("B")[:n]], self._start + self._pos)
        self._pos += got
        return got


@contextlib.contextmanager
def open_image(image: H5Image) -> Iterator[h5py.File]:
    """Open an image read-only with h5py (a member of an archive through a window)."""
    if image.member is None:
        with h5py.File(image.path, "r") as h5:
            yield h5
        return
    if not image.member.stored:
        with zipfile.ZipFile(image.path) as zf, zf.open(WEIGHTS_MEMBER) as member:
            with h5py.File(member, "r") as h5:
                yield h5
        return
    fd = os.open(image.path, os.O_RDONLY)
    try:
        window = _Window(fd, image.offset, image.length)
        h5 = h5py.File(window, "r")
        try:
            yield h5
        finally:
            h5.close()  # before the window goes: h5py must not outlive its file object
    finally:
        os.close(fd)


def dataset_extent(ds: h5py.Dataset) -> tuple[int, int] | None:
    """(offset, nbytes) of a dataset stored as one contiguous, unfiltered, allocated byte range."""
    try:
        dcpl = ds.id.get_create_plist()
        if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_nfilters() or dcpl.get_external_count():
            return None
        offset = ds.id.get_offset()
        nbytes = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
        if offset is None or ds.id.get_storage_size() != nbytes or ds.dtype.hasobject:
            return None
    except (ValueError, RuntimeError, TypeError):
        return None
    return int(offset), nbytes


# --------------------------------------------------------------------------- write requests


@dataclass(frozen=True)
class WeightSource:
    """A weight taken from another model file."""

    path: Path
    format: str
    h5_name: str


@dataclass
class WeightWrite:
    """Assign one dataset of the target: from an array, or from a dataset of another file."""

    h5_name: str
    value: np.ndarray | None = None
    source: WeightSource | None = None


@dataclass
class WriteResult:
    output: str
    format: str
    method: str                      # splice | rewrite | keras
    written: int = 0                 # datasets assigned
    bytes_written: int = 0
    verified: int = 0
    optimizer: str = "none"          # kept | dropped | none
    frozen: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Target:
    write: WeightWrite
    shape: tuple[int, ...]
    dtype: np.dtype
    extent: tuple[int, int] | None   # in the input image
    src_image: H5Image | None = None
    src_extent: tuple[int, int] | None = None   # raw-copyable source bytes, absolute in src file


def _as_target(value: Any, dtype: np.dtype) -> np.ndarray:
    """A value as the dataset's dtype; opaque data (Keras's bfloat16) only from values already in its form."""
    arr = np.asarray(value)
    if dtype.kind == "V" and arr.dtype != dtype:
        raise InternalError(f"a {arr.dtype} value for {dtype} data (the caller must pass the stored form)")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_against(ds: h5py.Dataset, write: WeightWrite) -> None:
    if write.value is not None and tuple(write.value.shape) != tuple(ds.shape):
        raise IncompatibleError(f"{write.h5_name}: expected shape {ds.shape}, received {write.value.shape}")


# --------------------------------------------------------------------------- byte moving


def copy_bytes(src_fd: int, dst_fd: int, count: int, src_off: int, dst_off: int) -> None:
    """Copy a byte range between files in the kernel (copy_file_range), else through a buffer."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < count:
                n = os.copy_file_range(src_fd, dst_fd, count - done, src_off + done, dst_off + done)
                if n == 0:
                    break
                done += n
        except OSError:
            pass
    while done < count:
        chunk = os.pread(src_fd, min(SLAB_BYTES, count - done), src_off + done)
        if not chunk:
            raise InputError("unexpected end of file while copying")
        os.pwrite(dst_fd, chunk, dst_off + done)
        done += len(chunk)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + (256 << 20)], offset + done)


def _row_slabs(shape: tuple[int, ...], itemsize: int) -> Iterator[tuple[int, int]]:
    """Split axis 0 into [lo, hi) ranges of about SLAB_BYTES each."""
    if not shape:
        yield 0, 1
        return
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    step = max(1, SLAB_BYTES // row)
    for lo in range(0, shape[0], step):
        yield lo, min(shape[0], lo + step)


def _read_slab(ds: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
    return np.asarray(ds[()]) if ds.shape == () else np.asarray(ds[lo:hi])


# --------------------------------------------------------------------------- config edits


def _layer_list(cfg: Any) -> list[Any] | None:
    """The sub-layer list of a layer/model config, in Keras 1/2/3 shapes."""
    if isinstance(cfg, dict):
        inner = cfg.get("config", cfg)
        if isinstance(inner, list):  # Keras 1/2 Sequential: config is the list
            return inner
        if isinstance(inner, dict):
            layers = inner.get("layers")
            if isinstance(layers, list):
                return layers
            if isinstance(inner.get("layer"), dict):  # wrappers: Bidirectional, TimeDistributed
                return [inner["layer"]]
    return None


def _layer_name(cfg: Any) -> str | None:
    if not isinstance(cfg, dict):
        return None
    inner = cfg.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
        return str(inner["name"])
    return cfg.get("name") if isinstance(cfg.get("name"), str) else None


def set_trainable(config: dict[str, Any], layer_paths: Sequence[str], trainable: bool = False) -> list[str]:
    """Set `trainable` of the layers at these paths in a saved model config. Returns the paths not found.

    A path `features/d1` walks into the layer `features` and then `d1`; when a path goes
    deeper than the config does (a wrapper's inner layer), the deepest layer found is set.
    """
    missing = []
    for path in layer_paths:
        parts = [p for p in path.split("/") if p]
        node: Any = config
        found = None
        for part in parts:
            layers = _layer_list(node)
            if layers is None:
                break
            match = next((layer for layer in layers if _layer_name(layer) == part), None)
            if match is None:
                break
            node = found = match
        if found is None or not isinstance(found.get("config"), dict):
            missing.append(path)
            continue
        found["config"]["trainable"] = trainable
    return missing


def _decode_attr(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8")
    return str(value)


# --------------------------------------------------------------------------- the writer


def write_weights(
    source: str | os.PathLike[str],
    source_format: str,
    out: str | os.PathLike[str],
    writes: Sequence[WeightWrite],
    *,
    reset_optimizer: bool = False,
    freeze: Sequence[str] = (),
    out_format: str | None = None,
    rebuild: Rebuild | None = None,
    max_shard_bytes: int | None = None,
    preset_folder: bool = False,
) -> WriteResult:
    """Write a copy of `source` to `out` (atomically) with the given datasets assigned.

    The caller (surgery) has validated names, shapes, dtypes and values; this checks the
    shapes again against the file and raises before the output appears if anything is off.
    A conversion the HDF5 level cannot do (.h5 <-> .keras) needs the graph: `rebuild`,
    given by the caller, loads the edited copy through Keras and saves it as `out`. `preset_folder`:
    `source` is a keras-hub preset and `out` a new preset folder (wtool.store.preset_write).
    """
    source, out = Path(source), Path(out)
    if preset_folder:  # a keras-hub preset (set-weights, transfer): a new preset folder, keras-hub's own layout
        from wtool.store.preset_write import write_preset

        if freeze:
            raise UsageError(f"{out}: --freeze records frozen layers in a .keras or .h5 config, not in a preset",
                             "drop --freeze")
        return write_preset(source, out, writes, max_shard_bytes=max_shard_bytes,  # type: ignore[no-any-return]
                            write_file=write_weights,
                            result=WriteResult(output=str(out), format=source_format, method="rewrite"))
    if source_format == "keras-hub-preset":  # two weights files: only set-weights and transfer write them
        raise IncompatibleError(f"{source}: a keras-hub preset with task weights or a sharded backbone is written "
                                "only as a preset folder (set-weights, transfer)",
                                "read its weights from it (transfer, inspect --export) into a .keras model")
    out_format = out_format or format_of_name(out)
    if source_format == "keras-folder":  # an unzipped .keras: zipped as Keras would zip it, then as a .keras
        with tempfile.TemporaryDirectory(prefix=".wtool-", dir=out.parent if str(out.parent) else ".") as tmpdir:
            staged = _zip_folder(source, Path(tmpdir) / "staged.keras")
            try:
                return write_weights(staged, "keras", out, writes, reset_optimizer=reset_optimizer, freeze=freeze,
                                     out_format=out_format, rebuild=rebuild, max_shard_bytes=max_shard_bytes)
            except WtoolError as exc:
                exc.message = exc.message.replace(str(staged), str(source))
                raise
    if "weights.json" in (source_format, out_format) or max_shard_bytes is not None:
        return _write_weight_set(source, source_format, out, out_format, writes, reset_optimizer=reset_optimizer,
                                 freeze=freeze, max_shard_bytes=max_shard_bytes)
    if freeze and not (has_config(out_format) and has_config(source_format)):
        raise UsageError(f"{out}: a .weights.h5 file has no config to record frozen layers in",
                         "write a .keras or .h5 file, or drop --freeze")
    if source_format == "weights.h5" and out_format == "h5":
        if _keras3_layout(source):
            raise IncompatibleError(
                f"{source}: a weights-only file has no architecture to save as a full-model .h5 ({out})",
                "name the output .weights.h5, or start from a .keras or .h5 model")
        out_format = "weights.h5"  # a weights-only file named .h5 (legacy layout) stays what it is
    if out_format == source_format or (source_format == "keras" and out_format == "weights.h5"):
        with atomic_output(out) as tmp:
            return _write_direct(source, source_format, tmp, out_format, writes,
                                 reset_optimizer=reset_optimizer, freeze=freeze, final_name=out)
    if rebuild is None:
        raise InternalError(f"writing .{source_format} as .{out_format} needs the graph, and no rebuild was given")
    return _write_via_keras(source, source_format, out, out_format, writes,
                            reset_optimizer=reset_optimizer, freeze=freeze, rebuild=rebuild)


def _write_weight_set(source: Path, source_format: str, out: Path, out_format: str, writes: Sequence[WeightWrite],
                      *, reset_optimizer: bool, freeze: Sequence[str], max_shard_bytes: int | None) -> WriteResult:
    """Sharded in or out (`wtool.store.sharded_write`): every dataset rewritten, the set committed as a whole."""
    from wtool.store.model_file import open_model
    from wtool.store.sharded_write import write_weight_set

    if max_shard_bytes is not None and out_format != "weights.json":
        raise UsageError(f"{out}: --max-shard-size writes sharded weights: name the output X.weights.json")
    if out_format not in ("weights.json", "weights.h5"):
        raise IncompatibleError(f"{source}: sharded weights have no architecture to save as .{out_format} ({out})",
                                "name the output .weights.json or .weights.h5, or transfer into a .keras model")
    if freeze:
        raise UsageError(f"{out}: a weights-only file has no config to record frozen layers in",
                         "write a .keras or .h5 file, or drop --freeze")
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(open_model(source))
        opened: dict[Path, Any] = {}
        values: dict[str, Callable[[], Any]] = {}
        for w in writes:
            if w.value is not None:
                values[w.h5_name] = functools.partial(_given, w.value)
                continue
            assert w.source is not None
            if w.source.path not in opened:
                opened[w.source.path] = stack.enter_context(open_model(w.source.path))
            values[w.h5_name] = functools.partial(_dataset_value, opened[w.source.path], w.source.h5_name)
        done = write_weight_set(reader, out, values, max_shard_bytes=max_shard_bytes,
                                drop_optimizer=reset_optimizer)
        has_opt = reader.has_optimizer
    result = WriteResult(output=str(out), format=out_format, method="rewrite", written=done.written,
                         bytes_written=done.total_bytes, verified=done.verified,
                         optimizer=("dropped" if reset_optimizer else "kept") if has_opt else "none")
    if done.shards:
        result.notes.append(f"wrote {len(done.shards)} shard(s) beside {out.name}: {', '.join(done.shards[:4])}"
                            + (", ..." if len(done.shards) > 4 else ""))
    return result


def _given(value: Any) -> Any:
    return value


def _dataset_value(reader: Any, h5_name: str) -> np.ndarray:
    return np.asarray(reader.raw_dataset(h5_name)[()])


def _zip_folder(folder: Path, target: Path) -> Path:
    """config.json, metadata.json, model.weights.h5 (stored) and assets/ of a folder as a .keras zip."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for name in ("config.json", "metadata.json", WEIGHTS_MEMBER):
            if (folder / name).is_file():
                zf.write(folder / name, name)
        assets = folder / "assets"
        if assets.is_dir() and not assets.is_symlink():
            for item in sorted(assets.rglob("*")):
                if item.is_symlink():
                    raise InputError(f"{folder}: refused: {item.relative_to(folder)} is a symbolic link")
                if item.is_file():
                    zf.write(item, item.relative_to(folder).as_posix())
    return target


def _keras3_layout(path: Path) -> bool:
    """A weights-only file in the Keras 3 layout (`layers/<name>/vars/<i>`, no `layer_names`)."""
    with h5py.File(path, "r") as h5:
        return "layer_names" not in h5.attrs


def _write_via_keras(source: Path, source_format: str, out: Path, out_format: str,
                     writes: Sequence[WeightWrite], *, reset_optimizer: bool,
                     freeze: Sequence[str], rebuild: Rebuild) -> WriteResult:
    """Edit at the HDF5 level in the source's format, then let Keras rebuild the graph and save."""
    if source_format == "weights.h5":
        raise IncompatibleError(f"{source}: a weights-only file has no architecture to save as .{out_format}",
                                "write a .weights.h5 output, or start from a .keras or .h5 model")

    suffix = ".keras" if source_format == "keras" else ".h5"
    with tempfile.TemporaryDirectory(prefix=".wtool-", dir=out.parent if str(out.parent) else ".") as tmpdir:
        staged = Path(tmpdir) / f"staged{suffix}"
        result = _write_direct(source, source_format, staged, source_format, writes,
                               reset_optimizer=reset_optimizer, freeze=freeze, final_name=out)
        try:
            rebuild(staged, out, not reset_optimizer)
        except WtoolError as exc:  # name the user's file, not the staging copy in a temporary directory
            exc.message = exc.message.replace(str(staged), str(source))
            raise
    result.output = str(out)
    result.format = out_format
    result.method = "keras"
    if result.optimizer == "kept":
        result.optimizer = "dropped"
        result.notes.append(f"converting .{source_format} to .{out_format} goes through Keras; "
                            "the optimizer state is not carried over")
    return result


def _write_direct(source: Path, source_format: str, tmp: Path, out_format: str,
                  writes: Sequence[WeightWrite], *, reset_optimizer: bool, freeze: Sequence[str],
                  final_name: Path) -> WriteResult:
    image = locate_image(source, source_format)
    extract = source_format == "keras" and out_format == "weights.h5"
    result = WriteResult(output=str(final_name), format=out_format, method="splice")

    with open_image(image) as h5:
        targets = _plan_targets(h5, writes)
        has_opt = any(g in h5 for g in OPTIMIZER_GROUPS)
        config_attr = h5.attrs.get("model_config") if source_format == "h5" else None
    result.optimizer = ("dropped" if reset_optimizer else "kept") if has_opt else "none"
    result.written = len(targets)

    needs_h5py = any(t.extent is None for t in targets) or (reset_optimizer and has_opt) or (
        bool(freeze) and source_format == "h5")
    if freeze and source_format == "h5" and config_attr is None:
        raise IncompatibleError(f"{source}: the file has no model_config to record frozen layers in")

    if source_format == "keras" and not extract:
        zip_needs_rewrite = needs_h5py or bool(freeze) or not image.member or not image.member.stored
        if zip_needs_rewrite:
            result.method = "rewrite"
            _rewrite_archive(source, image, tmp, targets, reset_optimizer=reset_optimizer,
                             freeze=freeze, result=result)
        else:
            _splice_archive(source, image, tmp, targets, result)
    else:
        # Bare HDF5 output: a copy of the image (the whole file, or the archive's member).
        _splice_bare(image, tmp, targets, result, needs_h5py=needs_h5py,
                     reset_optimizer=reset_optimizer,
                     freeze=freeze if source_format == "h5" else ())
        _verify(H5Image(tmp, out_format, 0, tmp.stat().st_size), targets, result)
    return result


def _plan_targets(h5: h5py.File, writes: Sequence[WeightWrite]) -> list[_Target]:
    targets = []
    src_images: dict[tuple[Path, str], H5Image] = {}
    for write in writes:
        ds = h5.get(write.h5_name)
        if not isinstance(ds, h5py.Dataset):
            raise IncompatibleError(f"{write.h5_name}: no such dataset in the target file")
        safety.check_h5_dataset(ds, write.h5_name)
        _check_against(ds, write)
        target = _Target(write, tuple(ds.shape), ds.dtype, dataset_extent(ds))
        if write.source is not None:
            key = (write.source.path, write.source.format)
            if key not in src_images:
                src_images[key] = locate_image(write.source.path, write.source.format)
            target.src_image = src_images[key]
        targets.append(target)
    # Raw-copyable sources: same dtype (byte order included), shape and a contiguous extent.
    by_image: dict[H5Image, list[_Target]] = {}
    for t in targets:
        if t.src_image is not None:
            by_image.setdefault(t.src_image, []).append(t)
    for img, group in by_image.items():
        with open_image(img) as src:
            for t in group:
                assert t.write.source is not None
                sds = src.get(t.write.source.h5_name)
                if not isinstance(sds, h5py.Dataset):
                    raise IncompatibleError(f"{img.path}: no dataset {t.write.source.h5_name}")
                safety.check_h5_dataset(sds, str(img.path))
                if tuple(sds.shape) != t.shape:
                    raise IncompatibleError(f"{t.write.h5_name}: expected shape {t.shape}, "
                                            f"received {tuple(sds.shape)} from {img.path}")
                if sds.dtype != t.dtype and "V" in (sds.dtype.kind, t.dtype.kind):
                    # opaque data (Keras's bfloat16) is bytes to h5py: a cast would reinterpret, not round
                    raise InternalError(f"{t.write.h5_name}: a byte copy between {sds.dtype} and {t.dtype} data "
                                        "(the caller must pass the rounded values)")
                ext = dataset_extent(sds) if img.length else None
                if ext is not None and sds.dtype == t.dtype:
                    t.src_extent = (img.offset + ext[0], ext[1])
    return targets


def _copy_image(image: H5Image, tmp: Path) -> None:
    """Write the bytes of the image (whole file or archive member) to tmp."""
    if image.member is not None and not image.member.stored:
        with zipfile.ZipFile(image.path) as zf, zf.open(WEIGHTS_MEMBER) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, SLAB_BYTES)
        return
    with open(image.path, "rb") as src, open(tmp, "wb") as dst:
        copy_bytes(src.fileno(), dst.fileno(), image.length, image.offset, 0)


def _write_one(t: _Target, dst_fd: int, base: int, src_fds: dict[Path, int]) -> int:
    """Splice one target at `base` + its extent. Returns bytes written."""
    assert t.extent is not None
    offset, nbytes = t.extent
    if _streams(t):
        t.write.value.stream_to(dst_fd, base + offset, _pwrite_all)  # type: ignore[union-attr]
        return nbytes
    if t.write.value is not None:
        value = _as_target(t.write.value, t.dtype)
        _pwrite_all(dst_fd, value, base + offset)
        return nbytes
    assert t.write.source is not None and t.src_image is not None
    if t.src_extent is not None:
        copy_bytes(src_fds[t.src_image.path], dst_fd, nbytes, t.src_extent[0], base + offset)
        return nbytes
    # Cast or re-layout through Python, one slab at a time.
    row = int(np.prod(t.shape[1:], dtype=np.int64)) * t.dtype.itemsize if t.shape else nbytes
    with open_image(t.src_image) as src:
        sds = src[t.write.source.h5_name]
        for lo, hi in _row_slabs(t.shape, t.dtype.itemsize):
            slab = np.ascontiguousarray(_read_slab(sds, lo, hi), dtype=t.dtype)
            _pwrite_all(dst_fd, slab, base + offset + lo * row)
    return nbytes


def _streams(t: _Target) -> bool:
    """Whether the value writes its own bytes (merge's LazyMerge.stream_to: block by block, in the
    target's dtype, C order) and leaves a WrittenSummary behind for the read-back check."""
    value = t.write.value
    return (value is not None and bool(getattr(value, "streams", False))
            and np.dtype(getattr(value, "dtype", None) or "V1") == t.dtype and t.extent is not None
            and t.extent[1] == int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize)


def _h5py_assign(h5: h5py.File, t: _Target) -> None:
    ds = h5[t.write.h5_name]
    if t.write.value is not None:
        ds[...] = np.asarray(t.write.value, dtype=t.dtype)
        return
    assert t.write.source is not None and t.src_image is not None
    with open_image(t.src_image) as src:
        sds = src[t.write.source.h5_name]
        if not t.shape:
            ds[()] = np.asarray(sds[()], dtype=t.dtype)
            return
        for lo, hi in _row_slabs(t.shape, t.dtype.itemsize):
            ds[lo:hi] = np.asarray(sds[lo:hi], dtype=t.dtype)


def _open_sources(targets: Sequence[_Target], stack: contextlib.ExitStack) -> dict[Path, int]:
    fds: dict[Path, int] = {}
    for t in targets:
        if t.src_extent is not None and t.src_image is not None and t.src_image.path not in fds:
            fd = os.open(t.src_image.path, os.O_RDONLY)
            stack.callback(os.close, fd)
            fds[t.src_image.path] = fd
    return fds


def _compose(in_fd: int, in_off: int, length: int, out_fd: int, base: int, targets: Sequence[_Target],
             src_fds: dict[Path, int]) -> int:
    """Write `length` bytes of the input (from `in_off`) to the output, each spliceable target's
    range taken from its new value instead of the input: one pass, nothing copied twice.

    `base` is where the HDF5 image starts, relative to `in_off`. Returns the bytes assigned.
    """
    spliced = sorted((t for t in targets if t.extent is not None), key=lambda t: t.extent[0])  # type: ignore[index]
    pos = 0
    written = 0
    for t in spliced:
        assert t.extent is not None
        start = base + t.extent[0]
        if start < pos:
            raise InternalError(f"{t.write.h5_name}: overlaps another dataset")
        copy_bytes(in_fd, out_fd, start - pos, in_off + pos, pos)
        written += _write_one(t, out_fd, base, src_fds)
        pos = start + t.extent[1]
    copy_bytes(in_fd, out_fd, length - pos, in_off + pos, pos)
    return written


def _splice_bare(image: H5Image, tmp: Path, targets: Sequence[_Target], result: WriteResult, *,
                 needs_h5py: bool, reset_optimizer: bool, freeze: Sequence[str]) -> None:
    """Write a bare HDF5 copy of the image to tmp with the targets assigned."""
    with contextlib.ExitStack() as stack:
        src_fds = _open_sources(targets, stack)
        if image.member is not None and not image.member.stored:
            _copy_image(image, tmp)  # compressed member: extract, then overwrite in place
            fd = os.open(tmp, os.O_RDWR)
            stack.callback(os.close, fd)
            for t in targets:
                if t.extent is not None:
                    result.bytes_written += _write_one(t, fd, 0, src_fds)
        else:
            in_fd = os.open(image.path, os.O_RDONLY)
            stack.callback(os.close, in_fd)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
            stack.callback(os.close, fd)
            result.bytes_written += _compose(in_fd, image.offset, image.length, fd, 0, targets, src_fds)
    if needs_h5py:
        with h5py.File(tmp, "r+") as h5:
            for t in targets:
                if t.extent is None:
                    _h5py_assign(h5, t)
                    result.bytes_written += t.dtype.itemsize * int(np.prod(t.shape, dtype=np.int64))
            if reset_optimizer:
                for group in OPTIMIZER_GROUPS:
                    if group in h5:
                        del h5[group]
            if freeze:
                _freeze_h5_attr(h5, freeze, result)


def _freeze_h5_attr(h5: h5py.File, freeze: Sequence[str], result: WriteResult) -> None:
    raw = h5.attrs["model_config"]
    config = json.loads(_decode_attr(raw))
    missing = set(set_trainable(config, freeze))
    text = json.dumps(config)
    h5.attrs["model_config"] = text.encode("utf-8") if isinstance(raw, bytes | np.bytes_) else text
    result.frozen = [p for p in freeze if p not in missing]
    if missing:
        result.notes.append("not found in the saved config (not frozen): " + ", ".join(sorted(missing)))


def _splice_archive(source: Path, image: H5Image, tmp: Path, targets: Sequence[_Target],
                    result: WriteResult) -> None:
    """Copy the archive and overwrite datasets inside its stored weights member; fix the CRC."""
    member = image.member
    assert member is not None
    size = source.stat().st_size
    with contextlib.ExitStack() as stack:
        src_fds = _open_sources(targets, stack)
        in_fd = os.open(source, os.O_RDONLY)
        stack.callback(os.close, in_fd)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)  # tmp may not exist yet (staged for Keras)
        stack.callback(os.close, fd)
        result.bytes_written += _compose(in_fd, 0, size, fd, image.offset, targets, src_fds)
        crc = _member_crc_after(in_fd, fd, image, targets)
        _patch_crc(fd, member, crc)
    _verify(image_of_copy(tmp, image), targets, result)


def image_of_copy(tmp: Path, image: H5Image) -> H5Image:
    return H5Image(tmp, image.format, image.offset, image.length, image.member)


def _member_crc_after(in_fd: int, out_fd: int, image: H5Image, targets: Sequence[_Target]) -> int:
    """The member's CRC-32 after the splice, reading whichever is less: the changed ranges or all of it.

    Changed ranges only: crc(new) = crc(old) xor, over each changed range, the CRC of
    (old xor new) shifted over the bytes that follow it (CRC-32 is affine in the data).
    """
    member = image.member
    assert member is not None
    ranges = sorted((image.offset + t.extent[0], t.extent[1]) for t in targets if t.extent and t.extent[1])
    changed = sum(n for _, n in ranges)
    end = image.offset + image.length
    reader = _Reader()
    known = {image.offset + t.extent[0]: t.write.value.summary for t in targets  # type: ignore[union-attr]
             if t.extent and t.extent[1] and isinstance(getattr(t.write.value, "summary", None), WrittenSummary)
             and t.write.value.summary.nbytes == t.extent[1]}  # type: ignore[union-attr]
    if known:
        # Streamed values kept the CRC of what they wrote (the read-back check that follows compares
        # it with the file): read only the rest of the member and combine.
        crc, pos = 0, image.offset
        for start, n in ranges:
            if start < pos:
                raise InternalError("overlapping datasets in the weights member")
            crc = crc32_combine(crc, reader.crc32(out_fd, pos, start - pos), start - pos)
            part = known[start].crc if start in known else reader.crc32(out_fd, start, n)
            crc = crc32_combine(crc, part, n)
            pos = start + n
        return crc32_combine(crc, reader.crc32(out_fd, pos, end - pos), end - pos)
    if 2 * changed >= image.length:
        return reader.crc32(out_fd, image.offset, image.length)
    crc = member.crc
    for start, n in ranges:
        delta = reader.crc32(in_fd, start, n) ^ reader.crc32(out_fd, start, n)
        crc ^= crc32_combine(delta, 0, end - (start + n))
    return crc


def _patch_crc(fd: int, member: ZipMember, crc: int) -> None:
    packed = struct.pack("<I", crc & 0xFFFFFFFF)
    os.pwrite(fd, packed, member.header_offset + 14)
    if member.central_offset >= 0:
        os.pwrite(fd, packed, member.central_offset + 16)
    if member.descriptor:
        sig = os.pread(fd, 4, member.data_offset + member.size)
        os.pwrite(fd, packed, member.data_offset + member.size + (4 if sig == b"PK\x07\x08" else 0))


def _rewrite_archive(source: Path, image: H5Image, tmp: Path, targets: Sequence[_Target], *,
                     reset_optimizer: bool, freeze: Sequence[str], result: WriteResult) -> None:
    """Rebuild the archive: the weights member edited through a bare temporary copy, the rest kept."""
    with tempfile.TemporaryDirectory(prefix=".wtool-", dir=tmp.parent) as tmpdir:
        h5_path = Path(tmpdir) / WEIGHTS_MEMBER
        needs_h5py = any(t.extent is None for t in targets) or reset_optimizer
        _splice_bare(image, h5_path, targets, result, needs_h5py=needs_h5py,
                     reset_optimizer=reset_optimizer, freeze=())
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(tmp, "w", allowZip64=True) as zout:
            for info in zin.infolist():
                new_info = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new_info.compress_type = info.compress_type
                new_info.external_attr = info.external_attr
                if info.filename == WEIGHTS_MEMBER:
                    with open(h5_path, "rb") as src, zout.open(new_info, "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, SLAB_BYTES)
                elif info.filename == CONFIG_MEMBER and freeze:
                    config = json.loads(zin.read(info).decode("utf-8"))
                    missing = set(set_trainable(config, freeze))
                    result.frozen = [p for p in freeze if p not in missing]
                    if missing:
                        result.notes.append("not found in the saved config (not frozen): "
                                            + ", ".join(sorted(missing)))
                    zout.writestr(new_info, json.dumps(config, indent=None))
                else:
                    with zin.open(info) as src, zout.open(new_info, "w", force_zip64=info.file_size > 1 << 30) as dst:
                        shutil.copyfileobj(src, dst, SLAB_BYTES)
    _verify(locate_image(tmp, "keras"), targets, result)


# --------------------------------------------------------------------------- read-back


def _verify(out_image: H5Image, targets: Sequence[_Target], result: WriteResult) -> None:
    """Read every assigned dataset back from the output and compare it with what was meant.

    A dataset written at its byte offset is compared byte for byte with what was written
    (the array, or the source file's bytes), and its first and last rows are read through
    h5py and compared with the intended values, so a wrong offset cannot pass. A dataset
    written through h5py is read back in slabs and compared in full.
    """
    bad: list[str] = []
    reader = _Reader()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open_image(out_image))
        fds: dict[Path, int] = {}

        def fd_of(path: Path) -> int:
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
                stack.callback(os.close, fds[path])
            return fds[path]

        for t in targets:
            if not _verify_one(out, out_image, t, reader, fd_of):
                bad.append(t.write.h5_name)
    if bad:
        raise InternalError("read-back check failed: the output does not hold the assigned values for "
                            + ", ".join(bad), "this is a bug in wtool; nothing was written")
    result.verified = len(targets)


def _same_copy(reader: _Reader, src_fd: int, src_off: int, out_fd: int, out_off: int, n: int) -> bool:
    """Check a kernel-side copy: in full up to FULL_CHECK_BYTES, else at COPY_CHECK_WINDOWS spread
    windows (start and end included). What can go wrong in a byte-range copy is the range, and a
    wrong offset or length shows in any window, as it does in the h5py row reads that follow."""
    if n <= FULL_CHECK_BYTES:
        return reader.same(src_fd, src_off, out_fd, out_off, n)
    size = COPY_CHECK_WINDOW
    starts = {round(i * (n - size) / (COPY_CHECK_WINDOWS - 1)) for i in range(COPY_CHECK_WINDOWS)}
    return all(reader.same(src_fd, src_off + lo, out_fd, out_off + lo, size) for lo in sorted(starts))


def _rows(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    if not shape or shape[0] == 0:
        return [(0, 1)] if not shape else []
    return [(0, 1), (shape[0] - 1, shape[0])]


@dataclass(frozen=True)
class WrittenSummary:
    """What a computed value (merge's LazyMerge) keeps of itself once converted, so the read-back check
    need not compute it again: the CRC-32 of its bytes and its first and last rows."""

    nbytes: int
    crc: int
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def of(cls, arr: np.ndarray) -> WrittenSummary:
        flat = np.ascontiguousarray(arr)
        rows = (flat[:1], flat[-1:]) if flat.ndim else (flat, flat)
        return cls(flat.nbytes, crc32(flat.reshape(-1).view(np.uint8).data), rows[0].copy(), rows[1].copy())


def _verify_summary(ds: h5py.Dataset, out_fd: int, offset: int, summary: WrittenSummary, reader: _Reader) -> bool:
    if reader.crc32(out_fd, offset, summary.nbytes) != summary.crc:
        return False
    if not ds.shape:
        return bool(np.array_equal(np.asarray(ds[()]), summary.first, equal_nan=ds.dtype.kind in "fc"))
    return all(np.array_equal(_read_slab(ds, lo, hi), want, equal_nan=ds.dtype.kind in "fc")
               for (lo, hi), want in zip(_rows(ds.shape), (summary.first, summary.last), strict=False))


def _verify_one(out: h5py.File, out_image: H5Image, t: _Target, reader: _Reader, fd_of: Any) -> bool:
    ds = out.get(t.write.h5_name)
    if not isinstance(ds, h5py.Dataset) or tuple(ds.shape) != t.shape or ds.dtype != t.dtype:
        return False
    ext = dataset_extent(ds) if out_image.length else None
    out_fd = fd_of(out_image.path)
    summary = getattr(t.write.value, "summary", None)
    if isinstance(summary, WrittenSummary) and ext is not None and ext[1] == summary.nbytes:
        return _verify_summary(ds, out_fd, out_image.offset + ext[0], summary, reader)
    if t.write.value is not None:
        want = np.ascontiguousarray(t.write.value, dtype=t.dtype)
        if ext is not None and ext[1] == want.nbytes:
            if not reader.same_as(out_fd, out_image.offset + ext[0], want.reshape(-1).view(np.uint8)):
                return False
            return all(np.array_equal(_read_slab(ds, lo, hi), want[lo:hi] if want.ndim else want,
                                      equal_nan=t.dtype.kind in "fc") for lo, hi in _rows(t.shape))
        return bool(np.array_equal(np.asarray(ds[()]), want, equal_nan=want.dtype.kind in "fc"))
    assert t.write.source is not None and t.src_image is not None
    with open_image(t.src_image) as src:
        sds = src[t.write.source.h5_name]
        if t.src_extent is not None and ext is not None:
            if not _same_copy(reader, fd_of(t.src_image.path), t.src_extent[0], out_fd,
                              out_image.offset + ext[0], ext[1]):
                return False
            return all(np.array_equal(_read_slab(ds, lo, hi), np.asarray(_read_slab(sds, lo, hi), dtype=t.dtype),
                                      equal_nan=t.dtype.kind in "fc") for lo, hi in _rows(t.shape))
        for lo, hi in _row_slabs(t.shape, t.dtype.itemsize):
            want = np.asarray(_read_slab(sds, lo, hi), dtype=t.dtype)
            if not np.array_equal(_read_slab(ds, lo, hi), want, equal_nan=want.dtype.kind in "fc"):
                return False
    return True
