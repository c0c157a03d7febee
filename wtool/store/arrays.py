"""Reading .npy / .npz weight values from strangers: headers first, numbers only, sizes proven.

- `load_npy(path)`: one array from a .npy file.
- `load_npz(path)`: {key: array} from an .npz, members read straight out of the zip
  (never extracted), each through the same header checks.

Every array is read with `allow_pickle=False` semantics and more: the header is parsed
first (numpy's own literal parser, bounded header size), only numeric and bool dtypes
are accepted (no objects, strings, structured or void records), the declared size must
equal the bytes present (a header that claims 10^12 elements over a 100-byte file is
refused before anything is allocated), and the sum of everything read stays under
`--max-bytes`. The zip of an .npz gets the structural checks of wtool.safety.archive (no
duplicate names, no symlink entries, streamed caps, CRC).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from typing import IO, Any

import numpy as np

from wtool.errors import InputError
from wtool.fileio import open_input
from wtool.safety import limits as _limits
from wtool.safety.archive import check_zip_structure, open_zip
from wtool.safety.limits import Limits, fmt_bytes, shown

NPY_MAGIC = b"\x93NUMPY"
NUMERIC_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex


def read_npy_header(fh: IO[bytes], where: str, limits: Limits | None = None, text: bool = False
                    ) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Parse and check a .npy header; returns (shape, fortran_order, dtype). The stream is left at the data.

    `text` also accepts fixed-width strings (numpy U/S, rows for a string-input model);
    object arrays are refused always, since reading them would unpickle.
    """
    limits = limits or _limits.current()
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise InputError(f"{where}: unsupported .npy version {version}")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, MemoryError):
        raise InputError(f"{where}: not a valid .npy array (bad header)") from None
    kinds = NUMERIC_KINDS | {"U", "S"} if text else NUMERIC_KINDS
    if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
        what = "numbers, bools and strings" if text else "numbers and bools"
        raise InputError(f"{where}: dtype {shown(dtype.str)} is not numeric; only {what} are read "
                         "(Python objects are never unpickled)")
    if len(shape) > limits.max_array_dims or any((not isinstance(d, int)) or d < 0 for d in shape):
        raise InputError(f"{where}: invalid array shape in the header")
    return shape, fortran, dtype


def _nbytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return math.prod(shape) * dtype.itemsize


def _read_exact(fh: IO[bytes], nbytes: int, where: str) -> bytes:
    chunks: list[bytes] = []
    left = nbytes
    while left > 0:
        chunk = fh.read(min(left, 1 << 24))
        if not chunk:
            raise InputError(f"{where}: file is shorter than its header declares (truncated)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _to_array(data: bytes, shape: tuple[int, ...], fortran: bool, dtype: np.dtype[Any]) -> np.ndarray:
    array = np.frombuffer(data, dtype=dtype).copy()
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def _checked_npy_header(fh: IO[bytes], where: str, limits: Limits) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise InputError(f"{where}: not a .npy file")
    fh.seek(0)
    shape, fortran, dtype = read_npy_header(fh, where, limits)
    declared = _nbytes(shape, dtype)
    present = size - fh.tell()
    if declared != present:
        raise InputError(f"{where}: header declares {fmt_bytes(declared)} of data but the file holds "
                         f"{fmt_bytes(present)}")
    if declared > limits.max_bytes:
        raise InputError(f"{where}: array is {fmt_bytes(declared)} (limit {fmt_bytes(limits.max_bytes)})",
                         "raise the limit with --max-bytes if you trust it")
    return shape, fortran, dtype


def check_npy(path: str | os.PathLike[str], limits: Limits | None = None) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Check a .npy file without reading its data (before memory-mapping it): returns (shape, dtype)."""
    limits = limits or _limits.current()
    where = os.fspath(path)
    with open_input(where) as fh:
        shape, _fortran, dtype = _checked_npy_header(fh, where, limits)
    return shape, dtype


def load_npy(path: str | os.PathLike[str], limits: Limits | None = None) -> np.ndarray:
    """Read one numeric array from a .npy file after checking its header against the file size."""
    limits = limits or _limits.current()
    where = os.fspath(path)
    with open_input(where) as fh:
        shape, fortran, dtype = _checked_npy_header(fh, where, limits)
        return _to_array(_read_exact(fh, _nbytes(shape, dtype), where), shape, fortran, dtype)


def load_npz(path: str | os.PathLike[str], limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Read every array of an .npz (keys without '.npy'), streamed from the zip with size and CRC checks."""
    limits = limits or _limits.current()
    where = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    total = 0
    with open_input(where) as fh:
        zf, size = open_zip(fh, where, limits)
        with zf:
            infos = check_zip_structure(zf, fh, where, size, limits)
            for info in infos:
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise InputError(f"{where}: member {shown(info.filename)} is not a .npy array")
                key = info.filename[: -len(".npy")]
                member_where = f"{where}[{shown(key)}]"
                arrays[key] = _read_member(zf, info, member_where, limits, limits.max_bytes - total)
                total += arrays[key].nbytes
    return arrays


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, limits: Limits, budget: int
                 ) -> np.ndarray:
    try:
        with zf.open(info) as member:
            shape, fortran, dtype = read_npy_header(member, where, limits)  # type: ignore[arg-type]
            declared = _nbytes(shape, dtype)
            header_len = member.tell()
            if header_len + declared != info.file_size:
                raise InputError(f"{where}: header declares {fmt_bytes(declared)} of data but the member holds "
                                 f"{fmt_bytes(max(info.file_size - header_len, 0))}")
            if declared > budget:
                raise InputError(f"{where}: arrays add up to more than {fmt_bytes(limits.max_bytes)} (limit)",
                                 "raise the limit with --max-bytes if you trust it")
            data = _read_exact(member, declared, where)  # type: ignore[arg-type]
            if member.read(1):
                raise InputError(f"{where}: member holds more data than its header declares")
    except InputError:
        raise
    except zipfile.BadZipFile:
        raise InputError(f"{where}: damaged archive member (CRC mismatch or corrupt data)") from None
    except zlib.error:
        raise InputError(f"{where}: damaged archive member (corrupt compressed data)") from None
    except (EOFError, OSError, ValueError, NotImplementedError, RuntimeError):
        raise InputError(f"{where}: damaged archive member") from None
    return _to_array(data, shape, fortran, dtype)
