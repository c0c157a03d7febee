"""Unzipped .keras folders (Keras's `model.save(path, zipped=False)`): read like the zip, written from as a zip."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.tf  # builds models with Keras / runs graph commands


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import keras

    from wtool.store.model_paths import variables_by_path

    d = tmp_path_factory.mktemp("folder")
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="d1", bias_initializer="random_normal"),
                              keras.layers.Dense(3, name="d2")], name="net")
    model.save(d / "m.keras")
    model.save(d / "mdir", zipped=False)
    assert {"config.json", "model.weights.h5"} <= {p.name for p in (d / "mdir").iterdir()}
    return {"dir": d, "keras": {p: np.asarray(v.numpy()) for p, v in variables_by_path(model).items()}}


def _keras_values(path):
    import keras

    from wtool.store.model_paths import variables_by_path

    return {p: np.asarray(v.numpy()) for p, v in variables_by_path(keras.models.load_model(path)).items()}


def test_a_folder_reads_like_the_zip(made, tmp_path):
    d = made["dir"]
    folder = run_cli("inspect", d / "mdir", "--weights", "--json")
    zipped = run_cli("inspect", d / "m.keras", "--weights", "--json")
    assert folder.exit_code == 0, folder
    got, want = folder.json(), zipped.json()
    assert got["format"] == "keras-folder" and got["keras_version"] == want["keras_version"]
    assert got["weights"] == want["weights"] and got["model"] == want["model"]
    assert run_cli("diff", d / "mdir", d / "m.keras").exit_code == 0
    assert run_cli("inspect", d / "mdir", "--export", tmp_path / "w.npz").exit_code == 0
    with np.load(tmp_path / "w.npz") as z:
        for path, value in made["keras"].items():
            np.testing.assert_array_equal(z[path], value, err_msg=path)


def test_written_from_a_folder_keras_loads_it(made, tmp_path):
    d = made["dir"]
    out, conv, moved = tmp_path / "e.keras", tmp_path / "c.keras", tmp_path / "t.keras"
    assert run_cli("set-weights", d / "mdir", "--init", "d2/bias=ones", "-o", out).exit_code == 0
    assert run_cli("convert", d / "mdir", conv).exit_code == 0
    assert run_cli("transfer", d / "mdir", out, "-o", moved).exit_code == 0
    edited, converted, back = _keras_values(out), _keras_values(conv), _keras_values(moved)
    for path, value in made["keras"].items():
        np.testing.assert_array_equal(edited[path], np.ones_like(value) if path == "d2/bias" else value)
        np.testing.assert_array_equal(converted[path], value)
        np.testing.assert_array_equal(back[path], value)


def test_graph_commands_name_the_folder_and_the_way_out(made, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 6), "float32"))
    res = run_cli("infer", made["dir"] / "mdir", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert res.exit_code == 4 and "graph commands take a .keras file" in res.stderr and "wtool convert" in res.stderr
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("case", ["symlink_weights", "symlink_extra", "no_weights"])
def test_bad_folders_exit_3_with_one_line(made, tmp_path, case):
    folder = tmp_path / "bad"
    shutil.copytree(made["dir"] / "mdir", folder)
    if case == "symlink_weights":
        (folder / "model.weights.h5").unlink()
        os.symlink(made["dir"] / "mdir" / "model.weights.h5", folder / "model.weights.h5")
        message = "model.weights.h5 is a symbolic link"
    elif case == "symlink_extra":
        os.symlink("/etc/passwd", folder / "notes.txt")
        message = "notes.txt is a symbolic link"
    else:
        (folder / "model.weights.h5").unlink()
        message = "a model folder without model.weights.h5"
    for args in (("inspect", folder), ("diff", folder, made["dir"] / "m.keras"),
                 ("set-weights", folder, "--init", "d2/bias=ones", "-o", tmp_path / "o.keras")):
        res = run_cli(*args)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.exit_code == 3 and len(errors) == 1 and message in errors[0], (case, args, res)
    assert not (tmp_path / "o.keras").exists()


def test_checkpoints_are_named_not_misread(made, tmp_path):
    """A TensorFlow checkpoint reads as weights (tests/test_tf_checkpoint.py); an Orbax folder is named, exit 3."""
    import tensorflow as tf

    prefix = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).save(str(tmp_path / "tf" / "ckpt"))  # ckpt-1
    for path in (prefix, prefix + ".index", tmp_path / "tf"):
        res = run_cli("inspect", path, "--weights", "--json")
        assert res.exit_code == 0, res
        assert [w["path"] for w in res.json()["weights"]] == ["v"]  # save_counter is the Checkpoint's, not listed
        assert run_cli("diff", path, made["dir"] / "m.keras").exit_code == 1
    orbax = tmp_path / "orbax"
    (orbax / "3").mkdir(parents=True)
    (orbax / "3" / "_CHECKPOINT_METADATA").write_text("{}")
    for args in (("inspect", orbax), ("diff", orbax, made["dir"] / "m.keras")):
        res = run_cli(*args)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.exit_code == 3 and len(errors) == 1 and "an Orbax checkpoint folder" in errors[0], (args, res)


def test_a_keras_hub_preset_folder_shows_its_metadata(made, tmp_path):
    import json

    preset = tmp_path / "preset"  # built by hand: keras-hub is not installed for the tests
    shutil.copytree(made["dir"] / "mdir", preset)
    meta = json.loads((preset / "metadata.json").read_text())
    meta.update(keras_hub_version="0.22.0", parameter_count=99)
    (preset / "metadata.json").write_text(json.dumps(meta))
    shutil.copy(preset / "model.weights.h5", preset / "task.weights.h5")
    res = run_cli("inspect", preset, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["keras_hub"] == {"keras_hub_version": "0.22.0", "parameter_count": 99, "task_weights": True,
                                "task_class": None, "sharded": False,
                                "task_parameters": sum(v.size for v in made["keras"].values())}
    assert doc["total_params"] == 2 * sum(v.size for v in made["keras"].values())  # task.weights.h5 is read too
    assert not any("task.weights.h5" in w for w in doc["warnings"])
    paths = [w["path"] for w in doc["weights"]]
    assert paths[len(paths) // 2:] == [f"task/{p}" for p in paths[:len(paths) // 2]]
    text = run_cli("inspect", preset)
    assert "keras-hub preset (keras-hub 0.22.0, 99 parameters declared)" in text.stdout
