"""`inspect --hash` (one fingerprint for one model in every format) and `diff --summary` (per-layer change)."""

from __future__ import annotations

import hashlib

import numpy as np
from conftest import SAMPLES, run_cli


def _hash(path):
    res = run_cli("inspect", path, "--hash", "--json")
    assert res.exit_code == 0, res
    return res.json()["hash"]


def _weights(path):
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


def test_hash_is_the_same_in_every_format_and_changes_with_the_values(tmp_path):
    st = tmp_path / "n.safetensors"
    assert run_cli("inspect", SAMPLES / "nested.keras", "--export", st).exit_code == 0
    hashes = [_hash(p) for p in (SAMPLES / "nested.keras", SAMPLES / "nested.h5", SAMPLES / "nested.weights.h5", st)]
    assert len({h["content"] for h in hashes}) == 1 and len({h["structure"] for h in hashes}) == 1
    # per weight: sha256 of dtype + shape + the little-endian bytes, recomputed here with numpy
    w = _weights(SAMPLES / "nested.keras")["features/d1/kernel"]
    want = hashlib.sha256(f"float32{list(w.shape)}".encode() + w.astype("<f4").tobytes()).hexdigest()
    assert hashes[0]["weights"]["features/d1/kernel"] == want
    edited = tmp_path / "e.keras"
    assert run_cli("set-weights", SAMPLES / "nested.keras", "--init", "classifier/bias=ones", "-o", edited).exit_code == 0
    h = _hash(edited)
    assert h["structure"] == hashes[0]["structure"] and h["content"] != hashes[0]["content"]
    assert [p for p in h["weights"] if h["weights"][p] != hashes[0]["weights"][p]] == ["classifier/bias"]
    assert _hash(SAMPLES / "mlp.keras")["structure"] != hashes[0]["structure"]
    text = run_cli("inspect", SAMPLES / "nested.h5", "--hash").stdout
    assert f"content   sha256:{hashes[0]['content']}" in text


def test_diff_summary_per_layer_against_numpy(tmp_path):
    out = tmp_path / "e.keras"
    res = run_cli("set-weights", SAMPLES / "nested.keras", "--init", "features/d1/kernel=glorot_uniform",
                  "--seed", 4, "-o", out)
    assert res.exit_code == 0, res
    res = run_cli("diff", SAMPLES / "nested.keras", out, "--summary", "--json")
    assert res.exit_code == 1
    layers = {c["layer"]: c for c in res.json()["layers"]}
    a, b = _weights(SAMPLES / "nested.keras"), _weights(out)
    num = sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in ("features/d1/kernel", "features/d1/bias"))
    den = sum(np.sum(a[k].astype(np.float64) ** 2) for k in ("features/d1/kernel", "features/d1/bias"))
    assert np.isclose(layers["features/d1"]["rel_change"], np.sqrt(num / den), rtol=1e-9, atol=0)
    assert layers["features/d1"]["changed"] == 1 and layers["features/d1"]["weights"] == 2
    assert layers["classifier"] == {"layer": "classifier", "weights": 2, "changed": 0, "status": "same",
                                    "rel_change": 0.0}
    text = run_cli("diff", SAMPLES / "nested.keras", out, "--summary").stdout
    assert "features/d1" in text and "kernel" not in text  # layers only, no weight rows
