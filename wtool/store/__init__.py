"""The TensorFlow-free weight store: read .keras, legacy .h5 and .weights.h5 with h5py + zipfile.

Every weight has one canonical path, `LAYER[/SUB]/VAR`, the same in every format::

    with open_model("sample_models/nested.keras") as mf:
        for w in mf.weights:
            print(w.path, w.shape)          # features/d1/kernel (16, 32) ...
        kernel = mf.read("features/d1/kernel")
"""

from __future__ import annotations

import os

# No HDF5 filter plugins: a file must not make us load shared libraries. Set before h5py loads HDF5.
os.environ["HDF5_PLUGIN_PRELOAD"] = "::"
os.environ["HDF5_PLUGIN_PATH"] = os.devnull

from wtool.store.model_file import ModelFile, open_model  # noqa: E402
from wtool.store.select import matches, select  # noqa: E402
from wtool.store.types import LayerInfo, WeightInfo  # noqa: E402

__all__ = ["LayerInfo", "ModelFile", "WeightInfo", "matches", "open_model", "select"]
