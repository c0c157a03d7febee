"""How sample_models/tf_keras2/ was made: tf.keras 2's `model.save_weights("prefix")` (TF checkpoint format).

Needs the tf_keras package (not a wtool dependency): `pip install tf-keras`, then run this from the repository.
The files are committed so the tests need no tf_keras.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tf_keras as k  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "sample_models", "tf_keras2")

k.utils.set_random_seed(0)
inp = k.Input((4,), name="x")
inner = k.Sequential([k.layers.Dense(5, name="d1"), k.layers.BatchNormalization(name="bn")], name="features")
net = k.Model(inp, k.layers.Dense(2, name="head")(inner(inp)), name="net")
net.compile("adam", "mse")
net.fit(np.random.rand(8, 4), np.random.rand(8, 2), verbose=0)
net.save_weights(os.path.join(OUT, "nested"))  # nested model: keys layer_with_weights-0/layer_with_weights-0/...
flat = k.Sequential([k.Input((3,)), k.layers.Dense(4, name="dense_a"), k.layers.Dense(1, name="dense_b")])
flat.save_weights(os.path.join(OUT, "flat"))  # the state file `checkpoint` names this one, the latest
