"""`wtool transfer`: weights from one model into another's architecture, with a report and no surprises."""

from __future__ import annotations

import json
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import CORPUS, SAMPLES, run_cli

BOSTON = CORPUS / "lyhue1991__keras_tutorial" / "boston_housing_model.h5"
KERAS1 = CORPUS / "pplonski__keras2cpp" / "example__my_nn_weights.h5"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")


def weights_of(path) -> dict[str, np.ndarray]:
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


def saved_trainable(path) -> dict[str, bool]:
    from wtool.store import open_model

    with open_model(path) as mf:
        return {layer.path: layer.trainable for layer in mf.layers}


# --------------------------------------------------------------------------- models (Keras, built once)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A family of small models: 10-class and 5-class heads, other layer names, a Keras 3 boston model."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(1)
    d = tmp_path_factory.mktemp("transfer-models")

    def mlp(classes, names=("hidden", "out"), name="mlp", hidden=64):
        return keras.Sequential([keras.Input((784,)), keras.layers.Dense(hidden, activation="relu", name=names[0]),
                                 keras.layers.Dense(classes, activation="softmax", name=names[1])], name=name)

    made = {}
    for key, model in {
        "ten": mlp(10),
        "five": mlp(5),
        "renamed": mlp(10, names=("fc1", "logits"), name="renamed"),
    }.items():
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        for fmt in ("keras", "h5"):
            path = d / f"{key}.{fmt}"
            model.save(path)
            made[f"{key}.{fmt}"] = path
    # Keras 3 model with the architecture of the corpus's boston_housing_model.h5 (Keras 2.2.4), other names.
    # Named as Keras names them in a fresh session (the auto-name counter is process-global).
    boston = keras.Sequential([keras.Input((13,)), keras.layers.Dense(10, activation="relu", name="dense"),
                               keras.layers.Dense(1, name="dense_1")], name="boston3")
    boston.save(d / "boston3.keras")
    made["boston3.keras"] = d / "boston3.keras"
    # Keras 3 model whose Dense layers carry the Keras 1 file's layer names (dense_1, dense_2).
    k1 = keras.Sequential([keras.Input((784,)), keras.layers.Dense(6, name="dense_1"),
                           keras.layers.Dense(10, name="dense_2")], name="k1")
    k1.save(d / "k1.keras")
    made["k1.keras"] = d / "k1.keras"
    return made


# --------------------------------------------------------------------------- TF-free: same architecture


@pytest.mark.parametrize(("src", "dst"), [("cnn.h5", "cnn.keras"), ("nested.keras", "nested.h5"),
                                          ("mlp.keras", "mlp.weights.h5"), ("lstm.weights.h5", "lstm.keras")])
def test_same_architecture_moves_everything(tmp_path, src, dst):
    donor = tmp_path / f"donor.{src.split('.', 1)[1]}"
    res = run_cli("set-weights", SAMPLES / src, "--init", "*=random_normal", "--seed", "2", "-o", donor)
    assert res.exit_code == 0, res
    out = tmp_path / f"out.{dst.split('.', 1)[1]}"
    res = run_cli("transfer", donor, SAMPLES / dst, "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    want = weights_of(donor)
    assert doc["counts"] == {"matched": len(want), "transferred": len(want), "skipped": 0, "mismatched": 0,
                             "missing_in_source": 0, "unused_from_source": 0}
    assert doc["written"] is True and doc["matched"] == doc["transferred"]
    assert doc["verified"] is True and doc["optimizer"] in ("kept", "none")
    got = weights_of(out)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)
    if out.suffix == ".keras":
        with zipfile.ZipFile(out) as zf, zipfile.ZipFile(SAMPLES / dst) as zin:
            assert zf.testzip() is None
            assert zf.read("config.json") == zin.read("config.json")  # TARGET's graph kept


