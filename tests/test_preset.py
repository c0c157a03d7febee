"""keras-hub preset directories read without keras-hub: backbone (single or sharded) and task weights.

The folders are built by hand in keras-hub's layout (keras_hub/src/utils/preset_utils.py): config.json
and task.json are `serialize_keras_object` without compile/build configs, metadata.json carries
`keras_hub_version` and `parameter_count`, model.weights.h5 is the backbone's `save_weights`, and
task.weights.h5 is `keras.saving.save_weights(task, objects_to_skip=backbone layers)`, as
`Task.save_task_weights` writes it. Values are checked against what Keras itself loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_no_tf_import import _probe

pytestmark = pytest.mark.tf  # builds the presets with Keras


def _pop(config, key):
    if isinstance(config, dict):
        config.pop(key, None)
        for value in config.values():
            _pop(value, key)
    elif isinstance(config, list):
        for value in config:
            _pop(value, key)


def _write_json(path: Path, obj) -> None:
    for key in ("compile_config", "build_config"):  # what keras-hub's _save_serialized_object drops
        _pop(obj, key)
    path.write_text(json.dumps(obj, indent=4))


def _build(keras):
    inputs = keras.Input((6,), name="features")
    x = keras.layers.Dense(8, activation="relu", name="encoder")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    backbone = keras.Model(inputs, x, name="tiny_backbone")
    task_in = keras.Input((6,), name="features")
    logits = keras.layers.Dense(3, name="logits")(keras.layers.Dropout(0.1, name="head_dropout")(backbone(task_in)))
    return backbone, keras.Model(task_in, logits, name="tiny_classifier")


def _save_preset(keras, folder: Path, backbone, task, *, sharded: bool) -> None:
    folder.mkdir()
    _write_json(folder / "config.json", keras.saving.serialize_keras_object(backbone))
    _write_json(folder / "task.json", keras.saving.serialize_keras_object(task))
    (folder / "metadata.json").write_text(json.dumps({
        "keras_version": keras.version(), "keras_hub_version": "0.32.0", "parameter_count": backbone.count_params(),
        "date_saved": "2026-12-03@12:00:00", "tasks": ["TextClassifier"]}, indent=4))
    if sharded:
        backbone.save_weights(folder / "model.weights.json", max_shard_size=0.0000002)  # ~200 bytes: several shards
    else:
        backbone.save_weights(folder / "model.weights.h5")
    keras.saving.save_weights(task, folder / "task.weights.h5", objects_to_skip=list(backbone._flatten_layers()))


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, Path]:
    import keras

    out = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(5)
    backbone, task = _build(keras)
    rng = np.random.default_rng(1)
    for var in task.weights:  # no zeros or ones: every value tells
        var.assign(rng.normal(size=var.shape).astype("float32"))
    _save_preset(keras, out / "preset", backbone, task, sharded=False)
    _save_preset(keras, out / "sharded", backbone, task, sharded=True)
    task.get_layer("logits").bias.assign(task.get_layer("logits").bias.numpy() + 1.0)
    _save_preset(keras, out / "edited", backbone, task, sharded=False)
    return {"preset": out / "preset", "sharded": out / "sharded", "edited": out / "edited"}


def _keras_reference(folder: Path) -> dict[str, np.ndarray]:
    """The values Keras loads: the backbone from its weights file, the head as keras-hub's load_task_weights."""
    import keras

    backbone, task = _build(keras)
    weights = folder / "model.weights.h5"
    backbone.load_weights(weights if weights.exists() else folder / "model.weights.json")
    enc, norm, logits = backbone.get_layer("encoder"), backbone.get_layer("norm"), task.get_layer("logits")
    values = {"encoder/kernel": enc.kernel.numpy(), "encoder/bias": enc.bias.numpy(),
              "norm/gamma": norm.gamma.numpy(), "norm/beta": norm.beta.numpy()}
    if not (folder / "task.weights.h5").exists():  # a backbone-only preset
        return values
    keras.saving.load_weights(task, folder / "task.weights.h5", objects_to_skip=list(backbone._flatten_layers()))
    return {**values, "task/logits/kernel": logits.kernel.numpy(), "task/logits/bias": logits.bias.numpy()}


