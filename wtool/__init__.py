"""wtool: everything people do with a Keras model's weights."""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _no_hdf5_plugins() -> None:
    """Never let a file make HDF5 search for and load filter plugins (shared libraries).

    HDF5 reads these variables once, when h5py first loads it, so they are set as soon as
    wtool is imported (before wtool, Keras or TensorFlow import h5py). If a host program
    loaded h5py earlier, its plugin search path is emptied instead.
    """
    _os.environ["HDF5_PLUGIN_PRELOAD"] = "::"
    _os.environ["HDF5_PLUGIN_PATH"] = _os.devnull
    if "h5py" in _sys.modules:
        from h5py import h5pl

        while h5pl.size():
            h5pl.remove(0)


_no_hdf5_plugins()