def test_keras_to_weights_h5_without_tensorflow(tmp_path):
    out = tmp_path / "out.weights.h5"
    res = run_cli("transfer", SAMPLES / "nested.h5", SAMPLES / "nested.keras", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["method"] == "splice"
    with h5py.File(out, "r") as h5:
        assert "layers" in h5 and "vars" in h5  # the Keras 3 weights layout, extracted from the archive
    got, want = weights_of(out), weights_of(SAMPLES / "nested.h5")
    for path in want:
        np.testing.assert_array_equal(got[path], want[path])


def test_report_and_filters(tmp_path):
    out = tmp_path / "o.h5"
    res = run_cli("transfer", SAMPLES / "nested.keras", SAMPLES / "nested.h5", "--layers", "features",
                  "--exclude", "features/bn", "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert [p["target"] for p in doc["transferred"]] == ["features/d1/kernel", "features/d1/bias",
                                                         "features/d2/kernel", "features/d2/bias"]
    assert doc["transferred"][0] == {"source": "features/d1/kernel", "target": "features/d1/kernel",
                                     "shape": [16, 32]}
    assert doc["missing_in_source"] == [] and doc["unused_from_source"] == []


def test_human_report(tmp_path):
    res = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "mlp.keras", "-o", tmp_path / "o.keras")
    assert res.exit_code == 0, res
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["status", "source", "target", "shape"]
    assert lines[1].split() == ["transferred", "hidden/kernel", "(784,", "64)"]
    assert lines[-1].startswith("4 transferred, 0 skipped, 0 missing in source, 0 unused from source; wrote ")


def test_nothing_in_common_is_exit_4(tmp_path):
    out = tmp_path / "o.keras"
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "nested.keras", "-o", out)
    assert res.exit_code == 4
    assert "error: nothing to transfer: no layer names in common (source: hidden, out; target:" in res.stderr
    assert "--by order" in res.stderr
    assert not out.exists()
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "nested.keras", "-o", out, "--allow-empty", "--json")
    assert res.exit_code == 0, res
    assert res.json()["counts"]["transferred"] == 0
    assert len(res.json()["missing_in_source"]) == 10 and len(res.json()["unused_from_source"]) == 4


def test_map_pairs_layers(tmp_path):
    out = tmp_path / "o.h5"
    res = run_cli("transfer", SAMPLES / "nested.keras", SAMPLES / "nested.h5", "--map", "features/d*=features/d*",
                  "--layers", "features/d*", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["counts"]["transferred"] == 4
    res = run_cli("transfer", SAMPLES / "nested.keras", SAMPLES / "nested.h5", "--map", "features/x=nope",
                  "-o", out)
    assert res.exit_code == 4 and "--map features/x=nope: no source layer matches features/x" in res.stderr


def test_usage_errors(tmp_path):
    res = run_cli("transfer", SAMPLES / "mlp.keras", "-o", tmp_path / "o.keras")
    assert res.exit_code == 2 and "missing TARGET" in res.stderr
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", "--replace-head", "3", "-o", tmp_path / "o.h5")
    assert res.exit_code == 2 and "--replace-head takes one model" in res.stderr
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", "-o", SAMPLES / "mlp.h5")
    assert res.exit_code == 2 and "inputs are never changed" in res.stderr
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", "--freeze", "-o", tmp_path / "o.weights.h5")
    assert res.exit_code == 2 and "no config to record frozen layers" in res.stderr
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "mlp.weights.h5", "--freeze", "-o", tmp_path / "o.h5")
    assert res.exit_code == 2
    res = run_cli("transfer", SAMPLES / "mlp.keras", SAMPLES / "mlp.h5", "--map", "a", "-o", tmp_path / "o.h5")
    assert res.exit_code == 2 and "expected LEFT=RIGHT" in res.stderr
    assert not list(tmp_path.iterdir())


def test_dry_run(tmp_path):
    out = tmp_path / "o.keras"
    res = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "mlp.keras", "-o", out, "--dry-run")
    assert res.exit_code == 0 and "dry run: nothing written" in res.stdout
    assert not out.exists()


def test_freeze_marks_receiving_layers(tmp_path):
    out = tmp_path / "o.keras"
    res = run_cli("transfer", SAMPLES / "nested.h5", SAMPLES / "nested.keras", "--exclude", "classifier",
                  "--freeze", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["frozen"] == ["features/d1", "features/bn", "features/d2"]
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        config = json.loads(zf.read("config.json"))
    features = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "features")
    flags = {layer["config"]["name"]: layer["config"].get("trainable") for layer in features["config"]["layers"]}
    assert (flags["d1"], flags["bn"], flags["d2"]) == (False, False, False)
    trainable = saved_trainable(out)
    assert trainable["classifier"] is True
    assert trainable["features/d1"] is False