@pytest.mark.parametrize("name", ["preset", "sharded"])
def test_backbone_and_task_weights_are_read_as_keras_loads_them(wtool, presets, tmp_path, name):
    folder = presets[name]
    res = wtool("inspect", folder, "--json", "--weights")
    assert res.exit_code == 0, res
    doc = res.json()
    assert [w["path"] for w in doc["weights"]] == ["encoder/kernel", "encoder/bias", "norm/gamma", "norm/beta",
                                                   "task/logits/kernel", "task/logits/bias"]
    assert doc["keras_hub"] == {"keras_hub_version": "0.32.0", "parameter_count": 6 * 8 + 8 + 16,
                                "task_weights": True, "task_class": "Functional", "sharded": name == "sharded",
                                "task_parameters": 8 * 3 + 3}
    assert doc["total_params"] == 72 + 27 and not any("task.weights.h5" in w for w in doc["warnings"])
    assert bool(doc.get("shards")) == (name == "sharded")
    layers = {layer["path"]: layer for layer in doc["layers"]}
    assert layers["task/logits"]["class"] == "Dense" and layers["task"]["params"] == 27
    text = wtool("inspect", folder).stdout
    assert "keras-hub preset (keras-hub 0.32.0, 72 parameters declared); task Functional: 27 parameters" in text

    out = tmp_path / "w.npz"
    assert wtool("inspect", folder, "--export", out).exit_code == 0
    exported = dict(np.load(out))
    reference = _keras_reference(folder)
    assert exported.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_diff_of_presets_sees_backbone_and_task(wtool, presets):
    res = wtool("diff", presets["preset"], presets["sharded"], "--json")
    assert res.exit_code == 0, res  # the same model, one backbone sharded: equal, task included
    assert res.json()["summary"]["same"] == 6
    res = wtool("diff", presets["preset"], presets["edited"], "--json")
    assert res.exit_code == 1, res
    changed = [row["path"] for row in res.json()["weights"] if row["status"] == "changed"]
    assert changed == ["task/logits/bias"]


def test_inspect_of_a_preset_imports_neither_tensorflow_nor_keras(presets, tmp_path):
    probe = _probe(["inspect", str(presets["sharded"]), "--weights", "--stats", "--export", "out.npz"], tmp_path)
    assert probe["code"] == 0 and probe["loaded"] == []
    probe = _probe(["diff", str(presets["preset"]), str(presets["edited"])], tmp_path)
    assert probe["code"] == 1 and probe["loaded"] == []


