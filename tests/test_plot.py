"""`train --plot`: a valid picture of the documented size with every logged curve; a clear exit without matplotlib."""

from __future__ import annotations

import struct
import sys

import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.tf


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_train_plot_writes_the_curves_png(wtool, tmp_path):
    import matplotlib.image

    from wtool.cli.plot import DPI, FIG_INCHES

    target = tmp_path / "curves.png"
    res = wtool("train", SAMPLES / "xor.keras", "--data", SAMPLES / "xor.npz", "--val-data", SAMPLES / "xor.npz",
                "-o", tmp_path / "x.keras", "--epochs", "3", "--seed", "0", "--metric", "mae", "--plot", target,
                "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["plot"] == str(target)
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(doc["history"][0])
    assert png_size(target) == (int(FIG_INCHES[0] * DPI), int(FIG_INCHES[1] * DPI))
    pixels = matplotlib.image.imread(target)
    assert pixels.shape[:2] == (600, 800) and pixels.std() > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_train_plot_without_matplotlib_stops_before_training(wtool, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = wtool("train", SAMPLES / "xor.keras", "--data", SAMPLES / "xor.npz", "-o", tmp_path / "x.keras",
                "--plot", tmp_path / "c.png")
    assert res.exit_code == 2, res
    assert res.stderr.splitlines()[0] == "error: --plot needs matplotlib, which is not installed"
    assert "pip install 'wtool[plot]'" in res.stderr
    assert list(tmp_path.iterdir()) == []
