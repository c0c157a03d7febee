"""safetensors in and out: inspect / diff / --export, sharded index, untrusted headers (exit 3 only)."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
from conftest import SAMPLES, run_cli


def _save(path, tensors, metadata=None):
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    return path


def _weights(path):
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "nested.safetensors"
    res = run_cli("inspect", SAMPLES / "nested.keras", "--export", out)
    assert res.exit_code == 0, res
    return out


def test_export_round_trip_values_and_order(exported):
    from safetensors.numpy import load_file

    want = _weights(SAMPLES / "nested.keras")
    got = load_file(str(exported))  # read by the package itself, keyed by wtool paths
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
    res = run_cli("inspect", exported, "--weights", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["format"] == "safetensors"
    assert [w["path"] for w in doc["weights"]] == list(want)  # model order kept, not the package's sorted order
    assert doc["total_params"] == sum(v.size for v in want.values())
    assert [layer["path"] for layer in doc["layers"]][:2] == ["features", "features/d1"]


def test_diff_keras_against_its_safetensors_export(exported, tmp_path):
    assert run_cli("diff", SAMPLES / "nested.keras", exported).exit_code == 0
    changed = _weights(exported)
    changed["features/d1/kernel"] = changed["features/d1/kernel"] + 1
    other = _save(tmp_path / "c.safetensors", changed)
    res = run_cli("diff", SAMPLES / "nested.keras", other, "--json")
    assert res.exit_code == 1
    rows = {w["path"]: w for w in res.json()["weights"]}
    assert rows["features/d1/kernel"]["status"] == "changed"
    assert rows["features/d1/kernel"]["max_abs_diff"] == pytest.approx(1.0)


def test_bfloat16_kept_and_export_to_npz(tmp_path):
    import ml_dtypes

    a = (np.arange(12, dtype=np.float32).reshape(3, 4) / 8).astype(ml_dtypes.bfloat16)
    src = _save(tmp_path / "b.safetensors", {"emb/embeddings": a, "dense/bias": np.ones(4, np.float16)})
    res = run_cli("inspect", src, "--weights", "--json")
    assert res.exit_code == 0, res
    assert {w["path"]: w["dtype"] for w in res.json()["weights"]} == {"emb/embeddings": "bfloat16",
                                                                       "dense/bias": "float16"}
    again = tmp_path / "again.safetensors"
    assert run_cli("inspect", src, "--export", again).exit_code == 0
    from safetensors import safe_open

    with safe_open(str(again), framework="numpy") as f:
        assert f.get_slice("emb/embeddings").get_dtype() == "BF16"
        np.testing.assert_array_equal(f.get_tensor("emb/embeddings").astype(np.float32), a.astype(np.float32))
    npz = tmp_path / "x.npz"
    assert run_cli("inspect", src, "--layer", "dense/*", "--export", npz).exit_code == 0
    np.testing.assert_array_equal(np.load(npz)["dense/bias"], np.ones(4, np.float16))
    res = run_cli("inspect", src, "--export", tmp_path / "bf.npz")  # numpy has no bfloat16: float32, exact
    assert res.exit_code == 0 and "1 bfloat16 weight(s) written to the .npz as float32" in res.stderr, res
    with np.load(tmp_path / "bf.npz") as bf:
        assert bf["emb/embeddings"].dtype == np.float32
        np.testing.assert_array_equal(bf["emb/embeddings"], a.astype(np.float32))
    stats = {w["path"]: w["stats"] for w in run_cli("inspect", src, "--stats", "--json").json()["weights"]}
    want = a.astype(np.float64)
    assert stats["emb/embeddings"]["max"] == want.max() and stats["emb/embeddings"]["mean"] == pytest.approx(
        want.mean())


def test_torch_style_keys_and_sharded_index(tmp_path):
    rng = np.random.default_rng(0)
    t = {"model.encoder.0.weight": rng.standard_normal((8, 4)).astype(np.float32),
         "model.encoder.0.bias": rng.standard_normal(8).astype(np.float32),
         "model.head.weight": rng.standard_normal((2, 8)).astype(np.float32)}
    _save(tmp_path / "m-00001-of-00002.safetensors", {k: t[k] for k in list(t)[:2]})
    _save(tmp_path / "m-00002-of-00002.safetensors", {k: t[k] for k in list(t)[2:]})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": {
        k: f"m-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, k in enumerate(t)}}))
    res = run_cli("inspect", index, "--weights", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert {w["path"]: w["layer"] for w in doc["weights"]} == {
        "model.encoder.0.weight": "model.encoder.0", "model.encoder.0.bias": "model.encoder.0",
        "model.head.weight": "model.head"}
    got = _weights(index)
    for k, v in t.items():
        np.testing.assert_array_equal(got[k], v)
    # a shard outside the folder is refused before anything is opened
    index.write_text(json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    res = run_cli("inspect", index)
    assert res.exit_code == 3 and "shard" in res.stderr and "Traceback" not in res.stderr


def _header_file(path, header: bytes, data: bytes = b"", size: int | None = None):
    n = len(header) if size is None else size
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


BAD_HEADERS = [
    ("size_bomb", None, 1 << 60, "header claims"),
    ("past_end", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 10_000, "header claims"),
    ("not_json", b"{not json}", None, "not valid JSON"),
    ("not_object", b"[1, 2, 3]", None, "not a JSON object"),
    ("bad_dtype", b'{"a":{"dtype":"Q99","shape":[1],"data_offsets":[0,4]}}', None, "unsupported dtype"),
    ("bad_shape", b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', None, "bad shape"),
    ("size_mismatch", b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', None, "needs 8 bytes"),
    ("outside", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', None, "outside"),
    ("overlap", (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                b'"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'), None, "overlaps"),
    ("duplicate", (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                  b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'), None, "duplicate key"),
    ("metadata", b'{"__metadata__":{"a":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', None,
     "__metadata__"),
]


@pytest.mark.parametrize(("name", "header", "size", "message"), BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_untrusted_headers_exit_3(tmp_path, name, header, size, message):
    f = _header_file(tmp_path / f"{name}.safetensors", header or b"{}", b"\0" * 4, size)
    for args in (["inspect", f], ["diff", f, f], ["inspect", f, "--export", tmp_path / "o.npz"]):
        res = run_cli(*args)
        assert res.exit_code == 3, (args, res)
        assert message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.npz").exists()


def test_fuzzed_headers_give_exit_3_only(tmp_path):
    """Random byte flips, truncations and splices of a real file: exit 0 (still valid) or 3, nothing else."""
    good = _save(tmp_path / "good.safetensors", {"d/kernel": np.ones((3, 2), np.float32),
                                                 "d/bias": np.zeros(2, np.float16)})
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(16)
    codes = []
    for i in range(150):
        data = bytearray(raw)
        kind = i % 5
        if kind == 0:  # flip bytes in the header
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(8, 8 + n)] = rng.randrange(256)
        elif kind == 1:  # damage the size field
            data[rng.randrange(0, 8)] = rng.randrange(256)
        elif kind == 2:  # truncate
            data = data[: rng.randrange(0, len(data))]
        elif kind == 3:  # change a digit of the offsets or the shape
            text = data[8 : 8 + n].decode("latin-1")
            digits = [j for j, c in enumerate(text) if c.isdigit()]
            j = rng.choice(digits)
            data[8 + j] = ord(str(rng.randrange(10)))
        else:  # splice random bytes
            at = rng.randrange(0, len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        f = tmp_path / f"f{i}.safetensors"
        f.write_bytes(bytes(data))
        res = run_cli("inspect", f, "--stats")
        assert res.exit_code in (0, 3), (i, res)
        assert "Traceback" not in res.stderr
        if res.exit_code == 3:
            assert res.stderr.startswith("error: ")
        codes.append(res.exit_code)
    assert codes.count(3) > 100  # most mutations break the file, and each is caught as unreadable input


def test_export_safetensors_is_atomic_and_checked(tmp_path):
    bad = tmp_path / "o.safetensorz"
    res = run_cli("inspect", SAMPLES / "mlp.keras", "--export", bad)
    assert res.exit_code == 2 and not bad.exists()
    assert ".safetensors" in res.stderr


def test_inspect_safetensors_does_not_import_tensorflow(exported):
    import subprocess
    import sys

    code = ("import sys\nfrom wtool.cli import cli\n"
            f"cli(['inspect', {str(exported)!r}, '--stats', '-q'], standalone_mode=False)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules and 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)



@pytest.mark.tf
def test_infer_argmax_on_a_safetensors_file_with_arch(tmp_path):
    """A weights-only MODEL saves no class names: --argmax looks at --arch, and gives what the .keras file gives
    (was an internal error: no attribute class_names)."""
    weights = tmp_path / "mlp.safetensors"
    assert run_cli("inspect", SAMPLES / "mlp.keras", "--export", weights).exit_code == 0
    got = run_cli("infer", weights, SAMPLES / "mlp.npz", "--arch", SAMPLES / "mlp.keras", "--argmax", "-q")
    want = run_cli("infer", SAMPLES / "mlp.keras", SAMPLES / "mlp.npz", "--argmax", "-q")
    assert got.exit_code == 0 and want.exit_code == 0, (got, want)
    rows = int(np.load(SAMPLES / "mlp.npz")["x"].shape[0])
    assert got.stdout == want.stdout and len(got.stdout.split()) == rows


@pytest.mark.tf
def test_train_a_safetensors_file_with_arch_equals_training_the_keras_file(tmp_path):
    """train WEIGHTS --arch M: the graph and compile config from M, the start from WEIGHTS (no optimizer state in
    a weights-only file), the same run as training M itself (was exit 3: 'cannot read the saved training state')."""
    weights = tmp_path / "mlp.safetensors"
    assert run_cli("inspect", SAMPLES / "mlp.keras", "--export", weights).exit_code == 0
    common = ["--data", SAMPLES / "mlp.npz", "--epochs", "1", "--seed", "1", "--json"]
    got = run_cli("train", weights, "--arch", SAMPLES / "mlp.keras", *common, "-o", tmp_path / "a.keras")
    want = run_cli("train", SAMPLES / "mlp.keras", "--reset-optimizer", *common, "-o", tmp_path / "b.keras")
    assert got.exit_code == 0 and want.exit_code == 0, (got, want)
    drop_time = [[{k: v for k, v in row.items() if k != "seconds"} for row in res.json()["history"]] for res in (got, want)]
    assert drop_time[0] == drop_time[1]
    assert run_cli("diff", tmp_path / "a.keras", tmp_path / "b.keras").exit_code == 0
