"""Labelled data for `wtool train`: load x/y, split off validation, check they fit a model.

Sources: `.npz` (keys `x`/`y` or chosen ones), a pair of `.npy` files (memory-mapped, so
data larger than memory trains), `.csv` with a target column (numbers or string labels), a
folder of class subfolders of images (decoded by Keras in `wtool.graph.folders`, the one
place TensorFlow runs here). The model side of the checks is described by plain shapes (`ModelIO`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wtool.data.rows import is_number
from wtool.errors import IncompatibleError, InputError, InternalError, UsageError
from wtool.fileio import check_input_file
from wtool.graph.folders import ImageOptions

# Bytes scanned per step when checking a (possibly memory-mapped) array for NaN/Inf.
FINITE_CHUNK_BYTES = 64 * 1024 * 1024
# Largest CSV wtool parses in memory (a larger table belongs in .npy files).
CSV_MAX_BYTES = 2 * 1024**3


@dataclass
class LabelledData:
    """Features `x` and labels `y` with the same number of rows; `source` names them in messages."""

    x: np.ndarray
    y: np.ndarray
    source: str
    class_names: list[str] | None = None  # string labels' vocabulary (y holds indices into it)
    folder: bool = False  # rows are a folder's files in Keras's order: --val-split shuffles them first (seeded)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class ModelIO:
    """What a model takes and gives, without the batch axis."""

    input_shape: tuple[int | None, ...]
    input_dtype: str
    output_shape: tuple[int | None, ...]


def model_io(model: Any) -> ModelIO:
    """The shapes of a live keras.Model's one input and one output, for the checks here."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        n_in, n_out = len(model.inputs), len(model.outputs)
        raise IncompatibleError(f"the model has {n_in} input{'s' * (n_in != 1)} and {n_out} output{'s' * (n_out != 1)}; "
                                "name an array for each",
                                "--x-key NAME=KEY ... --y-key NAME=KEY ... for a .npz, --x-cols/--y-cols NAME=COLS for "
                                "a .csv, --x/--y NAME=FILE.npy (README 'train': several inputs or outputs)")
    inp = model.inputs[0]
    outp = model.outputs[0]
    return ModelIO(tuple(inp.shape[1:]), str(inp.dtype), tuple(outp.shape[1:]))


def fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def load_labelled(data: str | None = None, *, x: str | None = None, y: str | None = None,
                  x_key: str = "x", y_key: str = "y", target: str | None = None, drop: Sequence[str] = (),
                  classes: Sequence[str] | None = None, model: str | None = None,
                  images: ImageOptions | None = None) -> LabelledData:
    """Load one labelled data set from `data` (.npz / .csv) or from `x` and `y` (.npy).

    `classes` is the vocabulary saved with the model: string labels are encoded with it, so a
    model trained on `cat`/`dog` keeps its class numbers when training continues. A folder of
    class subfolders of images is read by Keras (wtool.graph.folders, sized for `model`).
    """
    if data is not None and Path(data).is_dir():
        if target is not None or drop:
            raise UsageError("--target/--drop are for .csv data; a folder's labels are its class subfolders")
        return _folder(data, model, images, classes)
    if drop and (data is None or Path(data).suffix.lower() != ".csv"):
        raise UsageError("--drop is for .csv data")
    if data is not None and (x is not None or y is not None):
        raise UsageError("give either --data FILE or --x FILE.npy --y FILE.npy, not both")
    if data is None:
        if x is None or y is None:
            raise UsageError("no training data", "pass --data FILE.npz|FILE.csv, or --x FILE.npy --y FILE.npy")
        return _pair(x, y)
    path = check_input_file(data)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if target is not None:
            raise UsageError("--target is for .csv data; a .npz file names its arrays with --x-key/--y-key")
        return _npz(path, x_key, y_key)
    if suffix == ".csv":
        if target is None:
            raise UsageError(f"{data}: a .csv needs --target COLUMN (the label column's name or 0-based index)")
        return _csv(path, target, drop, classes)
    if suffix == ".npy":
        raise UsageError(f"{data}: a single .npy holds no labels", "pass --x FEATURES.npy --y LABELS.npy")
    raise InputError(f"{data}: unsupported data format '{suffix or path.name}'",
                     "use .npz (arrays x and y), .csv with --target, or --x/--y .npy files")


