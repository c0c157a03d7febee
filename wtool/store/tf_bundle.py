"""TensorFlow tensor bundles (`PREFIX.index` + `PREFIX.data-SSSSS-of-NNNNN`), read without TensorFlow.

No well-kept package reads them outside TensorFlow, so this is a small reader of the two
formats involved, treating both files as untrusted input:

- `.index` is a LevelDB-style table (TensorFlow's `tsl::table`): a 48-byte footer (block
  handles of the metaindex and index blocks, magic 0xdb4775248b80fb57), the index block
  mapping keys to data blocks, data blocks of prefix-compressed keys with restart points.
  Every block ends in a type byte (TensorFlow writes 0, uncompressed: anything else is
  refused) and a masked CRC-32C, which is checked. The values are protobufs: the empty key
  holds a BundleHeaderProto, every other key a BundleEntryProto (dtype, shape, shard,
  offset, size, CRC-32C of the bytes).
- `.data-*` files hold the raw little-endian tensor bytes at those offsets.

Every offset and size is checked against the file sizes and caps before anything is
read or allocated; any malformation is an InputError (exit 3), one line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wtool.errors import InputError
from wtool.safety import limits

MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
MAX_INDEX_BYTES = 256 * limits.MiB
MAX_ENTRIES = 1_000_000
MAX_STRING_BYTES = 64 * limits.MiB  # a string tensor read whole (the object graph, wtool's run metadata)
CRC_CHECK_BYTES = 256 * limits.MiB  # larger tensors are read without their checksum (numpy CRC: ~50-100 MB/s)

# TensorFlow DataType enum -> numpy dtype name; strings are read only as scalars, others are refused.
DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 9: "int64", 10: "bool",
          14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64",
          24: "float8_e5m2", 25: "float8_e4m3fn"}
STRING = 7
OTHER_DTYPES = {8: "complex64", 18: "complex128", 20: "resource", 21: "variant", 11: "qint8", 12: "quint8",
                13: "qint32", 15: "qint16", 16: "quint16"}


class Malformed(InputError):
    """A damaged or hostile bundle (exit 3)."""


# --------------------------------------------------------------------------- CRC-32C


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), through google_crc32c when it is installed, else with numpy (`_crc_numpy`)."""
    try:
        import google_crc32c  # type: ignore[import-not-found]

        return int(google_crc32c.extend(crc, bytes(data)))
    except ImportError:
        pass
    raw = bytes(data)
    reg = crc ^ 0xFFFFFFFF
    if len(raw) >= VECTOR_MIN:
        reg, raw = _crc_numpy(reg, raw)
    return _crc_scalar(reg, raw) ^ 0xFFFFFFFF


def _crc_scalar(reg: int, raw: bytes) -> int:
    table = _TABLE
    for b in raw:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


VECTOR_MIN = 1 << 16
LANE_BYTES = 1024  # each of the parallel lanes covers this many bytes
CHUNK_LANES = 4096


def _shift_tables(length: int) -> list[list[int]]:
    """The register after `length` zero bytes is linear in the register before: four byte-wise tables of it."""
    columns = [_crc_scalar(1 << bit, bytes(length)) for bit in range(32)]
    tables = []
    for byte in range(4):
        table = []
        for value in range(256):
            out = 0
            for bit in range(8):
                if value >> bit & 1:
                    out ^= columns[byte * 8 + bit]
            table.append(out)
        tables.append(table)
    return tables


_SHIFT: list[list[int]] = []


