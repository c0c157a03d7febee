"""`--custom-objects FILE.py|MODULE`: a model with a registered custom layer trains, infers and loads
through `new --config` and `inspect --check` only with `--unsafe`, and its hints lead somewhere.

The models are written by a separate Python process, so this test process has no custom class
registered until the CLI imports one (Keras's registry is global)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("custom_objects")]

LAYERS = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="wtooltest")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}
''')

GATE = LAYERS.replace("class Scale", "class Gate").replace("wtooltest", "wtoolgate")

MAKE = textwrap.dedent('''
    import sys
    import numpy as np
    import keras
    sys.path.insert(0, ".")
    import layers, gate
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"), layers.Scale(3.0, name="scale"),
                          keras.layers.Dense(2, activation="softmax", name="out")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.save("custom.keras")
    m.save("custom.h5")
    g = keras.Sequential([keras.Input((4,)), gate.Gate(name="gate"), keras.layers.Dense(2, name="out")])
    g.save("gate.keras")
    rng = np.random.default_rng(0)
    np.savez("data.npz", x=rng.normal(size=(64, 4)).astype("float32"), y=rng.integers(0, 2, 64))
''')


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("custom")
    (d / "layers.py").write_text(LAYERS)
    (d / "gate.py").write_text(GATE)
    proc = subprocess.run([sys.executable, "-c", MAKE], cwd=d, capture_output=True, text=True, check=False,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


def test_refused_without_unsafe_and_hints_lead_to_the_option(work):
    gate = work / "gate.keras"
    data = work / "data.npz"
    # 1. nothing: exit 5, and the hint names both options
    res = run_cli("infer", gate, data)
    assert res.exit_code == 5, res
    assert "wtoolgate>Gate" in res.stderr and "--unsafe --custom-objects" in res.stderr
    # 2. --unsafe alone: exit 4, the class is not installed, the hint names --custom-objects (not --unsafe again)
    res = run_cli("infer", gate, data, "--unsafe")
    assert res.exit_code == 4, res
    assert "not installed: `wtoolgate>Gate`" in res.stderr
    hint = res.stderr.splitlines()[-1]
    assert hint.startswith("hint:") and "--custom-objects" in hint and "--unsafe" not in hint
    # 3. --custom-objects without --unsafe: refused before any code runs
    res = run_cli("infer", gate, data, "--custom-objects", work / "gate.py")
    assert res.exit_code == 5, res
    assert "refused without --unsafe" in res.stderr and "running the Python code" not in res.stderr
    # 4. the wrong file: exit 4 saying what it did register
    res = run_cli("infer", gate, data, "--unsafe", "--custom-objects", work / "layers.py")
    assert res.exit_code == 4, res
    assert "registered wtooltest>Scale" in res.stderr and "`wtoolgate>Gate`" in res.stderr
    # inspect --check says which option would make it load (TF-free without the option)
    res = run_cli("inspect", gate, "--check", "--json")
    assert res.exit_code == 5
    check = res.json()["check"]
    assert check["status"] == "needs-unsafe" and "--unsafe --custom-objects" in check["hint"]
    # 5. the right file: it loads, and the warning is said once
    res = run_cli("infer", gate, data, "--unsafe", "--custom-objects", work / "gate.py", "-o", work / "g.npy")
    assert res.exit_code == 0, res
    assert res.stderr.count("running the Python code") == 1
    res = run_cli("inspect", gate, "--check", "--unsafe", "--custom-objects", work / "gate.py", "--json")
    assert res.exit_code == 0, res
    assert res.json()["check"]["status"] == "ok"


def test_trains_and_infers_like_keras_with_the_class_imported(work):
    out = work / "trained.keras"
    res = run_cli("train", work / "custom.keras", "--data", work / "data.npz", "-o", out, "--epochs", "5",
                  "--seed", "0", "--lr", "0.05", "--unsafe", "--custom-objects", work / "layers.py", "--json")
    assert res.exit_code == 0, res
    history = res.json()["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    preds = work / "p.npy"
    res = run_cli("infer", out, work / "data.npz", "-o", preds, "--unsafe", "--custom-objects", work / "layers.py")
    assert res.exit_code == 0, res

    from wtool.graph.model import import_keras

    keras = import_keras()  # the class is registered now: Keras itself loads the trained file
    model = keras.saving.load_model(out)
    assert type(model.get_layer("scale")).__name__ == "Scale"
    scale = model.get_layer("scale").get_weights()[0]
    assert not np.allclose(scale, 1.0)  # the custom layer's own weight was trained
    x = np.load(work / "data.npz")["x"]
    np.testing.assert_allclose(np.load(preds), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    # a legacy .h5 of the same model, and a module name instead of a file
    preds_h5 = work / "p5.npy"
    res = run_cli("infer", work / "custom.h5", work / "data.npz", "-o", preds_h5, "--unsafe",
                  "--custom-objects", work / "layers.py")
    assert res.exit_code == 0, res
    untrained = keras.saving.load_model(work / "custom.keras")
    np.testing.assert_allclose(np.load(preds_h5), untrained.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


def test_new_from_config_and_bad_custom_objects(work, monkeypatch):
    res = run_cli("new", work / "fresh.keras", "--config", work / "custom.keras", "--seed", "1", "--unsafe",
                  "--custom-objects", work / "layers.py", "--json")
    assert res.exit_code == 0, res
    assert [layer["class"] for layer in res.json()["model"]["layers"]][1] == "Scale"
    (work / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    res = run_cli("infer", work / "custom.keras", work / "data.npz", "--unsafe", "--custom-objects", work / "boom.py")
    assert res.exit_code == 3 and "importing it failed: RuntimeError: boom at import" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("infer", work / "custom.keras", work / "data.npz", "--unsafe", "--custom-objects", "no_such_mod")
    assert res.exit_code == 3 and "no module named 'no_such_mod'" in res.stderr
    monkeypatch.syspath_prepend(str(work))  # a module name on the path works like a file
    res = run_cli("infer", work / "custom.keras", work / "data.npz", "--unsafe", "--custom-objects", "layers",
                  "-o", work / "m.npy")
    assert res.exit_code == 0, res