# --------------------------------------------------------------------------- legacy names and files


@needs_corpus
def test_keras1_names_match_modern_layers(tmp_path, models):
    out = tmp_path / "o.keras"
    res = run_cli("transfer", KERAS1, models["k1.keras"], "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert [(p["source"], p["target"]) for p in doc["transferred"]] == [
        ("dense_1/kernel", "dense_1/kernel"), ("dense_1/bias", "dense_1/bias"),
        ("dense_2/kernel", "dense_2/kernel"), ("dense_2/bias", "dense_2/bias")]
    assert doc["unused_from_source"] == ["convolution2d_1/kernel", "convolution2d_1/bias",
                                         "convolution2d_2/kernel", "convolution2d_2/bias"]
    with h5py.File(KERAS1, "r") as h5:
        w = np.asarray(h5["dense_1/dense_1_W"])
        b = np.asarray(h5["dense_2/dense_2_b"])
    got = weights_of(out)
    np.testing.assert_array_equal(got["dense_1/kernel"], w)
    np.testing.assert_array_equal(got["dense_2/bias"], b)


@needs_corpus
def test_legacy_corpus_file_into_keras3_model(tmp_path, models):
    out = tmp_path / "boston.keras"
    res = run_cli("transfer", BOSTON, models["boston3.keras"], "-o", out)
    assert res.exit_code == 4  # Keras 2.2.4 named them dense_29/dense_30: nothing in common by name
    assert "no layer names in common (source: dense_29, dense_30; target: dense, dense_1)" in res.stderr
    res = run_cli("transfer", BOSTON, models["boston3.keras"], "--by", "order", "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert [(p["source"], p["target"]) for p in doc["transferred"]] == [
        ("dense_29/kernel", "dense/kernel"), ("dense_29/bias", "dense/bias"),
        ("dense_30/kernel", "dense_1/kernel"), ("dense_30/bias", "dense_1/bias")]
    with h5py.File(BOSTON, "r") as h5:
        kernel = np.asarray(h5["model_weights/dense_29/dense_29/kernel:0"])
    np.testing.assert_array_equal(weights_of(out)["dense/kernel"], kernel)


@pytest.mark.tf
@needs_corpus
def test_legacy_corpus_transfer_predicts_like_keras(tmp_path, models):
    """The Keras 3 model with the transferred weights predicts what Keras's own loader of the old file does."""
    from wtool.graph.model import import_keras, load_model

    keras = import_keras()
    out = tmp_path / "boston.keras"
    assert run_cli("transfer", BOSTON, models["boston3.keras"], "--by", "order", "-o", out).exit_code == 0
    x = np.random.default_rng(0).normal(size=(8, 13)).astype("float32")
    mine = keras.saving.load_model(out, compile=False)
    theirs = load_model(BOSTON)
    np.testing.assert_allclose(mine.predict(x, verbose=0), theirs.predict(x.reshape(8, 13), verbose=0), rtol=1e-6)


# --------------------------------------------------------------------------- heads, orders, formats (Keras)


