"""`wtool convert IN OUT`: values identical in every target, what is kept and dropped, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES, run_cli


def _weights(path, arch=None):
    from wtool.store import open_model

    with open_model(path, arch_config=arch) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


def _config(path):
    from wtool.store import open_model

    with open_model(path) as mf:
        return mf.config


@pytest.mark.parametrize(("target", "method", "dropped"), [
    ("c.keras", "copy", []),
    ("c.weights.h5", "extract", ["architecture", "training config", "trainable flags"]),
    ("c.safetensors", "export", ["architecture", "training config", "optimizer state", "trainable flags"]),
    ("c.npz", "export", ["architecture", "training config", "optimizer state", "trainable flags"]),
])
def test_convert_without_the_graph(tmp_path, target, method, dropped):
    src = SAMPLES / "nested.keras"
    out = tmp_path / target
    res = run_cli("convert", src, out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["method"] == method and doc["dropped"] == dropped and doc["verified"]
    want = _weights(src)
    if target.endswith(".npz"):
        got = dict(np.load(out))
    else:
        got = _weights(out, _config(src))
    assert list(got) == list(want)  # model order kept in every format
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
    if not target.endswith(".npz"):  # diff reads model files, not bare arrays
        assert run_cli("diff", src, out).exit_code == 0


def test_convert_keras_to_h5_through_keras(tmp_path):
    out = tmp_path / "c.h5"
    res = run_cli("convert", SAMPLES / "nested.keras", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["method"] == "keras" and doc["dropped"] == ["optimizer state"]
    assert "architecture" in doc["kept"] and "training config" in doc["kept"]
    assert run_cli("diff", SAMPLES / "nested.keras", out).exit_code == 0
    info = run_cli("inspect", out, "--json").json()
    assert info["format"] == "h5" and info["has_training_config"]


@pytest.mark.parametrize(("make", "target", "code", "message"), [
    ("nested.safetensors", "o.keras", 4, "no architecture"),
    ("nested.npz", "o.h5", 4, "no architecture"),
    ("nested.safetensors", "o.weights.json", 4, "no architecture"),
    (None, "o.txt", 2, "cannot tell the output format"),
    (None, "nested.keras", 2, "is the input file"),
])
def test_convert_refusals(tmp_path, make, target, code, message):
    src = SAMPLES / "nested.keras"
    if make:
        made = tmp_path / make
        assert run_cli("inspect", src, "--export", made).exit_code == 0
        src = made
    out = SAMPLES / target if target == "nested.keras" else tmp_path / target
    res = run_cli("convert", src, out)
    assert res.exit_code == code, res
    assert message in res.stderr and "Traceback" not in res.stderr
    assert out == SAMPLES / "nested.keras" or not out.exists()


def test_convert_hdf5_level_does_not_import_tensorflow(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom wtool.cli import cli\n"
            f"for o in ('a.weights.h5', 'a.safetensors', 'a.keras'):\n"
            f"    cli(['convert', {str(SAMPLES / 'mlp.keras')!r}, {str(tmp_path)!r} + '/' + o, '-q'],"
            " standalone_mode=False)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
