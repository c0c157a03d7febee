"""Orbax checkpoint folders: read through orbax's own restore when `orbax-checkpoint` is installed, every
value checked against orbax itself, a real Keras `OrbaxCheckpoint` run diffed equal to the model Keras
saved; without the package, one line, exit 3, naming it.

orbax-checkpoint (with jax and tensorstore) is an optional extra, not in the test venv: the tests that
need it skip with that reason; the one that simulates its absence always runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

NOT_INSTALLED = "orbax-checkpoint is not installed (optional extra wtool[orbax]; not in the test venv)"


def _has_orbax() -> bool:
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        return False
    return True


needs_orbax = pytest.mark.skipif(not _has_orbax(), reason=NOT_INSTALLED)


def _errors(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def test_without_orbax_exit_3_naming_the_package(tmp_path, monkeypatch):
    """The package made unimportable (as it is in CI): inspect and diff say what the folder is and how to
    read it, one line, exit 3, no traceback."""
    run = tmp_path / "run"
    (run / "7" / "default").mkdir(parents=True)
    (run / "7" / "_CHECKPOINT_METADATA").write_text("{}")
    (run / "7" / "default" / "_METADATA").write_text("{}")
    for name in ("orbax", "orbax.checkpoint"):
        monkeypatch.setitem(sys.modules, name, None)  # `import orbax.checkpoint` raises ImportError
    for args in (("inspect", run), ("inspect", run / "7", "--weights"), ("diff", run, run / "7")):
        res = run_cli(*args)
        assert res.exit_code == 3, (args, res)
        assert len(_errors(res)) == 1 and "an Orbax checkpoint folder" in _errors(res)[0], res
        assert "needs the orbax-checkpoint package" in _errors(res)[0], res
        assert "pip install 'wtool[orbax]'" in res.stderr and "Traceback" not in res.stderr, res


# ------------------------------------------------------------------------- written by orbax itself


def _tree(bias: float) -> dict:
    rng = np.random.default_rng(0)
    return {"params": {"dense": {"kernel": rng.normal(size=(3, 4)).astype("float32"),
                                 "bias": np.full(4, bias, "float32")},
                       "embed": {"table": rng.integers(-5, 5, size=(6, 2)).astype("int32")}},
            "opt_state": {"mu": np.ones(4, "float32"), "count": np.array(3, "int64")}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A JAX-style CheckpointManager run (steps 10 and 20, only the bias changes) and a Keras-layout run
    written with orbax's v1 Checkpointer, as Keras 3's OrbaxCheckpoint callback writes it."""
    if not _has_orbax():
        pytest.skip(NOT_INSTALLED)
    import orbax.checkpoint as ocp
    from orbax.checkpoint import v1

    root = tmp_path_factory.mktemp("orbax")
    mngr = ocp.CheckpointManager(root / "jax_run", options=ocp.CheckpointManagerOptions(max_to_keep=3))
    for step, bias in ((10, 0.0), (20, 1.5)):
        mngr.save(step, args=ocp.args.StandardSave(_tree(bias)))
        mngr.wait_until_finished()
    mngr.close()
    keras_tree = {"trainable_variables": {"d": {"kernel": np.arange(6, dtype="float32").reshape(2, 3)}},
                  "non_trainable_variables": {"bn": {"moving_mean": np.ones(3, "float32")}},
                  "optimizer_variables": {"adam": {"iteration": np.array(4, "int64")}},
                  "metrics_variables": {"loss": {"total": np.array(1.0, "float32")}}}
    with v1.Context():
        ckpt = v1.training.Checkpointer(directory=root / "keras_run")
        ckpt.save_checkpointables(3, {"pytree": keras_tree})
        ckpt.close()
    return root


def _orbax_restore(item: Path) -> dict[str, np.ndarray]:
    """orbax's own reading of one item folder, as numpy arrays, by keys joined with '/'."""
    import jax
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(item.resolve())
    flat, _ = jax.tree_util.tree_flatten_with_path(restored)
    return {"/".join(str(k.key) for k in keys): np.asarray(v) for keys, v in flat}


@needs_orbax
def test_values_equal_orbax_restore(runs, tmp_path):
    """Latest step by default, a given step when named; every listed weight is bit-equal to orbax's own
    restore of that step; optimizer state is counted, not listed; --export holds the same values."""
    for arg, step in ((runs / "jax_run", 20), (runs / "jax_run" / "10", 10), (runs / "jax_run/20/default", 20)):
        res = run_cli("inspect", arg, "--weights", "--stats", "--json")
        assert res.exit_code == 0, res
        doc = res.json()
        want = _orbax_restore(runs / "jax_run" / str(step) / "default")
        got = {w["path"]: w for w in doc["weights"]}
        assert set(got) == {"params/dense/kernel", "params/dense/bias", "params/embed/table"}, got
        for path, w in got.items():
            assert w["checkpoint_key"] == path and w["shape"] == list(want[path].shape)
            assert w["dtype"] == want[path].dtype.name
            assert w["stats"]["max"] == pytest.approx(float(want[path].max()))
        assert f"Orbax step {step}" in res.stderr and "2 optimizer, metric or step value(s)" in res.stderr, res
    out = tmp_path / "w.npz"
    assert run_cli("inspect", runs / "jax_run", "--export", out).exit_code == 0
    with np.load(out) as npz:
        for path, value in _orbax_restore(runs / "jax_run" / "20" / "default").items():
            if path.startswith("params/"):
                assert np.array_equal(npz[path], value) and npz[path].dtype == value.dtype, path
    assert run_cli("diff", runs / "jax_run", out).exit_code == 0  # the export diffs equal to its source