def _folder(folder: str, model: str | None, images: ImageOptions | None,
            classes: Sequence[str] | None) -> LabelledData:
    """Class subfolders of images, or of text files for a model that takes strings (both read by Keras)."""
    from wtool.graph import text_folders
    from wtool.graph.folders import load_labelled_images, settings

    shape, dtype = model_input(model)
    options = images or ImageOptions()
    if text_folders.takes_text(dtype):
        x, y, names = text_folders.load_labelled_texts(folder, text_folders.row_shape(shape, folder), classes,
                                                       options.max_length)
        return LabelledData(x, y, folder, names, folder=True)
    if dtype is not None:
        text_folders.check_not_text(folder, dtype)
    size, mode = settings(options, shape, folder)
    x, y, names = load_labelled_images(folder, size, mode, classes)
    return LabelledData(x, y, folder, names, folder=True)


def model_input_shape(model: str | None) -> list[int | None] | None:
    """The first input's shape from the model file's config (no TensorFlow), or None."""
    return model_input(model)[0]


def model_input(model: str | None) -> tuple[list[int | None] | None, str | None]:
    """The first input's shape and dtype from the model file's config (no TensorFlow), or Nones."""
    if model is None:
        return None, None
    from wtool.store import open_model
    from wtool.store.shapes import io_shapes

    with open_model(model) as mf:
        shapes = io_shapes(mf.config)
    if not shapes or not shapes["inputs"]:
        return None, None
    return shapes["inputs"][0]["shape"], shapes["inputs"][0]["dtype"]


def _checked(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what}: dtype {arr.dtype} is not numeric", "store features and labels as numbers")
    if arr.ndim == 0:
        raise InputError(f"{what}: a scalar, not an array of rows")
    if arr.shape[0] == 0:
        raise InputError(f"{what}: has no rows")
    return arr


def _pair(x: str, y: str) -> LabelledData:
    arrays = []
    for label, name in (("--x", x), ("--y", y)):
        path = check_input_file(name)
        if path.suffix.lower() != ".npy":
            raise InputError(f"{name}: {label} takes a .npy file", "save arrays with numpy.save")
        from wtool.store.arrays import check_npy

        check_npy(path)  # header, numeric dtype, declared size == file size, before memory-mapping
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{name}: cannot read as .npy ({str(exc).splitlines()[0]})") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read as .npy ({exc})") from None
        arrays.append(_checked(arr, name))
    data = LabelledData(arrays[0], arrays[1], f"{x} / {y}")
    _same_rows(data, x, y)
    return data


def _npz(path: Path, x_key: str, y_key: str) -> LabelledData:
    from wtool.store.arrays import load_npz

    archive = load_npz(path)  # zip structure, headers, numeric dtypes and sizes checked; nothing unpickled
    keys = list(archive)
    arrays = []
    for option, key in (("--x-key", x_key), ("--y-key", y_key)):
        if key not in keys:
            have = ", ".join(keys) or "nothing"
            raise InputError(f"{path}: no array '{key}' (it has: {have})",
                             f"name the arrays with {option} KEY" if keys else None)
        arrays.append(_checked(archive[key], f"{path}: array '{key}'"))
    data = LabelledData(arrays[0], arrays[1], str(path))
    _same_rows(data, f"'{x_key}'", f"'{y_key}'")
    return data


def _csv(path: Path, target: str, drop: Sequence[str] = (), classes: Sequence[str] | None = None) -> LabelledData:
    header, body, has_header = _csv_rows(path)
    names = header if has_header else [str(i) for i in range(len(header))]
    col = _column(path, names, target, "--target", "name the label column with --target (a header name or a "
                  "0-based index)")
    dropped = {_column(path, names, d, "--drop", "name the columns to leave out with --drop") for d in drop}
    if col in dropped:
        raise UsageError(f"--drop {target}: that is the --target column")
    if len(names) < 2:
        raise InputError(f"{path}: only one column; features and a target need at least two")
    keep = [j for j in range(len(names)) if j != col and j not in dropped]
    if not keep:
        raise UsageError(f"{path}: --drop leaves no feature columns")
    x = np.empty((len(body), len(keep)), dtype=np.float64)
    labels: list[str] = []
    for i, row in enumerate(body):
        line = i + (2 if has_header else 1)
        if len(row) != len(names):
            raise InputError(f"{path}: line {line} has {len(row)} fields, the header has {len(names)}")
        label = row[col].strip()
        if not label:
            raise InputError(f"{path}: line {line}, column '{names[col]}': the label is empty",
                             "fill in or remove rows without a label")
        labels.append(label)
        for k, j in enumerate(keep):
            cell = row[j]
            if not cell.strip():
                raise InputError(f"{path}: line {line}, column '{names[j]}': the cell is empty",
                                 "fill in missing values (or leave the column out with --drop)")
            try:
                x[i, k] = float(cell)
            except ValueError:
                raise InputError(f"{path}: line {line}, column '{names[j]}': '{cell}' is not a number",
                                 "features must be numbers: encode categories as numbers first, or leave the "
                                 "column out with --drop") from None
    y, vocabulary = _encode_labels(path, labels, classes)
    return LabelledData(x.astype(np.float32), y, str(path), vocabulary)


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]], bool]:
    if path.stat().st_size > CSV_MAX_BYTES:
        raise InputError(f"{path}: larger than {CSV_MAX_BYTES // 1024**3} GB", "convert it to .npy and use --x/--y")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            text = fh.read()
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a UTF-8 text file") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty CSV")
    header = [c.strip() for c in rows[0]]
    has_header = not all(is_number(c) for c in header)
    body = rows[1:] if has_header else rows
    if not body:
        raise InputError(f"{path}: a header but no rows")
    return header, body, has_header


