"""`.safetensors` files (and a sharded `model.safetensors.index.json`): read and write, no TensorFlow.

Read through the `safetensors` package's numpy API (`safe_open`, memory-mapped, sliced
per block); the header is untrusted input, so before the package sees it wtool checks
its declared size against the file and a cap, parses it with the safe JSON reader
(duplicate keys, depth, size) and checks every entry: known dtype, shape, offsets that
lie inside the data and neither overlap nor leave gaps. Any failure is an InputError
(exit 3). The listing (`inspect`) needs the header alone.

A tensor's key is its weight path: wtool writes keys as wtool paths (`hidden/kernel`);
a PyTorch checkpoint's keys (`encoder.0.weight`) are kept as they are, and the layer of
a key is what comes before its last `/` (or, with no `/`, its last `.`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from wtool.errors import InputError, UsageError
from wtool.fileio import atomic_output, check_input_file
from wtool.safety import guards as safety
from wtool.safety import limits
from wtool.store.chunks import DEFAULT_MAX_ELEMENTS, iter_blocks
from wtool.store.types import WeightInfo, WeightsOnlyFile, layers_from_paths

SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER_BYTES = 64 * limits.MiB  # the safetensors package's own cap is 100 MB
MAX_SHARDS = 10_000

# safetensors dtype codes -> numpy dtype names (bfloat16 and float8 through ml_dtypes).
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
          "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
          "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
CODES = {v: k for k, v in DTYPES.items()}


def is_safetensors_name(path: str | os.PathLike[str]) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(SUFFIX) or name.endswith(INDEX_SUFFIX)


def _np_dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes  # noqa: F401 - registers the dtypes with numpy

    return np.dtype(name)


def layer_of(key: str) -> tuple[str, str]:
    """(layer, variable) of a key: split at the last `/`, else at the last `.`."""
    for sep in ("/", "."):
        if sep in key:
            layer, _, var = key.rpartition(sep)
            if layer and var:
                return layer, var
    return key, key


# --------------------------------------------------------------------------- header


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """The tensor entries, the metadata and the data offset of one file, all checked (InputError)."""
    where = str(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(f"{where}: not a safetensors file (only {len(head)} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > size - 8:
            raise InputError(f"{where}: corrupt safetensors file: the header claims {n:,} bytes, "
                             f"the file has {max(size - 8, 0):,} after the size field",
                             "the file may be truncated or not a safetensors file")
        if n > MAX_HEADER_BYTES:
            raise InputError(f"{where}: refused: a safetensors header of {n:,} bytes (limit {MAX_HEADER_BYTES:,})")
        raw = fh.read(n)
    if not raw.lstrip().startswith(b"{"):
        raise InputError(f"{where}: corrupt safetensors file: the header is not a JSON object")
    from wtool.safety.safejson import parse_config_json

    doc = parse_config_json(raw.rstrip(b" "), where, what="the safetensors header")
    if not isinstance(doc, dict):
        raise InputError(f"{where}: corrupt safetensors file: the header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InputError(f"{where}: corrupt safetensors file: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    spans = []
    max_dims = limits.current().max_array_dims
    for key, entry in doc.items():
        what = f"{where}: corrupt safetensors header: tensor {key[:80]!r}"
        if not key or not isinstance(entry, dict):
            raise InputError(f"{what} is not an object with dtype, shape and data_offsets")
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if code not in DTYPES:
            raise InputError(f"{what} has an unsupported dtype {str(code)[:20]!r}",
                             f"wtool reads {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > max_dims or not all(
                type(d) is int and 0 <= d < (1 << 62) for d in shape):
            raise InputError(f"{what} has a bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise InputError(f"{what} has bad data_offsets")
        begin, end = offsets
        itemsize = np.dtype(_np_dtype(DTYPES[code])).itemsize
        count = 1
        for d in shape:
            count *= d
        if not 0 <= begin <= end <= data_len:
            raise InputError(f"{what}: data_offsets [{begin}, {end}] lie outside the {data_len:,} data bytes")
        if end - begin != count * itemsize:
            raise InputError(f"{what}: shape {tuple(shape)} of {code} needs {count * itemsize:,} bytes, "
                             f"its offsets span {end - begin:,}")
        spans.append((begin, end, key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            kind = "overlaps the tensor before it" if begin < pos else "leaves a gap before it"
            raise InputError(f"{where}: corrupt safetensors header: tensor {key[:80]!r} {kind}")
        pos = end
    if pos != data_len:
        raise InputError(f"{where}: corrupt safetensors file: the tensors cover {pos:,} of {data_len:,} data bytes")
    return doc, meta, 8 + n


# --------------------------------------------------------------------------- reading

ORDER_KEY = "wtool.order"  # metadata: the weight paths in model order, one a line (the package sorts keys)


def _ordered(entries: dict[str, dict[str, Any]], meta: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Entries in the order wtool wrote them when the metadata says so, else in file (offset) order."""
    order = meta.get(ORDER_KEY, "").split("\n") if meta.get(ORDER_KEY) else []
    if sorted(order) == sorted(entries):
        return [(k, entries[k]) for k in order]
    return sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0])


