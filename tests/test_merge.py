"""`wtool merge`: soups, weighted, slerp, task arithmetic, --layers, EMA; values against numpy and Keras."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES, run_cli


def _weights(path):
    from wtool.store import open_model

    with open_model(path) as mf:
        return {w.path: mf.read(w.path) for w in mf.weights}


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """nested.keras and two copies with every float weight re-drawn (HDF5 level, no TF)."""
    d = tmp_path_factory.mktemp("merge")
    paths = [SAMPLES / "nested.keras"]
    for seed in (1, 2):
        out = d / f"n{seed}.keras"
        res = run_cli("set-weights", SAMPLES / "nested.keras", "--init", "*=random_normal", "--seed", seed,
                      "-o", out, "-q")
        assert res.exit_code == 0, res
        paths.append(out)
    return d, paths


def test_mean_and_weights_against_numpy(three, tmp_path):
    _, paths = three
    ws = [_weights(p) for p in paths]
    out = tmp_path / "soup.keras"
    res = run_cli("merge", *paths, "-o", out, "--json")
    assert res.exit_code == 0, res
    doc = res.json()
    got = _weights(out)
    for k in got:
        np.testing.assert_allclose(got[k], (ws[0][k] + ws[1][k] + ws[2][k]) / 3, rtol=1e-6, atol=1e-7)
    row = next(w for w in doc["weights"] if w["path"] == "features/d1/kernel")
    want = [float(np.linalg.norm(w["features/d1/kernel"] - got["features/d1/kernel"])
                  / np.linalg.norm(got["features/d1/kernel"])) for w in ws]
    np.testing.assert_allclose(row["distances"], want, rtol=1e-4)
    assert doc["counts"]["merged"] == 10 and doc["optimizer"] == "kept"
    out2 = tmp_path / "mix.weights.h5"  # weights only, extracted at the HDF5 level
    res = run_cli("merge", paths[0], paths[1], "--weights", "3,1", "-o", out2)
    assert res.exit_code == 0, res
    got = _weights(out2)
    np.testing.assert_allclose(got["classifier/kernel"], 0.75 * ws[0]["classifier/kernel"]
                               + 0.25 * ws[1]["classifier/kernel"], rtol=1e-6, atol=1e-7)


def test_slerp_task_arithmetic_and_layers(three, tmp_path):
    _, (a, b, c) = three
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    out = tmp_path / "s.keras"
    assert run_cli("merge", a, b, "--slerp", "0.25", "--layers", "features/d1", "-o", out).exit_code == 0
    got = _weights(out)
    x, y = wa["features/d1/kernel"].astype(np.float64), wb["features/d1/kernel"].astype(np.float64)
    omega = np.arccos(np.dot(x.ravel(), y.ravel()) / np.linalg.norm(x) / np.linalg.norm(y))
    want = (np.sin(0.75 * omega) * x + np.sin(0.25 * omega) * y) / np.sin(omega)
    np.testing.assert_allclose(got["features/d1/kernel"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["classifier/kernel"], wa["classifier/kernel"])  # not selected: kept
    out = tmp_path / "t.keras"
    res = run_cli("merge", b, c, "--task-arithmetic", a, "--scales", "0.5,2", "-o", out)
    assert res.exit_code == 0, res
    got = _weights(out)
    k = "features/bn/moving_variance"
    np.testing.assert_allclose(got[k], wa[k] + 0.5 * (wb[k] - wa[k]) + 2 * (wc[k] - wa[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["{a}", "-o", "{o}"], 2, "at least two models"),
    (["{a}", "{b}", "--slerp", "2", "-o", "{o}"], 2, "between 0 and 1"),
    (["{a}", "{b}", "--weights", "1", "-o", "{o}"], 2, "1 numbers for 2 models"),
    (["{a}", "{b}", "--mean", "--slerp", "0.5", "-o", "{o}"], 2, "cannot be used together"),
    (["{a}", "{m}", "-o", "{o}"], 4, "differ in architecture"),
    (["{a}", "--ema", "-o", "{o}"], 4, "use_ema is not set"),
    (["{a}", "{b}", "--layers", "nope", "-o", "{o}"], 4, "selects no float weight"),
])
def test_merge_refusals(three, tmp_path, args, code, message):
    _, (a, b, _c) = three
    out = tmp_path / "o.keras"
    subst = {"a": a, "b": b, "m": SAMPLES / "mlp.keras", "o": out}
    res = run_cli("merge", *[x.format(**subst) for x in args])
    assert res.exit_code == code, res
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_ema_matches_the_keras_optimizer(tmp_path):
    from wtool.graph.model import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="h"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="o")])
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9), loss="mse")
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    for i in range(12):  # train_on_batch, as a mid-training checkpoint: fit() would end by copying the EMA in
        model.train_on_batch(x[i % 4 * 16:(i % 4 + 1) * 16], x[i % 4 * 16:(i % 4 + 1) * 16].sum(axis=1))
    src = tmp_path / "trained.keras"
    model.save(src)
    from wtool.store.model_paths import weight_paths

    path_of = {id(v): p for p, v in weight_paths(model)}
    averages = {path_of[id(v)]: np.asarray(a) for v, a in zip(
        model.trainable_variables, model.optimizer._model_variables_moving_average, strict=True)}
    out = tmp_path / "ema.keras"
    res = run_cli("merge", src, "--ema", "-o", out, "--json")
    assert res.exit_code == 0, res
    got = _weights(out)
    before = _weights(src)
    for path in ("h/kernel", "h/bias", "bn/gamma", "bn/beta", "o/kernel", "o/bias"):
        np.testing.assert_array_equal(got[path], averages[path])
        assert not np.array_equal(got[path], before[path])
    np.testing.assert_array_equal(got["bn/moving_mean"], before["bn/moving_mean"])  # not trainable: kept
    assert {w["path"]: w["status"] for w in res.json()["weights"]}["bn/moving_mean"] == "kept"


def test_merge_does_not_import_tensorflow(three, tmp_path):
    import subprocess
    import sys

    _, (a, b, _c) = three
    code = ("import sys\nfrom wtool.cli import cli\n"
            f"cli(['merge', {str(a)!r}, {str(b)!r}, '-o', {str(tmp_path / 'm.keras')!r}, '-q'], standalone_mode=False)\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_read_back_check_catches_a_wrong_merged_byte(tmp_path, monkeypatch):
    """The check compares the written bytes with the CRC the merged value kept of itself: one flipped bit fails."""
    from wtool.store import write as store_write

    real = store_write._pwrite_all

    def flip(fd, data, offset):
        arr = np.frombuffer(memoryview(data).cast("B"), np.uint8).copy()
        arr[len(arr) // 2] ^= 1
        real(fd, arr, offset)

    monkeypatch.setattr(store_write, "_pwrite_all", flip)
    out = tmp_path / "m.keras"
    res = run_cli("merge", SAMPLES / "mlp.keras", SAMPLES / "mlp.keras", "-o", out)
    assert res.exit_code == 70 and "read-back check failed" in res.stderr, res
    assert not out.exists()
