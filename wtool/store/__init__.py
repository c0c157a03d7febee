"""The TensorFlow-free weight store: read .keras, legacy .h5 and .weights.h5 with h5py + zipfile.

Every weight has one canonical path, `LAYER[/SUB]/VAR`, the same in every format::

    with open_model("sample_models/nested.keras") as mf:
        for w in mf.weights:
            print(w.path, w.shape)          # features/d1/kernel (16, 32) ...
        kernel = mf.read("features/d1/kernel")

Owns: every on-disk weight format (readers per layout, the HDF5-level writer `write`, the
`.npz`/`.npy` weight arrays `arrays`/`npz`), and weight naming: `naming` for file layouts,
`model_paths` for a live `keras.Model` (the same paths). No TensorFlow.
May import: `wtool.safety` and the foundation modules only.
"""

from __future__ import annotations

from wtool.store.model_file import ModelFile, open_model
from wtool.store.select import matches, select
from wtool.store.types import LayerInfo, WeightInfo

__all__ = ["LayerInfo", "ModelFile", "WeightInfo", "matches", "open_model", "select"]
