"""Labelled data for models with several inputs or outputs: one array per model input and output.

Arrays are named with repeated options, either in the model's order (`--x-key a --x-key b`) or by
the model's input/output names (`--x-key image=pixels --x-key meta=tabular`), from one `.npz`
(keys), from `.npy` files (`--x image=img.npy`, memory-mapped), or from column groups of one CSV
(`--x-cols a=0-2 --x-cols b=x4,x5 --y-cols kind=label`, read with wtool.data's CSV reader). No
TensorFlow here: the model side is given as plain names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wtool.errors import IncompatibleError, InputError, UsageError
from wtool.fileio import check_input_file
from wtool.train.data import LabelledData, check_finite, validation_cut


@dataclass
class NamedData:
    """Arrays in the model's input order and output order, all with the same number of rows."""

    xs: list[np.ndarray]
    ys: list[np.ndarray]
    source: str
    class_names: list[str] | None = None  # one classifier output's names (string labels, class folders)

    def __len__(self) -> int:
        return int(self.xs[0].shape[0])


def parse_pairs(items: tuple[str, ...], option: str) -> list[tuple[str | None, str]]:
    """`NAME=VALUE` or `VALUE` items; all of one kind (by name, or by position)."""
    pairs: list[tuple[str | None, str]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if sep and (not name.strip() or not value.strip()):
            raise UsageError(f"{option} takes NAME=VALUE or VALUE (not '{item}')")
        pairs.append((name.strip(), value.strip()) if sep else (None, item))
    if len({name is None for name, _ in pairs}) > 1:
        raise UsageError(f"{option}: give every one as NAME=VALUE, or none (then they follow the model's order)")
    return pairs


def assign(pairs: list[tuple[str | None, str]], names: list[str], option: str, what: str) -> list[str]:
    """The VALUE for each model input (or output) name, in the model's order."""
    if pairs and pairs[0][0] is None:
        if len(pairs) != len(names):
            raise IncompatibleError(f"the model has {len(names)} {what}s ({', '.join(names)}); {option} was given "
                                    f"{len(pairs)} time(s)",
                                    f"give {option} once per {what}, in that order, or as NAME=KEY")
        return [value for _, value in pairs]
    by_name: dict[str, str] = {}
    for name, value in pairs:
        if name in by_name:
            raise UsageError(f"{option} {name}=...: given twice ({by_name[name]}, {value})",
                             f"give {option} once per {what}")
        if name not in names:
            raise UsageError(f"{option} {name}={value}: the model has no {what} '{name}'",
                             f"its {what}s: {', '.join(names)}")
        by_name[str(name)] = value
    missing = [n for n in names if n not in by_name]
    if missing:
        raise IncompatibleError(f"no data for the model's {what} '{missing[0]}'",
                                f"add {option} {missing[0]}=KEY")
    return [by_name[n] for n in names]


def _numeric(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what}: dtype {arr.dtype} is not numeric", "store features and labels as numbers")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise InputError(f"{what}: has no rows")
    return arr


def load_named(data: str | None, x_items: tuple[str, ...], y_items: tuple[str, ...], input_names: list[str],
               output_names: list[str]) -> NamedData:
    """From `data` (.npz: items are keys; .csv: column groups) or, without it, from .npy files (items are paths)."""
    csv = data is not None and Path(data).suffix.lower() in (".csv", ".tsv")
    x_option, y_option = ("--x-cols", "--y-cols") if csv else ("--x-key", "--y-key") if data else ("--x", "--y")
    x_pairs = parse_pairs(x_items, x_option)
    y_pairs = parse_pairs(y_items, y_option)
    if data is not None and csv:
        if not x_pairs or not y_pairs:
            raise UsageError(f"{data}: name the feature and label columns of each model input and output",
                             "--x-cols NAME=COLS ... --y-cols NAME=COLS ... (COLS: header names or 0-based "
                             "indexes, ranges like 0-783)")
        xs = [_columns(data, c) for c in assign(x_pairs, input_names, "--x-cols", "input")]
        ys = [_labels(_columns(data, c)) for c in assign(y_pairs, output_names, "--y-cols", "output")]
        source = data
    elif data is not None:
        path = check_input_file(data)
        if path.suffix.lower() != ".npz":
            raise UsageError(f"{data}: a model with several inputs or outputs reads a .npz (--x-key/--y-key NAME=KEY) "
                             "or .npy files (--x NAME=FILE --y NAME=FILE)")
        from wtool.store.arrays import load_npz

        archive = load_npz(path)

        def fetch(key: str, option: str) -> np.ndarray:
            if key not in archive:
                raise InputError(f"{data}: no array '{key}' (it has: {', '.join(archive) or 'nothing'})",
                                 f"name the arrays with {option} NAME=KEY")
            return _numeric(archive[key], f"{data}: array '{key}'")

        xs = [fetch(k, "--x-key") for k in assign(x_pairs, input_names, "--x-key", "input")]
        ys = [fetch(k, "--y-key") for k in assign(y_pairs, output_names, "--y-key", "output")]
        source = str(path)
    else:
        if not x_pairs or not y_pairs:
            raise UsageError("no data", "pass --data FILE.npz, or --x NAME=FILE.npy ... --y NAME=FILE.npy ...")
        xs = [_npy(f) for f in assign(x_pairs, input_names, "--x", "input")]
        ys = [_npy(f) for f in assign(y_pairs, output_names, "--y", "output")]
        source = ", ".join(Path(v).name for _, v in x_pairs + y_pairs)
    rows = {int(a.shape[0]) for a in xs + ys}
    if len(rows) > 1:
        raise IncompatibleError(f"{source}: the arrays have different row counts ({', '.join(map(str, sorted(rows)))})",
                                "every input and label array needs one row per sample")
    return NamedData(xs, ys, source)


def _columns(path: str, columns: str) -> np.ndarray:
    """One column group of a CSV as a float array (rows, columns)."""
    from wtool.data.rows import open_rows

    with open_rows(path, columns=columns) as rows:
        return rows.read(dtype="float64")


def _labels(values: np.ndarray) -> np.ndarray:
    """A label group: integers when every value is whole (class labels), else float32; one column drops its axis."""
    flat = values[:, 0] if values.shape[1] == 1 else values
    whole = np.all(np.isfinite(flat)) and np.all(flat == np.round(flat))
    return flat.astype(np.int64) if whole else flat.astype(np.float32)


def _npy(name: str) -> np.ndarray:
    from wtool.store.arrays import check_npy

    path = check_input_file(name)
    if path.suffix.lower() != ".npy":
        raise InputError(f"{name}: --x/--y take .npy files", "save arrays with numpy.save")
    check_npy(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{name}: cannot read as .npy ({str(exc).splitlines()[0]})") from None
    return _numeric(arr, name)


def check_finite_named(named: NamedData) -> None:
    """NaN or Inf in any input or label array is refused (exit 3), as for one x and y."""
    for i in range(max(len(named.xs), len(named.ys))):  # every array once (x and y go in pairs)
        check_finite(LabelledData(named.xs[min(i, len(named.xs) - 1)], named.ys[min(i, len(named.ys) - 1)],
                                  named.source))


def split_named(data: NamedData, fraction: float) -> tuple[NamedData, NamedData]:
    """Keras's validation_split for several arrays: the last `fraction` of the rows (before shuffling) validate."""
    cut = validation_cut(len(data), fraction)
    return (NamedData([a[:cut] for a in data.xs], [a[:cut] for a in data.ys], data.source, data.class_names),
            NamedData([a[cut:] for a in data.xs], [a[cut:] for a in data.ys], f"{data.source} (validation split)",
                      data.class_names))