def test_bad_presets_are_one_line_and_writes_are_refused(wtool, presets, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(presets["preset"], broken)
    (broken / "task.weights.h5").write_bytes(b"not hdf5 at all")
    res = wtool("inspect", broken)
    assert res.exit_code == 3 and "task.weights.h5" in res.stderr and "Traceback" not in res.stderr, res

    linked = tmp_path / "linked"
    shutil.copytree(presets["sharded"], linked)
    shard = sorted(linked.glob("model_*.weights.h5"))[0]
    moved = tmp_path / "elsewhere.weights.h5"
    shard.rename(moved)
    os.symlink(moved, shard)
    res = wtool("inspect", linked)
    assert res.exit_code == 3 and "symbolic link" in res.stderr, res



# ---- writing a preset: set-weights and transfer write a new preset folder -----------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _with_extras(src: Path, dst: Path) -> Path:
    """The preset plus what keras-hub saves beside the weights (tokenizer, preprocessor, assets/)."""
    shutil.copytree(src, dst)
    (dst / "tokenizer.json").write_text('{"class_name": "BertTokenizer"}')
    (dst / "preprocessor.json").write_text('{"class_name": "BertTextClassifierPreprocessor"}')
    (dst / "assets" / "tokenizer").mkdir(parents=True)
    (dst / "assets" / "tokenizer" / "vocabulary.txt").write_bytes(b"[PAD]\n[UNK]\nhello\n")
    return dst


@pytest.mark.parametrize("name", ["preset", "sharded", "plain"])
def test_set_weights_writes_a_new_preset_folder_that_keras_loads(wtool, presets, tmp_path, name):
    src = _with_extras(presets["preset" if name == "plain" else name], tmp_path / "in")
    if name == "plain":  # a backbone's save_to_preset: no task files, one model.weights.h5
        (src / "task.json").unlink()
        (src / "task.weights.h5").unlink()
    before = _tree(src)
    rng = np.random.default_rng(7)
    new = {"encoder/bias": rng.normal(size=8).astype("float32"),
           "task/logits/kernel": rng.normal(size=(8, 3)).astype("float32")}
    if name == "plain":
        del new["task/logits/kernel"]
    np.savez(tmp_path / "new.npz", **new)
    out = tmp_path / "out"
    res = wtool("set-weights", src, "--npz", tmp_path / "new.npz", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert _tree(src) == before  # the input is never changed
    reference, got = _keras_reference(src), _keras_reference(out)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], new.get(key, value), err_msg=key)
    after = _tree(out)
    weights_files = {k for k in before if k.endswith((".weights.h5", ".weights.json"))}
    assert {k for k in after if k.endswith((".weights.h5", ".weights.json"))} == weights_files  # same form, split
    for key in set(before) - weights_files:  # configs, tokenizer, preprocessor, assets/: byte for byte
        assert after[key] == before[key], key
    assert set(after) == set(before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind
    res = wtool("diff", src, out, "--json")
    assert res.exit_code == 1, res
    assert sorted(r["path"] for r in res.json()["weights"] if r["status"] != "same") == sorted(new)
    assert res.json()["summary"]["same"] == (3 if name == "plain" else 4)


def test_set_weights_init_and_from_model_and_transfer_into_a_preset(wtool, presets, tmp_path):
    out = tmp_path / "init"
    res = wtool("set-weights", presets["sharded"], "--init", "norm/beta=ones", "--init", "task/logits/bias=zeros",
                "-o", out)
    assert res.exit_code == 0, res
    got, reference = _keras_reference(out), _keras_reference(presets["sharded"])
    np.testing.assert_array_equal(got["norm/beta"], np.ones(8, "float32"))
    np.testing.assert_array_equal(got["task/logits/bias"], np.zeros(3, "float32"))
    assert all(np.array_equal(got[k], v) for k, v in reference.items() if k not in ("norm/beta", "task/logits/bias"))

    edited = _keras_reference(presets["edited"])  # differs from "preset" in task/logits/bias only
    for args in (("set-weights", presets["preset"], "--from-model", presets["edited"], "-o", tmp_path / "from"),
                 ("transfer", presets["edited"], presets["sharded"], "-o", tmp_path / "transferred")):
        res = wtool(*args)
        assert res.exit_code == 0, (args, res)
        got = _keras_reference(args[-1])
        for key, value in edited.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{args[0]} {key}")
        res = wtool("diff", args[2] if args[0] == "transfer" else args[1], args[-1], "--json")
        assert [r["path"] for r in res.json()["weights"] if r["status"] != "same"] == ["task/logits/bias"], args


def test_a_failing_or_refused_preset_write_leaves_no_output(wtool, presets, tmp_path, monkeypatch):
    import wtool.store.preset_write as preset_write

    def full_disk(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(preset_write, "_fsync_tree", full_disk)
    before = _tree(presets["sharded"])
    out = tmp_path / "out"
    res = wtool("set-weights", presets["sharded"], "--init", "encoder/bias=zeros", "-o", out)
    assert res.exit_code == 2 and "No space left" in res.stderr and "Traceback" not in res.stderr, res
    assert not out.exists() and list(tmp_path.iterdir()) == [] and _tree(presets["sharded"]) == before
    monkeypatch.undo()

    (tmp_path / "taken").mkdir()
    for args, why in ((("-o", tmp_path / "taken"), "is a directory"), (("-o", tmp_path / "o.keras"), "preset folder"),
                      (("--in-place",), "--in-place")):
        res = wtool("set-weights", presets["preset"], "--init", "encoder/bias=zeros", *args)
        assert res.exit_code == 2 and why in res.stderr, (args, res)
    (tmp_path / "taken.txt").write_text("mine")  # an existing file is not replaced by a folder either
    res = wtool("transfer", presets["edited"], presets["preset"], "-o", tmp_path / "taken.txt")
    assert res.exit_code == 2 and "exists" in res.stderr and (tmp_path / "taken.txt").read_text() == "mine", res
    (tmp_path / "taken.txt").unlink()
    assert list(tmp_path.iterdir()) == [tmp_path / "taken"] and not any((tmp_path / "taken").iterdir())
    assert _tree(presets["sharded"]) == before

    res = wtool("convert", presets["preset"], tmp_path / "c.keras")  # only set-weights/transfer write presets
    assert res.exit_code == 4 and "preset folder" in res.stderr, res
    assert not (tmp_path / "c.keras").exists()


# ---- graph commands on a preset: keras-hub's own from_preset (the wtool[hub] extra) ------------------------


def test_graph_commands_on_a_preset_without_keras_hub_name_the_extra(wtool, presets, tmp_path, monkeypatch):
    import wtool.graph.hub as hub

    monkeypatch.setattr(hub, "hub_installed", lambda: False)  # as in a plain install, whether or not it is here
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 6), dtype="float32"))
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 6), "float32"), y=np.zeros((4, 8), "float32"))
    for args in (("infer", presets["preset"], x, "-o", tmp_path / "y.npy"),
                 ("train", presets["sharded"], "--data", tmp_path / "d.npz", "--loss", "mse", "-o", tmp_path / "t.keras"),
                 ("export", presets["preset"], tmp_path / "m.tflite", "--format", "tflite")):
        res = wtool(*args)
        assert res.exit_code == 4, (args, res)
        assert "need keras-hub, which is not installed" in res.stderr and "pip install 'wtool[hub]'" in res.stderr
        assert "Traceback" not in res.stderr
    assert not any(p.name in ("y.npy", "t.keras", "m.tflite") for p in tmp_path.iterdir())
    res = wtool("inspect", presets["preset"], "--check")
    assert res.exit_code == 4 and "pip install 'wtool[hub]'" in res.stdout + res.stderr, res


