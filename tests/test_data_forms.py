"""The data people have (issue 15 §4): a training CSV used as-is for inference (--target/--drop),
flat CSV rows reshaped for train, string labels in a CSV. Values checked against Keras."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.tf, pytest.mark.xdist_group("data_forms")]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A CSV with an id column, 4 features and a label, and a Keras model for the features."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    d = tmp_path_factory.mktemp("forms")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["id,a,b,c,d,label"] + [",".join([str(i), *(repr(float(v)) for v in x[i]), str(y[i])])
                                    for i in range(len(x))]
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(d / "m.keras")
    return d, x, y, model


def test_infer_takes_the_training_csv_with_target_and_drop(table):
    d, x, _y, model = table
    res = run_cli("infer", d / "m.keras", d / "train.csv")
    assert res.exit_code == 4
    assert "input rows have shape (6,)" in res.stderr and "--columns" in res.stderr and "--target" in res.stderr
    res = run_cli("infer", d / "m.keras", d / "train.csv", "--target", "label", "--drop", "id", "-o", d / "p.npy")
    assert res.exit_code == 0, res
    np.testing.assert_allclose(np.load(d / "p.npy"), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    # a file of new rows without the label column: --target is simply not there
    rows = (d / "train.csv").read_text().splitlines()
    (d / "new.csv").write_text("\n".join(",".join(r.split(",")[:5]) for r in rows) + "\n")
    res = run_cli("infer", d / "m.keras", d / "new.csv", "--target", "label", "--drop", "id", "-o", d / "q.npy")
    assert res.exit_code == 0, res
    np.testing.assert_array_equal(np.load(d / "q.npy"), np.load(d / "p.npy"))
    res = run_cli("infer", d / "m.keras", d / "train.csv", "--drop", "nope")
    assert res.exit_code == 2 and "no column 'nope'" in res.stderr