@pytest.mark.tf
def test_ten_classes_into_five_moves_all_but_the_head(tmp_path, models):
    out = tmp_path / "o.keras"
    res = run_cli("transfer", models["ten.keras"], models["five.keras"], "-o", out)
    assert res.exit_code == 4  # strict by default: the whole list, nothing written
    assert "error: 2 problems; nothing written:" in res.stderr
    assert "out/kernel -> out/kernel: source shape (64, 10), target shape (64, 5)" in res.stderr
    assert "out/bias -> out/bias: source shape (10,), target shape (5,)" in res.stderr
    assert "--skip-mismatch" in res.stderr
    assert not out.exists()
    res = run_cli("transfer", models["ten.keras"], models["five.keras"], "--skip-mismatch", "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert [p["target"] for p in doc["transferred"]] == ["hidden/kernel", "hidden/bias"]
    assert doc["skipped"] == [
        {"source": "out/kernel", "target": "out/kernel", "reason": "shape", "source_shape": [64, 10],
         "target_shape": [64, 5], "detail": None},
        {"source": "out/bias", "target": "out/bias", "reason": "shape", "source_shape": [10],
         "target_shape": [5], "detail": None}]
    src, dst, got = weights_of(models["ten.keras"]), weights_of(models["five.keras"]), weights_of(out)
    np.testing.assert_array_equal(got["hidden/kernel"], src["hidden/kernel"])
    np.testing.assert_array_equal(got["out/kernel"], dst["out/kernel"])  # the head keeps TARGET's values


@pytest.mark.tf
def test_agrees_with_keras_load_weights_by_name(tmp_path, models):
    """On .h5, wtool moves exactly what Keras's load_weights(by_name=True, skip_mismatch=True) loads."""
    import warnings

    from wtool.graph.model import import_keras

    keras = import_keras()
    out = tmp_path / "wtool.h5"
    res = run_cli("transfer", models["ten.h5"], models["five.h5"], "--skip-mismatch", "-o", out)
    assert res.exit_code == 0, res
    model = keras.saving.load_model(models["five.h5"], compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(models["ten.h5"], by_name=True, skip_mismatch=True)
    ours = keras.saving.load_model(out, compile=False)
    for a, b in zip(model.weights, ours.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # and nested models too
    out = tmp_path / "nested.h5"
    donor = tmp_path / "donor.h5"
    assert run_cli("set-weights", SAMPLES / "nested.h5", "--init", "*=ones", "-o", donor).exit_code == 0
    assert run_cli("transfer", donor, SAMPLES / "nested.h5", "-o", out).exit_code == 0
    model = keras.saving.load_model(SAMPLES / "nested.h5", compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(donor, by_name=True, skip_mismatch=True)
    ours = keras.saving.load_model(out, compile=False)
    for a, b in zip(model.weights, ours.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.tf
def test_by_order_between_differently_named_models(tmp_path, models):
    out = tmp_path / "o.h5"
    res = run_cli("transfer", models["ten.keras"], models["renamed.h5"], "-o", out)
    assert res.exit_code == 4 and "no layer names in common" in res.stderr
    res = run_cli("transfer", models["ten.keras"], models["renamed.h5"], "--by", "order", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert [(p["source"], p["target"]) for p in res.json()["transferred"]] == [
        ("hidden/kernel", "fc1/kernel"), ("hidden/bias", "fc1/bias"),
        ("out/kernel", "logits/kernel"), ("out/bias", "logits/bias")]
    src, got = weights_of(models["ten.keras"]), weights_of(out)
    np.testing.assert_array_equal(got["logits/kernel"], src["out/kernel"])
    # --map does the same by name
    res = run_cli("transfer", models["ten.keras"], models["renamed.h5"], "--map", "hidden=fc1", "--map", "out=logits",
                  "-o", tmp_path / "m.h5", "--json")
    assert res.exit_code == 0 and res.json()["counts"]["transferred"] == 4


@pytest.mark.tf
def test_h5_target_to_keras_output(tmp_path, models):
    """TARGET .h5 -> OUT .keras needs a graph: the HDF5-level edit, then Keras writes the archive."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    out = tmp_path / "o.keras"
    res = run_cli("transfer", models["ten.keras"], models["five.h5"], "--skip-mismatch", "--freeze", "-o", out,
                  "--json")
    assert res.exit_code == 0, res
    assert res.json()["method"] == "keras"
    model = keras.saving.load_model(out, compile=False)
    src = weights_of(models["ten.keras"])
    np.testing.assert_array_equal(model.get_layer("hidden").kernel.numpy(), src["hidden/kernel"])
    assert model.get_layer("hidden").trainable is False
    assert model.get_layer("out").trainable is True


@pytest.mark.tf
def test_replace_head_freeze_then_train_changes_only_the_head(tmp_path):
    ft = tmp_path / "ft.keras"
    res = run_cli("transfer", SAMPLES / "mlp.keras", "--replace-head", "5", "--freeze", "--seed", "0", "-o", ft,
                  "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    assert doc["head"] == {"replaced": "out", "class": "Dense", "old_units": 10, "units": 5,
                           "activation": "softmax", "new_weights": ["out/kernel", "out/bias"]}
    assert doc["frozen"] == ["hidden"]
    base, head = weights_of(SAMPLES / "mlp.keras"), weights_of(ft)
    np.testing.assert_array_equal(head["hidden/kernel"], base["hidden/kernel"])
    assert head["out/kernel"].shape == (64, 5)
    assert saved_trainable(ft)["hidden"] is False

    rng = np.random.default_rng(0)
    data = tmp_path / "five.npz"
    np.savez(data, x=rng.random((64, 784), dtype=np.float32), y=rng.integers(0, 5, 64))
    trained = tmp_path / "trained.keras"
    res = run_cli("train", ft, "--data", data, "--epochs", "2", "--seed", "0", "-o", trained)
    assert res.exit_code == 0, res
    after = weights_of(trained)
    np.testing.assert_array_equal(after["hidden/kernel"], head["hidden/kernel"])
    np.testing.assert_array_equal(after["hidden/bias"], head["hidden/bias"])
    assert not np.array_equal(after["out/kernel"], head["out/kernel"])


@pytest.mark.tf
def test_replace_head_named_layer_and_errors(tmp_path):
    out = tmp_path / "h.h5"
    res = run_cli("transfer", SAMPLES / "cnn.keras", "--replace-head", "3", "--head-layer", "conv2",
                  "--head-activation", "relu", "-o", out, "--json")
    assert res.exit_code == 0, res
    assert res.json()["dropped_layers"] == ["gap", "drop", "out"]
    assert weights_of(out)["conv2/kernel"].shape == (8, 3)  # a Dense on the last axis of pool1's output
    res = run_cli("transfer", SAMPLES / "cnn.keras", "--replace-head", "3", "--head-layer", "outt", "-o", out)
    assert res.exit_code == 4 and "closest: out" in res.stderr
    res = run_cli("transfer", SAMPLES / "cnn.keras", "--replace-head", "3", "--head-activation", "nope", "-o", out)
    assert res.exit_code == 2


def test_replace_head_needs_no_target_only(tmp_path):
    shutil.copy(SAMPLES / "xor.keras", tmp_path / "x.keras")
    res = run_cli("transfer", tmp_path / "x.keras", "--replace-head", "0", "-o", tmp_path / "y.keras")
    assert res.exit_code == 2 and "--replace-head needs a positive number of units (not 0)" in res.stderr, res
    assert not (tmp_path / "y.keras").exists()


def test_float64_source_is_cast_and_virtual_refused(tmp_path):
    donor = tmp_path / "f64.weights.h5"
    shutil.copy(SAMPLES / "mlp.weights.h5", donor)
    with h5py.File(donor, "r+") as h5:
        value = np.asarray(h5["layers/dense/vars/0"], dtype="float64") + 1.0
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = value
    out = tmp_path / "o.keras"
    res = run_cli("transfer", donor, SAMPLES / "mlp.keras", "-o", out, "--json")
    assert res.exit_code == 0, res
    got = weights_of(out)["hidden/kernel"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, value.astype("float32"))
    # a virtual dataset (data from another file) is refused, not followed
    evil = tmp_path / "virtual.weights.h5"
    shutil.copy(SAMPLES / "mlp.weights.h5", evil)
    with h5py.File(evil, "r+") as h5:
        del h5["layers/dense_1/vars/1"]
        layout = h5py.VirtualLayout(shape=(10,), dtype="float32")
        layout[:] = h5py.VirtualSource(str(SAMPLES / "mlp.weights.h5"), "layers/dense_1/vars/1", shape=(10,))
        h5.create_virtual_dataset("layers/dense_1/vars/1", layout)
    res = run_cli("transfer", evil, SAMPLES / "mlp.keras", "-o", tmp_path / "v.keras")
    assert res.exit_code == 5, res
    assert not (tmp_path / "v.keras").exists()


def test_read_back_catches_a_bad_copy(tmp_path, monkeypatch):
    """The read-back check is real: a copy that lands one byte off is exit 70 and leaves no output."""
    from wtool.store import write

    monkeypatch.setattr(write, "FULL_CHECK_BYTES", 1024)  # the sampled-window path on small weights
    monkeypatch.setattr(write, "COPY_CHECK_WINDOW", 256)
    donor = tmp_path / "donor.h5"
    assert run_cli("set-weights", SAMPLES / "mlp.h5", "--init", "*=random_normal", "--seed", "4",
                   "-o", donor).exit_code == 0
    good = tmp_path / "good.keras"
    res = run_cli("transfer", donor, SAMPLES / "mlp.keras", "-o", good, "--json")
    assert res.exit_code == 0 and res.json()["verified"] is True

    real = write.copy_bytes

    def off_by_one(src_fd, dst_fd, count, src_off, dst_off):
        real(src_fd, dst_fd, count, src_off + (1 if count == 200704 else 0), dst_off)

    monkeypatch.setattr(write, "copy_bytes", off_by_one)
    bad = tmp_path / "bad.keras"
    res = run_cli("transfer", donor, SAMPLES / "mlp.keras", "-o", bad)
    assert res.exit_code == 70
    assert "read-back check failed" in res.stderr and "layers/dense/vars/0" in res.stderr
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def _status_words(stdout: str) -> list[str]:
    return [" ".join(line.split()[:2]) for line in stdout.splitlines()[1:-1]]


def test_nothing_written_is_never_called_transferred(tmp_path):
    """A refused (exit 4) or --dry-run transfer says matched / would transfer, never transferred;
    strict shape mismatches are 'mismatch' (the refusal's reason), not 'skipped'."""
    out = tmp_path / "c.keras"
    refused = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "cnn.keras", "-o", out)
    assert refused.exit_code == 4 and not out.exists()
    words = _status_words(refused.stdout)
    assert "matched out/bias" in words and "mismatch (shape)" in words
    assert not any(w.startswith(("transferred", "skipped")) for w in words)
    assert refused.stdout.splitlines()[-1] == ("1 matched, 1 mismatched, 8 missing in source, 2 unused from source; "
                                               "refused: nothing written")
    doc = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "cnn.keras", "-o", out, "--json").json()
    assert doc["written"] is False and doc["ok"] is False and doc["transferred"] == [] and doc["skipped"] == []
    assert doc["counts"]["transferred"] == 0 and doc["counts"]["matched"] == 1
    assert doc["counts"]["mismatched"] == 1 and doc["counts"]["skipped"] == 0
    assert [p["target"] for p in doc["mismatched"]] == ["out/kernel"]

    dry = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "cnn.keras", "-o", out, "--skip-mismatch", "--dry-run")
    assert dry.exit_code == 0 and not out.exists()
    words = _status_words(dry.stdout)
    assert "would transfer" in words and "would skip" in words
    assert dry.stdout.splitlines()[-1].startswith("1 would transfer, 1 would skip, 8 missing in source")
    doc = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "cnn.keras", "--skip-mismatch", "--dry-run",
                  "--json").json()
    assert doc["written"] is False and doc["counts"]["transferred"] == 0 and doc["counts"]["skipped"] == 1

    done = run_cli("transfer", SAMPLES / "mlp.h5", SAMPLES / "cnn.keras", "-o", out, "--skip-mismatch")
    assert done.exit_code == 0 and out.exists()
    assert {"transferred out/bias", "skipped (shape)"} <= set(_status_words(done.stdout))
    assert done.stdout.splitlines()[-1].startswith("1 transferred, 1 skipped, 8 missing in source")


def test_names_with_markup_and_control_characters_print_as_they_are(tmp_path):
    """Layer names come from strangers' files: brackets are not rich markup, ESC is shown escaped."""
    name = "d[bold]\x1b[31mred"
    for file in ("a.weights.h5", "b.weights.h5"):
        with h5py.File(tmp_path / file, "w") as f:
            f.attrs["layer_names"] = [name.encode()]
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode()]
            group.create_dataset(f"{name}/kernel:0", data=np.arange(6, dtype="float32").reshape(2, 3))
    shown = "d[bold]\\x1b[31mred/kernel"
    res = run_cli("transfer", tmp_path / "a.weights.h5", tmp_path / "b.weights.h5", "-o", tmp_path / "c.weights.h5")
    assert res.exit_code == 0, res
    assert "\x1b" not in res.stdout and shown in res.stdout, res.stdout
    res = run_cli("set-weights", tmp_path / "b.weights.h5", "--from-model", tmp_path / "a.weights.h5",
                  "-o", tmp_path / "d.weights.h5")
    assert res.exit_code == 0, res
    assert "\x1b" not in res.stdout and f"a.weights.h5[{shown}]" in res.stdout, res.stdout