class SafetensorsFile(WeightsOnlyFile):
    """An opened .safetensors file or sharded index: the ModelFile interface, read-only."""

    format = "safetensors"
    layout = "safetensors"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []
        self.metadata: dict[str, str] = {}
        shards = self._shards(path)
        self.file_size = path.stat().st_size + sum(s.stat().st_size for s in shards if s != path)
        self._where: dict[str, Path] = {}
        self.weights: list[WeightInfo] = []
        for shard in shards:
            entries, meta, _ = read_header(shard)
            if shard == path:
                self.metadata = meta
            for key, entry in _ordered(entries, meta):
                if key in self._where:
                    raise InputError(f"{path}: tensor {key[:80]!r} is in two shards")
                self._where[key] = shard
                layer, var = layer_of(key)
                self.weights.append(WeightInfo(key, layer, var, tuple(entry["shape"]), DTYPES[entry["dtype"]], True,
                                               key))
        self.layers = layers_from_paths(self.weights)
        safety.check_total_bytes(sum(w.nbytes for w in self.weights), str(path))
        self._by_path = {w.path: w for w in self.weights}
        self._open: dict[Path, Any] = {}

    def _shards(self, path: Path) -> list[Path]:
        if not path.name.lower().endswith(INDEX_SUFFIX):
            return [path]
        from wtool.safety.safejson import parse_config_json

        data = path.read_bytes() if path.stat().st_size <= limits.current().max_config_bytes else b""
        if not data:
            raise InputError(f"{path}: a safetensors index larger than {limits.current().max_config_bytes:,} bytes")
        doc = parse_config_json(data, str(path), what="the safetensors index")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{path}: a safetensors index needs a non-empty weight_map object")
        names = list(dict.fromkeys(weight_map.values()))
        if len(names) > MAX_SHARDS:
            raise InputError(f"{path}: refused: {len(names):,} shards (limit {MAX_SHARDS:,})")
        shards = []
        for name in names:
            p = PurePosixPath(name) if isinstance(name, str) else None
            if p is None or len(p.parts) != 1 or name in (".", "..") or "\\" in name \
                    or not name.lower().endswith(SUFFIX):
                raise InputError(f"{path}: refused shard name {str(name)[:80]!r}: a shard must be a "
                                 ".safetensors file in the same folder")
            shard = path.parent / name
            check_input_file(shard)
            shards.append(shard)
        self.metadata = {k: str(v) for k, v in (doc.get("metadata") or {}).items()} \
            if isinstance(doc.get("metadata"), dict) else {}
        return shards

    # -- totals (as ModelFile) ------------------------------------------------------------

    @property
    def trainable_params(self) -> int:
        return self.total_params

    @property
    def non_trainable_params(self) -> int:
        return 0

    # -- weights ----------------------------------------------------------------------------

    def _handle(self, path: str) -> Any:
        shard = self._where[self.weight(path).path]
        handle = self._open.get(shard)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(shard), framework="numpy").__enter__()
            except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: untrusted bytes
                raise InputError(f"{shard}: cannot read the safetensors file ({str(exc)[:160]})") from None
            self._open[shard] = handle
        return handle

    def weight_source(self, path: str) -> tuple[Path, str, str]:
        """As ModelFile.weight_source: (file, format, key)."""
        return self.path, self.format, self.weight(path).h5_name

    def read(self, path: str) -> np.ndarray:
        return self.read_block(path, ())

    def read_block(self, path: str, index: tuple[object, ...]) -> np.ndarray:
        info = self.weight(path)
        handle = self._handle(path)
        if info.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            _np_dtype(info.dtype)
        try:
            if not index or not info.shape:
                value = np.asarray(handle.get_tensor(path))
                return value[index] if index else value  # type: ignore[index]
            return np.asarray(handle.get_slice(path)[index])
        except Exception as exc:  # noqa: BLE001 - the package's errors on damaged data
            raise InputError(f"{self.path}: cannot read tensor {path!r} ({str(exc)[:160]})") from None

    def iter_chunks(self, path: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[np.ndarray]:
        info = self.weight(path)
        for index in iter_blocks(info.shape, max_elements):
            yield self.read_block(path, index)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        for handle in self._open.values():
            try:
                handle.__exit__(None, None, None)
            except Exception:  # noqa: BLE001,S110 - closing a read-only map
                pass
        self._open.clear()

    def __repr__(self) -> str:
        return f"<SafetensorsFile {self.path} weights={len(self.weights)}>"


def open_safetensors(path: str | os.PathLike[str]) -> SafetensorsFile:
    return SafetensorsFile(check_input_file(path))


# --------------------------------------------------------------------------- writing


def write_safetensors(out: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write `arrays` (key -> array, in order) to OUT.safetensors atomically; returns the file size.

    Dtypes are kept (bfloat16 included); a dtype safetensors cannot hold is a UsageError.
    """
    target = Path(out)
    if not target.name.lower().endswith(SUFFIX):
        raise UsageError(f"{out}: a safetensors output must end in {SUFFIX}")
    tensors: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype.name not in CODES:
            raise UsageError(f"{key}: dtype {arr.dtype} cannot be stored in a safetensors file")
        tensors[key] = arr
    meta = dict(metadata or {})
    if not any("\n" in k for k in tensors):
        meta[ORDER_KEY] = "\n".join(tensors)
    from safetensors.numpy import save_file

    with atomic_output(target) as tmp:
        save_file(tensors, str(tmp), metadata=meta or None)
    return target.stat().st_size
