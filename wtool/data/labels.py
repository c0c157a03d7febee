"""Class names for predictions and evaluation reports: a text file (one per line) or JSON."""

from __future__ import annotations

import os

from wtool.errors import InputError
from wtool.fileio import open_input
from wtool.safety import limits

__all__ = ["load_labels"]


def load_labels(path: str) -> tuple[str, ...]:
    """Class names: one per line of a text file, or a JSON list (or {"0": name, ...}) in a .json file.

    Read whole (never cut short, which would drop or split names); a file over the labels limit is
    refused (exit 3) rather than read into memory."""
    cap = limits.current().max_labels_bytes
    with open_input(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(cap + 1) if size <= cap else b""
    if size > cap or len(raw) > cap:  # (a file that grew while it was read is refused too)
        raise InputError(f"{path}: a labels file of {limits.fmt_bytes(max(size, len(raw)))}; wtool reads at most "
                         f"{limits.fmt_bytes(cap)} of class names",
                         "give one class name per line (or a JSON list), as many as the model has classes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: labels file is not UTF-8 text") from None
    if path.lower().endswith(".json"):
        import json

        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg})") from None
        if isinstance(doc, dict):
            try:
                pairs = sorted((int(k), str(v)) for k, v in doc.items())
            except ValueError:
                raise InputError(f"{path}: a JSON object of labels needs integer keys") from None
            if [k for k, _ in pairs] != list(range(len(pairs))):
                raise InputError(f"{path}: label keys must be 0..{len(pairs) - 1}")
            labels = [v for _, v in pairs]
        elif isinstance(doc, list):
            labels = [str(v) for v in doc]
        else:
            raise InputError(f"{path}: expected a JSON list of labels")
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    if not labels:
        raise InputError(f"{path}: no labels")
    return tuple(labels)