@needs_orbax
def test_keras_layout_trainability(runs):
    """Keras's state tree: variables under their own paths, trainable from their branch; optimizer and
    metric variables counted, not listed."""
    res = run_cli("inspect", runs / "keras_run", "--weights", "--json")
    assert res.exit_code == 0, res
    rows = {w["path"]: (w["trainable"], w["checkpoint_key"]) for w in res.json()["weights"]}
    assert rows == {"d/kernel": (True, "trainable_variables/d/kernel"),
                    "bn/moving_mean": (False, "non_trainable_variables/bn/moving_mean")}
    assert "2 optimizer, metric or step value(s)" in res.stderr
    check = run_cli("inspect", runs / "keras_run", "--check")  # no architecture in a checkpoint
    assert check.exit_code == 4 and "not an architecture" in check.stdout + check.stderr, check


@needs_orbax
def test_refused_where_a_model_file_is_needed(runs, tmp_path):
    res = run_cli("convert", runs / "jax_run", tmp_path / "x.keras")
    assert res.exit_code == 3 and len(_errors(res)) == 1, res
    assert "an Orbax checkpoint folder" in _errors(res)[0] and "where a model file is needed" in _errors(res)[0]
    assert not (tmp_path / "x.keras").exists()


@needs_orbax
def test_diff_two_steps(runs):
    res = run_cli("diff", runs / "jax_run" / "10", runs / "jax_run" / "20", "--json")
    assert res.exit_code == 1, res
    status = {w["path"]: (w["status"], w["max_abs_diff"]) for w in res.json()["weights"]}
    assert status == {"params/dense/bias": ("changed", 1.5), "params/dense/kernel": ("same", 0.0),
                      "params/embed/table": ("same", 0.0)}, status


@needs_orbax
@pytest.mark.parametrize("damage", ["truncated", "missing", "metadata"])
def test_damaged_folder_one_line_exit_3(runs, tmp_path, damage):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(runs / "jax_run", bad)
    data = sorted((bad / "20" / "default" / "d").iterdir())
    assert data
    for f in data:
        if damage == "truncated":
            f.write_bytes(f.read_bytes()[:20])
        elif damage == "missing":
            f.unlink()
    if damage == "metadata":
        (bad / "20" / "default" / "_METADATA").write_text("not json")
    proc = subprocess.run([sys.executable, "-m", "wtool", "inspect", str(bad), "--stats"], capture_output=True,
                          text=True, timeout=120)  # a fresh process: orbax's threads end with it
    lines = [x for x in proc.stderr.splitlines() if x and not x.startswith(("I0000", "W0000", "WARNING: All"))]
    assert proc.returncode == 3, proc.stderr
    assert lines[0].startswith("error: ") and "damaged or incomplete" in lines[0], proc.stderr
    assert len(lines) <= 2 and all(x.startswith("hint: ") for x in lines[1:]), proc.stderr  # no traceback
    assert proc.stdout == "", proc.stdout


KERAS_RUN = """
import sys, numpy as np, keras
inp = keras.Input((3,))
x = keras.layers.Dense(4, name="d1")(inp)
x = keras.layers.BatchNormalization(name="bn")(x)
functional = keras.Model(inp, keras.layers.Dense(2, name="d2")(x))
sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="seqy")
for name, model in (("run", functional), ("seq_run", sequential)):
    model.compile("adam", "mse")
    cb = keras.callbacks.OrbaxCheckpoint(sys.argv[1] + "/" + name, save_on_background=False, max_to_keep=3)
    model.fit(np.random.default_rng(0).normal(size=(16, 3)), np.ones((16, 2)), epochs=2, verbose=0,
              callbacks=[cb])
    model.save(sys.argv[1] + "/" + name + ".keras")
"""


@needs_orbax
@pytest.mark.tf
def test_keras_orbax_callback_equals_keras_model(tmp_path):
    """Real `keras.callbacks.OrbaxCheckpoint` runs (a functional and a Sequential model): the latest step
    diffs equal to the .keras file Keras saved from the same model, weight by weight; inspect stays
    TensorFlow-free."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(KERAS_RUN), str(tmp_path)], check=True,
                   capture_output=True, timeout=300)
    for run, count in (("run", 8), ("seq_run", 2)):  # a Sequential's own name is not in its .keras paths
        res = run_cli("diff", tmp_path / run, tmp_path / f"{run}.keras", "--json")
        assert res.exit_code == 0, res
        doc = res.json()
        assert doc["equal"] and doc["summary"]["same"] == count, doc
    probe = ("import sys, wtool.cli\ntry:\n    wtool.cli.cli.main(['inspect', sys.argv[1], '--stats'], "
             "standalone_mode=False)\nexcept SystemExit:\n    pass\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + probe, str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.splitlines()[-1]) == [], out.stderr[-2000:]
