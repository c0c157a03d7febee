"""Folders of images (`DIR/<class>/*.png|jpg`) through Keras's own `image_dataset_from_directory`.

Decoding and resizing are Keras's, so a model sees exactly the pixels `model.fit` on the same
dataset would. The image size and colour mode default to the model's input shape
(`(None, 64, 64, 3)` -> 64x64 rgb); `--image-size` / `--color-mode` override them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.data.rows import RowSource
from wtool.errors import IncompatibleError, InputError, UsageError, WtoolError

COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
CHANNELS = {mode: channels for channels, mode in COLOR_MODES.items()}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass(frozen=True)
class ImageOptions:
    """--image-size HxW and --color-mode, as given (None: from the model's input shape); for a folder of
    text files (wtool.graph.text_folders), --max-length (Keras's max_length: characters kept per file)."""

    image_size: str | None = None
    color_mode: str | None = None
    max_length: int | None = None


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise UsageError(f"--image-size {text}: give HEIGHTxWIDTH (e.g. 64x64) or one number")
    return sizes[0], sizes[1]


def settings(options: ImageOptions, input_shape: Sequence[int | None] | None, folder: str) -> tuple[tuple[int, int], str]:
    """(height, width) and colour mode for a folder fed to a model with rows of `input_shape`."""
    rows = list(input_shape[1:]) if input_shape is not None else []
    fits = len(rows) == 3
    if options.image_size is not None:
        size = parse_size(options.image_size)
    elif fits and rows[0] is not None and rows[1] is not None:
        size = (int(rows[0]), int(rows[1]))
    else:
        raise UsageError(f"{folder}: the model's input shape does not say the image size",
                         "pass --image-size HEIGHTxWIDTH")
    mode = options.color_mode or (COLOR_MODES.get(int(rows[2])) if fits and rows[2] is not None else None) or "rgb"
    if fits and rows[2] is not None and CHANNELS[mode] != rows[2]:
        raise IncompatibleError(f"--color-mode {mode} gives {CHANNELS[mode]} channels; the model takes {rows[2]}")
    return size, mode


def _dataset(folder: str, size: tuple[int, int], mode: str, labels: bool,
             class_names: Sequence[str] | None = None) -> Any:
    from wtool.graph.model import import_keras

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{folder}: no such directory")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*") if p.is_file()):
        raise InputError(f"{folder}: no images (.png, .jpg, .jpeg, .bmp, .gif) in it or its subfolders")
    keras = import_keras()
    try:
        return keras.utils.image_dataset_from_directory(
            os.fspath(path), labels="inferred" if labels else None, label_mode="int" if labels else None,
            class_names=list(class_names) if class_names else None, color_mode=mode, batch_size=None,
            image_size=size, shuffle=False, verbose=False)
    except ValueError as exc:
        raise folder_error(folder, exc, class_names, "images", "DIR/<class>/*.png") from None


def folder_error(folder: str, exc: ValueError, class_names: Sequence[str] | None, files: str,
                 layout: str) -> WtoolError:
    """Keras's ValueError on a folder (image or text) in one line: class folders other than the model's
    `class_names` are exit 4, any other complaint about the folder exit 3 with the layout Keras reads."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if class_names and "class_names" in text:
        return IncompatibleError(f"{folder}: its class folders are not the model's classes "
                                 f"({', '.join(class_names)}): {text[:200]}")
    return InputError(f"{folder}: {text[:300]}", f"a labelled folder holds one subfolder of {files} per class: {layout}")


def load_labelled_images(folder: str, size: tuple[int, int], mode: str,
                         class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image (float32, 0-255 as Keras gives them) and its class index, in Keras's file order."""
    ds = _dataset(folder, size, mode, labels=True, class_names=class_names)
    names = list(ds.class_names)
    if len(names) < 2 and not class_names:
        raise InputError(f"{folder}: one class folder ({names[0] if names else 'none'}); a classifier needs two",
                         "put each class's images in its own subfolder: DIR/<class>/*.png")
    xs, ys = [], []
    for image, label in ds.batch(256).as_numpy_iterator():
        xs.append(image)
        ys.append(label)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), names


class ImageFolderSource(RowSource):
    """The images of a folder (class subfolders or none) as rows, read lazily; `row_names` are their paths."""

    def __init__(self, folder: str, size: tuple[int, int], mode: str) -> None:
        self.name = folder
        self.format = "images"
        self._ds = _dataset(folder, size, mode, labels=False)
        root = os.fspath(Path(folder))
        self.row_names = [os.path.relpath(p, root) for p in self._ds.file_paths]
        self.n_rows = len(self.row_names)
        self.row_shape = (size[0], size[1], CHANNELS[mode])
        self.dtype = np.dtype("float32")

    def _batches(self, batch_size: int, start: int, stop: int) -> Iterator[np.ndarray]:
        yield from self._ds.skip(start).take(stop - start).batch(batch_size).as_numpy_iterator()

    def close(self) -> None:
        self._ds = None
