"""Every real-world file in ../shared/corpus: inspect, --weights --stats and --export, through the CLI.

Paths must be clean (no `:0`, no raw HDF5 group names); exported values must equal what
Keras 3's own `load_model` gives, by canonical path, wherever Keras 3 loads the file.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import CORPUS, corpus_files, run_cli

FILES = corpus_files()
# Files that are genuinely broken: (CLI step that fails, exit code, fragment of the one-line error).
BROKEN = {
    "dshvadskiy__keras-present/imdb_model.h5": ("export", 3, "are missing from the file"),
}
RAW = re.compile(r":\d+$|(^|/)(model_weights|layers|vars|_layer_checkpoint_dependencies|cell)/|\\\\")


def rel(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def manifest() -> dict[str, dict[str, str]]:
    with open(CORPUS / "MANIFEST.tsv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


pytestmark = pytest.mark.skipif(not FILES, reason="no corpus next to the repository")


def test_corpus_is_what_the_manifest_lists():
    assert sorted(manifest()) == sorted(rel(p) for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_inspect_weights_stats_export(path, tmp_path):
    res = run_cli("inspect", path)
    assert res.exit_code == 0, res
    assert "total" in res.stdout

    res = run_cli("inspect", path, "--weights", "--stats", "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    row = manifest()[rel(path)]
    assert len(doc["weights"]) == int(row["n_weight_arrays"])
    for w in doc["weights"]:
        assert not RAW.search(w["path"]), w["path"]
        assert w["path"] == f"{w['layer']}/{w['name']}"
        assert w["stats"] is not None and w["stats"]["count"] == w["params"]
    assert len({w["path"] for w in doc["weights"]}) == len(doc["weights"])
    if row["keras_version"]:
        assert doc["keras_version"] == row["keras_version"]

    out = tmp_path / "weights.npz"
    res = run_cli("inspect", path, "--export", out)
    broken = BROKEN.get(rel(path))
    if broken:
        _, code, fragment = broken
        assert res.exit_code == code, res
        lines = res.stderr.splitlines()
        assert fragment in lines[0] and len(lines) <= 2 and not out.exists()
        return
    assert res.exit_code == 0, res
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(w["path"] for w in doc["weights"])


def _keras_load(path: Path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception:  # noqa: BLE001 - most corpus files do not load in Keras 3; the manifest says why
        return None


LOADABLE = [p for p in FILES if manifest()[rel(p)]["loads_in_keras3"] == "yes"] if FILES else []


@pytest.mark.tf
@pytest.mark.parametrize("path", LOADABLE, ids=rel)
def test_export_equals_keras_own_loading(path, tmp_path):
    from wtool.store.model_paths import weight_paths

    model = _keras_load(path)
    assert model is not None, f"Keras 3 no longer loads {rel(path)}"
    out = tmp_path / "w.npz"
    assert run_cli("inspect", path, "--export", out).exit_code == 0
    live = dict(weight_paths(model))
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(live)
        for p, var in live.items():
            assert np.array_equal(npz[p], np.asarray(var.numpy())), p


def test_non_ascii_file_name_is_shown_as_is():
    (path,) = [p for p in FILES if "模型" in p.name]
    res = run_cli("inspect", path, "--json")
    assert res.exit_code == 0 and res.json()["file"].endswith("模型_DNN_new.h5")


def test_hdf5_content_under_a_keras_name():
    (path,) = [p for p in FILES if rel(p).endswith("hostpipe_parallel__keras_model.keras")]
    doc = run_cli("inspect", path, "--json").json()
    assert doc["format"] == "h5" and [w["path"] for w in doc["weights"]][:3] == [
        "conv1d/kernel", "conv1d/bias", "gru/kernel"]


def test_quirky_names_become_clean_paths():
    def paths(fragment: str) -> list[str]:
        (path,) = [p for p in FILES if fragment in rel(p)]
        return [w["path"] for w in run_cli("inspect", path, "--json").json()["weights"]]

    assert paths("squeezenet")[:4] == ["conv1/kernel", "conv1/bias", "fire2/squeeze1x1/kernel",
                                       "fire2/squeeze1x1/bias"]  # opaque Keras 1 names, slashes in layer names
    assert paths("car-behavioral")[:2] == ["convolution2d_1/kernel", "convolution2d_1/bias"]  # dense_1_W
    assert paths("gan-hm")[0] == "model_1/dense_1/kernel"  # nested model, names without the model prefix
    assert paths("CineSense")[0] == "embedding_1/embeddings"  # Keras 3 .h5: sequential_1/embedding_1/embeddings
    assert "bidirectional_1/forward_lstm_4/kernel" in paths("frugally-deep")
    assert paths("Visual-Search")[0].startswith("dec/")  # tf.keras 2.14 zip, backslash-joined groups
    assert "time_distributed/kernel" in paths("grumodel")
    assert paths("keras_tutorial/model_weights")[0] == "dense_21/kernel"  # scope suffix dense_21_3


def test_diff_reads_the_corpus_too(tmp_path):
    (path,) = [p for p in FILES if "gan-hm" in rel(p)]
    with h5py.File(path) as f:
        datasets: list[str] = []
        f["model_weights"].visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
    res = run_cli("diff", path, path, "--json")
    assert res.exit_code == 0, res
    assert res.json()["summary"] == {"same": len(datasets), "changed": 0, "dtype": 0, "only_a": 0, "only_b": 0,
                                      "shape": 0}
    # one value of one weight moved by 1.0: only that weight is reported, with that difference
    edited = tmp_path / "gan.h5"
    shutil.copy(path, edited)
    (bias,) = [n for n in datasets if n.endswith("conv2d_1/bias:0")]
    with h5py.File(edited, "r+") as f:
        f["model_weights"][bias][0] += 1.0
    res = run_cli("diff", path, edited, "--json")
    assert res.exit_code == 1, res
    changed = [w for w in res.json()["weights"] if w["status"] != "same"]
    assert [(w["path"], w["status"], w["mismatched"]) for w in changed] == [("model_1/conv2d_1/bias", "changed", 1)]
    assert changed[0]["max_abs_diff"] == pytest.approx(1.0, rel=1e-6)