def _column(path: Path, names: list[str], wanted: str, option: str, hint: str) -> int:
    if wanted in names:
        return names.index(wanted)
    if wanted.lstrip("-").isdigit() and -len(names) <= int(wanted) < len(names):
        return int(wanted) % len(names)
    raise InputError(f"{path}: no column '{wanted}' for {option} (columns: {', '.join(names)})", hint)


def _encode_labels(path: Path, labels: list[str], classes: Sequence[str] | None) -> tuple[np.ndarray,
                                                                                           list[str] | None]:
    """Numbers stay numbers; string labels become indices into a sorted vocabulary (the saved one, if any)."""
    if all(is_number(v) for v in labels):
        y = np.array([float(v) for v in labels])
        if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            return y.astype(np.int64), None
        return y.astype(np.float32), None
    vocabulary = list(classes) if classes else sorted(set(labels))
    index = {name: i for i, name in enumerate(vocabulary)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise IncompatibleError(f"{path}: labels {shown} are not among the model's classes "
                                f"({', '.join(vocabulary[:10])}{', ...' if len(vocabulary) > 10 else ''})",
                                "the classes were saved when the model was first trained on string labels")
    return np.array([index[v] for v in labels], dtype=np.int64), vocabulary


def _same_rows(data: LabelledData, x_name: str, y_name: str) -> None:
    if data.x.shape[0] != data.y.shape[0]:
        raise IncompatibleError(f"{data.source}: x {x_name} has {data.x.shape[0]} rows but y {y_name} has "
                                f"{data.y.shape[0]}", "features and labels need one row each per sample")


def split_validation(data: LabelledData, fraction: float,
                     seed: int | None = None) -> tuple[LabelledData, LabelledData]:
    """--val-split: arrays as Keras's fit(validation_split) (the last `fraction` of the rows, unshuffled);
    a folder as Keras's image/text_dataset_from_directory(validation_split, subset, seed): its files
    shuffled with numpy's RandomState(seed), then the last int(fraction * n) of them validate."""
    train: slice | np.ndarray
    val: slice | np.ndarray
    if not data.folder:
        cut = validation_cut(len(data), fraction)
        train, val = slice(None, cut), slice(cut, None)
    else:
        if seed is None:
            raise InternalError("a folder's validation split needs the run's seed")
        cut = validation_cut(len(data), fraction, folder=True)
        order = np.random.RandomState(seed % 2**32).permutation(len(data))
        train, val = order[:cut], order[cut:]  # Keras's order (its training subset is in shuffled order)
    return (LabelledData(data.x[train], data.y[train], data.source, data.class_names),
            LabelledData(data.x[val], data.y[val], f"{data.source} (validation split)", data.class_names))


def validation_cut(n: int, fraction: float, folder: bool = False) -> int:
    """The first validation row of `n` for --val-split `fraction` (checked to leave rows on both sides).

    A folder counts int(fraction * n) validation files, as Keras's get_training_or_validation_split;
    arrays train on the first floor(n * (1 - fraction)) rows, as Keras 3's `fit(validation_split=...)` does."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1 (not {fraction})")
    n_val = int(fraction * n) if folder else n - int(math.floor(n * (1.0 - fraction)))
    if n_val < 1 or n_val >= n:
        what = "files" if folder else "rows"
        raise UsageError(f"--val-split {fraction} of {n} {what} leaves {n - n_val} to train and {n_val} to validate",
                         "use a fraction that leaves at least one row on each side")
    return n - n_val


def saved_class_names(model: str) -> list[str] | None:
    """The class names saved with a model file (wtool.store.class_names), or None."""
    from wtool.store import open_model

    with open_model(model) as mf:
        return mf.class_names


def check_finite(data: LabelledData) -> None:
    """NaN or Inf anywhere in x or y is refused (exit 3), naming the first bad row. Memory-mapped data is scanned in chunks."""
    for name, arr in (("x", data.x), ("y", data.y)):
        if arr.dtype.kind != "f":
            continue
        row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
        step = max(1, FINITE_CHUNK_BYTES // row_bytes)
        for start in range(0, arr.shape[0], step):
            block = np.asarray(arr[start:start + step])
            ok = np.isfinite(block)
            if not ok.all():
                bad = np.argwhere(~ok)[0]
                row = start + int(bad[0])
                value = block[tuple(bad)]
                raise InputError(f"{data.source}: {name} has {value} in row {row}",
                                 "remove or impute rows with NaN/Inf before training")


def check_fits(data: LabelledData, io_: ModelIO, loss: str | None) -> None:
    """Refuse (exit 4) features or labels that do not fit the model or the loss, naming both sides.

    Flat rows whose length is the product of the model's input shape (784 CSV columns for a
    (28, 28, 1) image) are reshaped to it first, as `infer` does.
    """
    want = io_.input_shape
    dims = [int(w) for w in want if w is not None]
    if data.x.ndim == 2 and len(want) > 1 and len(dims) == len(want) and math.prod(dims) == data.x.shape[1]:
        data.x = data.x.reshape((data.x.shape[0], *dims))
    rows = tuple(data.x.shape[1:])
    if len(rows) != len(want) or any(w is not None and w != r for w, r in zip(want, rows, strict=False)):
        raise IncompatibleError(f"model expects {fmt_shape((None, *want))}; x has rows of shape {fmt_shape(rows)}",
                                f"in {data.source}; reshape the data or pick a model with that input")
    if io_.input_dtype.startswith("int") and data.x.dtype.kind == "f":
        head = np.asarray(data.x[:10000])
        if not np.all(head == np.round(head)):
            raise IncompatibleError(f"model expects integer inputs ({io_.input_dtype}); x has fractional values",
                                    f"in {data.source}")
    out = io_.output_shape
    ys = tuple(data.y.shape[1:])
    lname = (loss or "").lower().replace("_", "")
    sparse = "sparsecategorical" in lname
    if sparse:
        if out and out[-1] is not None:
            classes = out[-1]
            expect = out[:-1]
            if ys not in (expect, (*expect, 1)):
                raise IncompatibleError(f"loss {loss} wants integer class labels of shape {fmt_shape(expect)} per row "
                                        f"(model output {fmt_shape((None, *out))}); y has rows of shape {fmt_shape(ys)}",
                                        "for one-hot labels use --loss categorical_crossentropy")
            sample = np.asarray(data.y)
            if sample.dtype.kind == "f" and not np.all(sample == np.round(sample)):
                raise IncompatibleError(f"loss {loss} wants integer class labels; y has fractional values",
                                        f"in {data.source}")
            lo, hi = sample.min(), sample.max()
            if lo < 0 or hi >= classes:
                raise IncompatibleError(f"model has {classes} classes (labels 0..{classes - 1}); y has labels "
                                        f"from {lo:g} to {hi:g}", f"in {data.source}")
        return
    if _fits(ys, out):
        if "binarycrossentropy" in lname or "binaryfocal" in lname:
            sample = np.asarray(data.y)
            if sample.min() < 0 or sample.max() > 1:
                raise IncompatibleError(f"loss {loss} wants labels in [0, 1]; y has values from {sample.min():g} "
                                        f"to {sample.max():g}", f"in {data.source}")
        if "categoricalcrossentropy" in lname and out and out[-1] not in (None, 1) and len(ys) == len(out) - 1:
            raise IncompatibleError(f"loss {loss} wants one-hot labels of shape {fmt_shape(out)}; y has rows of "
                                    f"shape {fmt_shape(ys)}",
                                    "for integer class labels use --loss sparse_categorical_crossentropy")
        return
    hint = None
    if len(ys) == len(out) - 1 and out and out[-1] not in (None, 1):
        hint = "integer class labels? use --loss sparse_categorical_crossentropy"
    raise IncompatibleError(f"model output is {fmt_shape((None, *out))}; y has rows of shape {fmt_shape(ys)}"
                            + (f" (loss {loss})" if loss else ""), hint or f"in {data.source}")


def _fits(ys: tuple[int, ...], out: tuple[int | None, ...]) -> bool:
    def same(a: tuple[int, ...], b: tuple[int | None, ...]) -> bool:
        return len(a) == len(b) and all(w is None or w == r for w, r in zip(b, a, strict=False))

    if same(ys, out):
        return True
    # (n,) labels for a (None, 1) output, as Keras's losses squeeze/expand one axis.
    if out and out[-1] == 1 and same(ys, out[:-1]):
        return True
    return bool(ys and ys[-1] == 1 and same(ys[:-1], out))