def test_a_preset_config_naming_a_class_outside_keras_and_keras_hub_is_refused(wtool, presets, tmp_path):
    evil = tmp_path / "evil"
    shutil.copytree(presets["preset"], evil)
    config = json.loads((evil / "config.json").read_text())
    config["config"]["layers"][1]["module"] = "evil.layers"
    (evil / "config.json").write_text(json.dumps(config))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 6), dtype="float32"))
    res = wtool("infer", evil, x, "-o", tmp_path / "y.npy")
    assert res.exit_code == 5 and "evil.layers" in res.stderr and "Traceback" not in res.stderr, res
    assert not (tmp_path / "y.npy").exists()
    text = wtool("inspect", evil).stdout  # reading weights stays allowed; the header says what graph commands refuse
    assert "needs code" in text and "evil.layers" in text
    assert wtool("inspect", evil, "--check").exit_code == 5


def test_a_task_json_naming_a_class_outside_keras_and_keras_hub_is_refused(wtool, presets, tmp_path):
    evil = tmp_path / "evil"  # graph commands build the task from task.json: it is checked as config.json is
    shutil.copytree(presets["preset"], evil)
    task = json.loads((evil / "task.json").read_text())
    head = next(layer for layer in task["config"]["layers"] if layer["class_name"] == "Dense")
    head["module"] = "evil.heads"
    (evil / "task.json").write_text(json.dumps(task))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 6), dtype="float32"))
    res = wtool("infer", evil, x, "-o", tmp_path / "y.npy")
    assert res.exit_code == 5 and "evil.heads" in res.stderr and "task.json" in res.stderr, res
    assert "Traceback" not in res.stderr and not (tmp_path / "y.npy").exists()
    text = wtool("inspect", evil).stdout
    assert "needs code" in text and "task.json" in text and "evil.heads" in text
    res = wtool("inspect", evil, "--check")
    assert res.exit_code == 5 and "evil.heads" in res.stdout + res.stderr, res


HUB_MISSING = "keras-hub is not installed (pip install 'wtool[hub]'; `make install` adds it to the test venv)"