def _crc_numpy(reg: int, raw: bytes) -> tuple[int, bytes]:
    """Run the register over the longest prefix of whole lanes: all lanes at once from a zero register
    (numpy, one table lookup per byte position), then folded in order with the lane-length shift.
    Returns the register and the bytes left for the scalar loop."""
    if not _SHIFT:
        _SHIFT.extend(_shift_tables(LANE_BYTES))
    lanes = len(raw) // LANE_BYTES
    block = np.frombuffer(raw, dtype=np.uint8, count=lanes * LANE_BYTES).reshape(lanes, LANE_BYTES)
    table = np.array(_TABLE, dtype=np.uint32)
    regs = np.zeros(lanes, dtype=np.uint32)
    for first in range(0, lanes, CHUNK_LANES):  # a few MiB at a time: the strided columns stay in cache
        part = block[first:first + CHUNK_LANES]
        sub = regs[first:first + CHUNK_LANES]
        index = np.empty(len(sub), dtype=np.uint32)
        for j in range(LANE_BYTES):
            np.bitwise_xor(sub, part[:, j], out=index)
            np.bitwise_and(index, 0xFF, out=index)
            np.right_shift(sub, 8, out=sub)
            np.bitwise_xor(sub, table[index], out=sub)
    t0, t1, t2, t3 = _SHIFT
    for lane in regs.tolist():
        reg = t0[reg & 0xFF] ^ t1[reg >> 8 & 0xFF] ^ t2[reg >> 16 & 0xFF] ^ t3[reg >> 24] ^ lane
    return reg, raw[lanes * LANE_BYTES:]


def unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------- protobuf wire format


def varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    """(value, next position) of a base-128 varint at `pos`; at most 10 bytes."""
    value = shift = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise Malformed(f"{where}: truncated varint")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos + i + 1
        shift += 7
    raise Malformed(f"{where}: varint longer than 10 bytes")


def fields(buf: bytes, where: str) -> list[tuple[int, int, int | bytes]]:
    """[(field number, wire type, value)] of one protobuf message; groups are refused."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = varint(buf, pos, where)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise Malformed(f"{where}: protobuf field number 0")
        if wire == 0:
            value, pos = varint(buf, pos, where)
            out.append((number, wire, value))
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise Malformed(f"{where}: truncated fixed-width field")
            out.append((number, wire, int.from_bytes(buf[pos:pos + n], "little")))
            pos += n
        elif wire == 2:
            n, pos = varint(buf, pos, where)
            if n > len(buf) - pos:
                raise Malformed(f"{where}: a field of {n:,} bytes runs past its message")
            out.append((number, wire, buf[pos:pos + n]))
            pos += n
        else:
            raise Malformed(f"{where}: unsupported protobuf wire type {wire}")
    return out


def as_int(value: int | bytes, where: str, signed: bool = True) -> int:
    if isinstance(value, bytes):
        raise Malformed(f"{where}: expected a number, found a length-delimited field")
    return value - (1 << 64) if signed and value >= 1 << 63 else value


# --------------------------------------------------------------------------- the index table


def _handle(buf: bytes, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = varint(buf, pos, where)
    size, pos = varint(buf, pos, where)
    return offset, size, pos


def _block(data: bytes, offset: int, size: int, where: str) -> bytes:
    """One block's contents, after checking it lies in the file, is uncompressed and has a good CRC."""
    if offset > len(data) or size > len(data) - offset or offset + size + 5 > len(data):
        raise Malformed(f"{where}: a block at offset {offset:,} of {size:,} bytes runs past the end "
                        f"of the {len(data):,}-byte index")
    contents = data[offset:offset + size]
    kind = data[offset + size]
    if kind != 0:
        raise Malformed(f"{where}: a block compressed with type {kind} (TensorFlow writes uncompressed index files)")
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if unmask(stored) != crc32c(data[offset:offset + size + 1]):
        raise Malformed(f"{where}: a block at offset {offset:,} fails its CRC-32C check")
    return contents


