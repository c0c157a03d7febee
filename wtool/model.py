"""Loading and saving Keras model graphs (TensorFlow is imported here, lazily).

The one place graph commands (train, infer, transfer --replace-head, new) get a
`keras.Model` from a file and write one back. Files are loaded in Keras safe mode;
anything that needs code refuses with exit 5 unless `unsafe`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wtool.errors import IncompatibleError, InputError, UnsafeError
from wtool.fileio import atomic_output, check_input_file

if TYPE_CHECKING:  # pragma: no cover
    import keras


def import_keras() -> Any:
    """Import keras quietly (TF's C++ logging off) and return the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    import keras

    logging.getLogger("absl").setLevel(logging.ERROR)
    return keras


def load_model(path: str | os.PathLike[str], *, unsafe: bool = False, arch: str | None = None,
               compile: bool = False) -> keras.Model:
    """Load a model for graph work. `arch` gives the architecture for a weights-only file."""
    keras = import_keras()
    path = check_input_file(path)
    name = path.name.lower()
    if name.endswith(".weights.h5"):
        if arch is None:
            raise IncompatibleError(f"{path}: a weights-only file has no architecture",
                                    "pass --arch MODEL (a .keras or .h5 file of the same architecture)")
        model = load_model(arch, unsafe=unsafe, compile=compile)
        try:
            model.load_weights(path)
        except ValueError as exc:
            raise IncompatibleError(f"{path}: weights do not fit {arch}: {str(exc).splitlines()[0]}") from None
        return model
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=compile)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "unsafe" in text.lower():
            raise UnsafeError(f"{path}: refused: the model needs code to load ({text.splitlines()[0][:200]})",
                              "pass --unsafe only if you trust this file") from None
        raise InputError(f"{path}: cannot load the model: {text.splitlines()[0][:300]}") from None
    except (OSError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: cannot load the model: {str(exc).splitlines()[0][:300]}") from None


def save_model(model: keras.Model, out: str | os.PathLike[str], *, include_optimizer: bool = True) -> None:
    """Write a model atomically; the format follows OUT's extension."""
    out = Path(out)
    with atomic_output(out) as tmp:
        if out.name.endswith(".weights.h5"):
            model.save_weights(tmp)
        elif out.suffix in (".h5", ".hdf5"):
            model.save(tmp, include_optimizer=include_optimizer)
        else:
            model.save(tmp)