@pytest.fixture(scope="module")
def hub_preset(tmp_path_factory) -> dict[str, Path]:
    """Real presets written by keras-hub's save_to_preset (a tiny ViT backbone, and a ViT image classifier with
    its preprocessor), and keras-hub's own outputs for them, loaded back from the folders by keras-hub."""
    keras_hub = pytest.importorskip("keras_hub", reason=HUB_MISSING)
    import keras

    out = tmp_path_factory.mktemp("hub")
    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2,
                                            hidden_dim=8, mlp_dim=16)
    backbone.save_to_preset(out / "vit")
    converter = keras_hub.layers.ViTImageConverter(image_size=(8, 8), scale=1 / 255.0)
    classifier = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=3,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter))
    rng = np.random.default_rng(2)
    for var in classifier.weights:  # the head is not left at its zero or random-init values
        if "vi_t_backbone" not in var.path:
            var.assign(rng.normal(size=var.shape).astype("float32"))
    classifier.save_to_preset(out / "classifier")
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    np.save(out / "x.npy", x)
    np.save(out / "y.npy", keras_hub.models.Backbone.from_preset(str(out / "vit")).predict(x, verbose=0))
    images = rng.uniform(0, 255, size=(3, 8, 8, 3)).astype("float32")
    np.save(out / "images.npy", images)
    loaded = keras_hub.models.ImageClassifier.from_preset(str(out / "classifier"))  # the class from task.json
    assert type(loaded) is keras_hub.models.ViTImageClassifier
    np.testing.assert_allclose(loaded(images, training=False), classifier(images, training=False), atol=1e-6)
    np.save(out / "logits.npy", np.asarray(loaded(images, training=False)))
    np.save(out / "scaled.npy", np.asarray(loaded.preprocessor(images)))
    np.save(out / "predicted.npy", loaded.predict(images, verbose=0))  # predict runs the preprocessor first
    np.savez(out / "d.npz", x=np.repeat(x, 4, axis=0), y=np.zeros((12, 5, 8), "float32"))
    return {"vit": out / "vit", "classifier": out / "classifier", "x": out / "x.npy", "y": out / "y.npy",
            "d": out / "d.npz", **{k: out / f"{k}.npy" for k in ("images", "logits", "scaled", "predicted")}}


def test_infer_and_train_on_a_keras_hub_preset_through_keras_hub(wtool, hub_preset, tmp_path):
    res = wtool("infer", hub_preset["vit"], hub_preset["x"], "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(hub_preset["y"]), atol=1e-5, rtol=0)
    res = wtool("train", hub_preset["vit"], "--data", hub_preset["d"], "--loss", "mse", "--lora", "2", "--seed", "0",
                "-o", tmp_path / "t.keras", "--json", "-q")
    assert res.exit_code == 0, res
    assert res.json()["lora"]["layers"] and res.json()["frozen"]["unchanged"]
    res = wtool("inspect", hub_preset["vit"])  # the store reads what keras-hub wrote; its classes are not code
    assert res.exit_code == 0 and "ViTBackbone" in res.stdout and "needs code" not in res.stdout, res
    assert wtool("inspect", hub_preset["vit"], "--check").exit_code == 0


def test_infer_on_a_task_preset_builds_the_task_with_its_head_as_keras_hub_does(wtool, hub_preset, tmp_path):
    folder = hub_preset["classifier"]
    assert (folder / "task.json").exists() and (folder / "task.weights.h5").exists()
    res = wtool("infer", folder, hub_preset["images"], "-o", tmp_path / "y.npy")
    assert res.exit_code == 0, res
    logits = np.load(tmp_path / "y.npy")
    assert logits.shape == (3, 3)  # the classifier's head, not the backbone's (3, 5, 8) sequence
    np.testing.assert_allclose(logits, np.load(hub_preset["logits"]), atol=1e-5, rtol=0)
    assert "preprocessor (ViTImageClassifierPreprocessor) is not run" in res.stderr
    # as task(x): arrays go to the network as given; fed what the preprocessor gives, infer is task.predict
    res = wtool("infer", folder, hub_preset["scaled"], "-o", tmp_path / "p.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), np.load(hub_preset["predicted"]), atol=1e-5, rtol=0)
    assert not np.allclose(np.load(hub_preset["predicted"]), np.load(hub_preset["logits"]), atol=1e-3)
    res = wtool("inspect", folder, "--check")
    assert res.exit_code == 0 and "needs code" not in wtool("inspect", folder).stdout, res
