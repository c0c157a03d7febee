"""Folders of text files (`DIR/<class>/*.txt`) through Keras's own `text_dataset_from_directory`.

A model that takes strings (an `Input(dtype="string")`, with a TextVectorization layer inside)
is fed each file's bytes exactly as `model.fit` on Keras's dataset of the same folder would see
them (in Keras's file order, `--max-length` as Keras's `max_length`). Texts are checked to be
UTF-8 first: TextVectorization would otherwise fail mid-run on the first bad file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wtool.data.rows import RowSource
from wtool.errors import IncompatibleError, InputError, UsageError

TEXT_EXTENSION = ".txt"


def takes_text(input_dtype: str | None) -> bool:
    """Whether a model input of this dtype is fed strings (a text folder, not an image folder)."""
    return str(input_dtype) == "string"


def numpy_dtype(input_dtype: str) -> np.dtype[Any]:
    """The numpy dtype rows are held in for a model input: object (Python bytes) for strings."""
    return np.dtype(object) if takes_text(input_dtype) else np.dtype(input_dtype)


def row_shape(input_shape: Sequence[int | None] | None, folder: str) -> tuple[int, ...]:
    """() or (1,): one string per file, shaped as the model's input (a batch of scalars or of 1-vectors)."""
    rows = tuple(input_shape[1:]) if input_shape is not None else ()
    if rows in ((), (1,), (None,)):
        return (1,) if rows else ()
    raise IncompatibleError(f"{folder}: a text folder gives one string per file; the model's string input "
                            f"takes rows of shape {rows}", "a text model's input is Input(shape=(), "
                            "dtype='string') or Input(shape=(1,), dtype='string')")


def check_max_length(max_length: int | None) -> None:
    if max_length is not None and max_length < 1:
        raise UsageError(f"--max-length must be at least 1 (not {max_length})")


def _files(folder: str) -> tuple[Path, int, int]:
    """The folder, its number of .txt files and of images (for a clear word when the model does not fit)."""
    from wtool.graph.folders import IMAGE_EXTENSIONS

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{folder}: no such directory")
    files = [p for p in path.rglob("*") if p.is_file()]
    texts = sum(1 for p in files if p.suffix.lower() == TEXT_EXTENSION)
    images = sum(1 for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
    return path, texts, images


def check_not_text(folder: str, input_dtype: str) -> None:
    """A folder of text files given to a model that takes numbers (images): exit 4, said plainly."""
    _path, texts, images = _files(folder)
    if texts and not images:
        raise IncompatibleError(f"{folder}: a folder of text files; the model takes {input_dtype} tensors, not "
                                "strings", "a text folder feeds a model with a string input (TextVectorization "
                                "inside); an image folder holds DIR/<class>/*.png|jpg")


def _dataset(folder: str, labels: bool, class_names: Sequence[str] | None, max_length: int | None) -> tuple[Any, list[str]]:
    """Keras's dataset of the folder (unbatched, in file order) and its files' paths relative to it."""
    from wtool.graph.model import import_keras

    path, texts, images = _files(folder)
    if not texts:
        if images:
            raise IncompatibleError(f"{folder}: a folder of images; the model takes strings (text)",
                                    "a text model reads DIR/<class>/*.txt")
        raise InputError(f"{folder}: no text files (.txt) in it or its subfolders")
    keras = import_keras()
    # Keras's own indexing, which text_dataset_from_directory uses: its file order, for the row names
    from keras.src.utils.dataset_utils import index_directory

    label_mode = "inferred" if labels else None
    names = list(class_names) if class_names else None
    try:
        ds = keras.utils.text_dataset_from_directory(
            os.fspath(path), labels=label_mode, label_mode="int" if labels else None, class_names=names,
            batch_size=None, max_length=max_length, shuffle=False, verbose=False)
        files, _labels, _names = index_directory(os.fspath(path), label_mode, formats=(TEXT_EXTENSION,),
                                                 class_names=names, shuffle=False, verbose=False)
    except ValueError as exc:
        from wtool.graph.folders import folder_error

        raise folder_error(folder, exc, class_names, "text files", "DIR/<class>/*.txt") from None
    return ds, [os.path.relpath(f, os.fspath(path)) for f in files]


def _checked_utf8(texts: list[bytes], files: list[str], folder: str, first: int = 0) -> None:
    for i, raw in enumerate(texts):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            name = files[first + i] if first + i < len(files) else f"file {first + i}"
            raise InputError(f"{folder}: {name} is not UTF-8 text (byte {exc.start})",
                             "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def load_labelled_texts(folder: str, shape: tuple[int, ...], class_names: Sequence[str] | None = None,
                        max_length: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every file's text (Python bytes, rows shaped `shape`) and its class index, in Keras's file order."""
    check_max_length(max_length)
    ds, files = _dataset(folder, True, class_names, max_length)
    names = list(ds.class_names)
    if len(names) < 2 and not class_names:
        raise InputError(f"{folder}: one class folder ({names[0] if names else 'none'}); a classifier needs two",
                         "put each class's text files in its own subfolder: DIR/<class>/*.txt")
    texts, ys = [], []
    for text, label in ds.as_numpy_iterator():
        texts.append(bytes(text))
        ys.append(int(label))
    _checked_utf8(texts, files, folder)
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return x.reshape((len(texts), *shape)), np.array(ys, dtype=np.int64), names


class TextFolderSource(RowSource):
    """The text files of a folder (class subfolders or none) as rows of strings; `row_names` are their paths."""

    def __init__(self, folder: str, shape: tuple[int, ...], max_length: int | None = None) -> None:
        check_max_length(max_length)
        self.name = folder
        self.format = "texts"
        self._ds, self.row_names = _dataset(folder, False, None, max_length)
        self.n_rows = len(self.row_names)
        self.row_shape = shape
        self.dtype = np.dtype("S")  # fed as bytes (object arrays of them), never cast

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        row = start
        for batch in self._ds.skip(start).take(stop - start).batch(batch_size).as_numpy_iterator():
            texts = [bytes(t) for t in batch]
            _checked_utf8(texts, self.row_names, self.name, row)
            out = np.empty(len(texts), dtype=object)
            out[:] = texts
            row += len(texts)
            yield out.reshape((len(texts), *self.row_shape))

    def close(self) -> None:
        self._ds = None
