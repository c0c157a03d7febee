"""merge's streamed path (wtool.ops.merge_stream): float32 arithmetic against numpy float64, block edges,
dtypes, and that the CLI takes it for plainly stored weights (and h5py's way for the rest)."""

from __future__ import annotations

import math
import os
import zlib

import h5py
import numpy as np
import pytest
from conftest import SAMPLES, run_cli

from wtool.ops import merge as merge_ops
from wtool.ops import merge_stream as ms
from wtool.store import write as store_write


def _raw_files(tmp_path, arrays):
    """One bare HDF5 file per array (contiguous dataset "w"), as RawWeights."""
    raws = []
    for i, arr in enumerate(arrays):
        path = tmp_path / f"in{i}.h5"
        with h5py.File(path, "w") as h5:
            h5.create_dataset("w", data=arr)
        with h5py.File(path, "r") as h5:
            offset, nbytes = store_write.dataset_extent(h5["w"])
        raws.append(ms.RawWeight(path, offset, nbytes))
    return raws


def _run(tmp_path, arrays, mode, coeffs, base=None):
    raws = _raw_files(tmp_path, [*arrays, *([base] if base is not None else [])])
    ws = ms.Workspace()
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        merged = ms.StreamedMerge(arrays[0].shape, arrays[0].dtype, raws[:len(arrays)],
                                  raws[-1] if base is not None else None, mode, coeffs, ws)
        crc, first, last, distances = merged.write_to(fd, 0, store_write._pwrite_all)
    finally:
        os.close(fd)
        ws.close()
    data = out.read_bytes()
    got = np.frombuffer(data, arrays[0].dtype).reshape(arrays[0].shape)
    assert crc == zlib.crc32(data)
    np.testing.assert_array_equal(first, got[:1])
    np.testing.assert_array_equal(last, got[-1:])
    return got, distances


@pytest.mark.parametrize("n", [3, 12])  # in order (<= PLAIN_TERMS) and Kahan-compensated
@pytest.mark.parametrize("mode", ["mean", "weights"])
def test_float32_combination_within_the_stated_bound_of_float64(tmp_path, monkeypatch, n, mode):
    monkeypatch.setattr(ms, "BLOCK", 4096)  # small blocks, so a small weight has several
    rng = np.random.default_rng(n)
    shape = (4 * ms.BLOCK // 700 + 3, 700)  # not a multiple of the block: rows cross block edges
    arrays = [(rng.standard_normal(shape) * 10 ** rng.uniform(-3, 3)).astype(np.float32) for _ in range(n)]
    coeffs = [1.0] * n if mode == "mean" else list(rng.uniform(0.1, 2.0, n))
    got, distances = _run(tmp_path, arrays, mode, coeffs)
    k = np.array(coeffs) / sum(coeffs)
    xs = [a.astype(np.float64) for a in arrays]
    exact = sum(ki * x for ki, x in zip(k, xs, strict=True))
    scale = sum(abs(ki) * np.abs(x) for ki, x in zip(k, xs, strict=True))
    u = 2.0 ** -24
    bound = 5 * u * scale + np.spacing(np.abs(exact).astype(np.float32)) / 2  # + the final rounding
    assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)
    r = got.astype(np.float64)
    want = [np.linalg.norm(x - r) / np.linalg.norm(r) for x in xs]
    np.testing.assert_allclose(distances, want, rtol=1e-5)


def test_task_arithmetic_float64_and_float16(tmp_path, monkeypatch):
    monkeypatch.setattr(ms, "BLOCK", 4096)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 5))
    a, b = base + 0.1 * rng.standard_normal((2, 300, 5))
    got, _ = _run(tmp_path, [a, b], "task", [0.5, 2.0], base=base)
    np.testing.assert_allclose(got, base + 0.5 * (a - base) + 2 * (b - base), rtol=1e-13, atol=1e-13)
    h = [rng.standard_normal(70000).astype(np.float16) for _ in range(2)]  # float16 in, float32 arithmetic
    got, distances = _run(tmp_path, h, "mean", [1.0, 1.0])
    want = ((h[0].astype(np.float64) + h[1]) / 2).astype(np.float16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)
    r = got.astype(np.float64)
    np.testing.assert_allclose(distances, [np.linalg.norm(x - r) / np.linalg.norm(r) for x in h], rtol=1e-5)


def test_slerp_streamed(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, ms.BLOCK + 17)).astype(np.float32)
    got, _ = _run(tmp_path, [x, y], "slerp", [0.3])
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    omega = np.arccos(x64 @ y64 / np.linalg.norm(x64) / np.linalg.norm(y64))
    want = (np.sin(0.7 * omega) * x64 + np.sin(0.3 * omega) * y64) / np.sin(omega)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cli_streams_plain_weights_and_reads_chunked_ones_through_h5py(tmp_path, monkeypatch):
    """A .keras merge never builds a whole weight; a chunked dataset still merges (h5py, float64)."""
    src = SAMPLES / "mlp.weights.h5"
    chunked = tmp_path / "chunked.weights.h5"
    with h5py.File(src, "r") as h5, h5py.File(chunked, "w") as out:
        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                kwargs = {"chunks": True} if obj.ndim else {}
                out.create_dataset(name, data=np.asarray(obj[()]) * 2 if obj.dtype.kind == "f" else obj[()],
                                   **kwargs)
            else:
                out.require_group(name)
            for key, value in obj.attrs.items():
                out[name].attrs[key] = value
        h5.visititems(copy)
        for key, value in h5.attrs.items():
            out.attrs[key] = value
    calls = {"array": 0}
    real = merge_ops.LazyMerge.__array__

    def counted(self, *args, **kwargs):
        calls["array"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(merge_ops.LazyMerge, "__array__", counted)
    res = run_cli("merge", SAMPLES / "mlp.keras", SAMPLES / "mlp.keras", "-o", tmp_path / "s.keras", "-q")
    assert res.exit_code == 0, res
    assert calls["array"] == 0
    out = tmp_path / "c.weights.h5"
    res = run_cli("merge", src, chunked, "-o", out, "--json")
    assert res.exit_code == 0, res
    assert calls["array"] > 0
    checked = []
    with h5py.File(src, "r") as a, h5py.File(out, "r") as m:
        def check(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and name.startswith("layers/"):
                np.testing.assert_allclose(m[name][()], a[name][()] * 1.5, rtol=1e-6)
                checked.append(name)
        a.visititems(check)
    assert checked
    assert all(math.isfinite(d) for w in res.json()["weights"] for d in w["distances"])


def test_crc_backend_is_zlibs_crc32():
    from wtool.safety import crc

    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8)
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(memoryview(data)[7:], 12345) == zlib.crc32(memoryview(data)[7:], 12345)