def block_entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one block: prefix-compressed keys, restart array at the end."""
    if len(block) < 4:
        raise Malformed(f"{where}: a block of {len(block)} bytes has no restart count")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    if restarts == 0 or restarts > (len(block) - 4) // 4:
        raise Malformed(f"{where}: a block declares {restarts:,} restart points")
    end = len(block) - 4 - 4 * restarts
    out: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = varint(block, pos, where)
        unshared, pos = varint(block, pos, where)
        vlen, pos = varint(block, pos, where)
        if shared > len(key) or unshared > end - pos or vlen > end - pos - unshared:
            raise Malformed(f"{where}: a block entry runs past its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
        if len(out) > MAX_ENTRIES:
            raise Malformed(f"{where}: refused: more than {MAX_ENTRIES:,} entries")
    return out


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an index file, in key order."""
    where = str(path)
    size = path.stat().st_size
    if size < FOOTER_BYTES:
        raise Malformed(f"{where}: not a TensorFlow checkpoint index ({size} bytes, the footer alone is 48)",
                        "the file may be truncated: save the checkpoint again")
    if size > MAX_INDEX_BYTES:
        raise Malformed(f"{where}: refused: a checkpoint index of {size:,} bytes (limit {MAX_INDEX_BYTES:,})")
    data = path.read_bytes()
    footer = data[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != MAGIC:
        raise Malformed(f"{where}: not a TensorFlow checkpoint index (bad footer magic {magic:#018x})",
                        "the file may be truncated or not a checkpoint")
    _, _, pos = _handle(footer, 0, where)  # the metaindex: TensorFlow leaves it empty
    index_off, index_size, _ = _handle(footer, pos, where)
    entries: list[tuple[bytes, bytes]] = []
    last = None
    for _key, handle in block_entries(_block(data, index_off, index_size, where), where):
        off, n, _ = _handle(handle, 0, where)
        for key, value in block_entries(_block(data, off, n, where), where):
            if last is not None and key <= last:
                raise Malformed(f"{where}: keys out of order in the index")
            last = key
            entries.append((key, value))
            if len(entries) > MAX_ENTRIES:
                raise Malformed(f"{where}: refused: more than {MAX_ENTRIES:,} entries")
    return entries


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One tensor of the bundle: where its bytes lie and what they are."""

    key: str
    dtype: str  # numpy name, "string", or the TensorFlow name of a dtype wtool does not read
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int | None

    @property
    def numeric(self) -> bool:
        return self.dtype in DTYPES.values()


def _shape(buf: bytes, where: str) -> tuple[int, ...]:
    dims: list[int] = []
    for number, _, value in fields(buf, where):
        if number == 3 and value:
            raise Malformed(f"{where}: a tensor of unknown rank")
        if number == 2 and isinstance(value, bytes):
            size = 0
            for n, _, v in fields(value, where):
                if n == 1:
                    size = as_int(v, where)
            if size < 0 or size >= 1 << 62:
                raise Malformed(f"{where}: a dimension of {size}")
            dims.append(size)
    if len(dims) > limits.current().max_array_dims:
        raise Malformed(f"{where}: {len(dims)} dimensions")
    return tuple(dims)


def parse_entry(key: str, buf: bytes, where: str) -> Entry:
    what = f"{where}: entry {key[:80]!r}"
    values: dict[int, int | bytes] = {}
    for number, _, value in fields(buf, what):
        if number == 7:
            raise Malformed(f"{what} is a slice of a partitioned variable; wtool does not read those")
        values[number] = value
    code = as_int(values.get(1, 0), what)
    dtype = DTYPES.get(code) or ("string" if code == STRING else OTHER_DTYPES.get(code, f"dtype {code}"))
    raw_shape = values.get(2, b"")
    shape = _shape(raw_shape, what) if isinstance(raw_shape, bytes) else ()
    shard, offset, size = (as_int(values.get(n, 0), what) for n in (3, 4, 5))
    if min(shard, offset, size) < 0:
        raise Malformed(f"{what} has a negative shard, offset or size")
    crc = values.get(6)
    return Entry(key, dtype, shape, shard, offset, size, as_int(crc, what, signed=False) if crc is not None else None)


def parse_header(buf: bytes, where: str) -> int:
    """The number of data shards, after checking the byte order (little-endian only)."""
    values = {n: v for n, _, v in fields(buf, f"{where}: bundle header")}
    shards = as_int(values.get(1, 0), where)
    if as_int(values.get(2, 0), where) != 0:
        raise Malformed(f"{where}: a big-endian checkpoint; wtool reads little-endian ones")
    if not 1 <= shards <= 100_000:
        raise Malformed(f"{where}: the bundle header declares {shards:,} data shards")
    return shards


def check_entry(entry: Entry, shard_size: int, where: str) -> None:
    """The entry's bytes lie inside its shard and, for numbers, fit its shape exactly."""
    what = f"{where}: entry {entry.key[:80]!r}"
    if entry.offset > shard_size or entry.size > shard_size - entry.offset:
        raise Malformed(f"{what}: bytes [{entry.offset:,}, {entry.offset + entry.size:,}) lie past the end of "
                        f"its {shard_size:,}-byte data file", "the data file may be truncated")
    if entry.numeric:
        count = 1
        for d in entry.shape:
            count *= d
        need = count * _np_dtype(entry.dtype).itemsize
        if need != entry.size:
            raise Malformed(f"{what}: shape {entry.shape} of {entry.dtype} needs {need:,} bytes, "
                            f"the index says {entry.size:,}")


def _np_dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes  # noqa: F401 - registers the dtypes with numpy

    return np.dtype(name)


# --------------------------------------------------------------------------- values


def read_bytes(data_file: Path, entry: Entry, where: str) -> bytes:
    """An entry's bytes, whole, CRC-checked for numbers (the caller has run check_entry)."""
    with open(data_file, "rb") as fh:
        fh.seek(entry.offset)
        raw = fh.read(entry.size)
    if len(raw) != entry.size:
        raise Malformed(f"{where}: entry {entry.key[:80]!r}: the data file ended early")
    if entry.numeric and entry.crc is not None and entry.size <= CRC_CHECK_BYTES \
            and unmask(entry.crc) != crc32c(raw):
        raise Malformed(f"{where}: entry {entry.key[:80]!r} fails its CRC-32C check: the data file is damaged")
    return raw


def read_array(data_file: Path, entry: Entry, where: str) -> np.ndarray:
    if not entry.numeric:
        raise Malformed(f"{where}: entry {entry.key[:80]!r} holds {entry.dtype} values; wtool reads numbers only")
    raw = read_bytes(data_file, entry, where)
    return np.frombuffer(raw, dtype=_np_dtype(entry.dtype).newbyteorder("<")).reshape(entry.shape).copy()


def read_scalar_string(data_file: Path, entry: Entry, where: str) -> bytes:
    """A scalar string tensor: varint length, 4 checksum bytes over the length, then the bytes."""
    what = f"{where}: entry {entry.key[:80]!r}"
    if entry.dtype != "string" or entry.shape != ():
        raise Malformed(f"{what} is not a scalar string")
    if entry.size > MAX_STRING_BYTES:
        raise Malformed(f"{what}: refused: a string of {entry.size:,} bytes (limit {MAX_STRING_BYTES:,})")
    raw = read_bytes(data_file, entry, where)
    n, pos = varint(raw, 0, what)
    if pos + 4 + n != len(raw):
        raise Malformed(f"{what}: the string's length ({n:,}) does not fit its {len(raw):,} bytes")
    # TensorFlow's checksum: over the length as a uint32, the 4 length-checksum bytes, then the string.
    length_crc = crc32c(struct.pack("<I", n))
    if unmask(int.from_bytes(raw[pos:pos + 4], "little")) != length_crc:
        raise Malformed(f"{what}: the string's length fails its checksum")
    crc = crc32c(raw[pos:pos + 4], length_crc)
    if entry.crc is not None and unmask(entry.crc) != crc32c(raw[pos + 4:], crc):
        raise Malformed(f"{what} fails its CRC-32C check: the data file is damaged")
    return raw[pos + 4:]
