"""Keras preprocessing layers whose state is not a weight: lookup vocabularies.

An adapted `IntegerLookup`, `StringLookup` or `TextVectorization` keeps its vocabulary in
the .keras archive's assets, not among the weights, so a legacy .h5 or a .weights.h5
(with an architecture that has no assets) loads with an empty table, and Keras itself then
fails on the first call ("Table not initialized"). This is found before running.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from wtool.errors import IncompatibleError
from wtool.safety.limits import shown

LOOKUP_CLASSES = ("IntegerLookup", "StringLookup", "TextVectorization")


def _lookup_of(layer: Any) -> Any:
    """The layer holding the table: TextVectorization delegates to an inner StringLookup."""
    return getattr(layer, "_lookup_layer", layer)


def _layers(model: Any) -> Iterator[Any]:
    flatten = getattr(model, "_flatten_layers", None)
    yield from (flatten(include_self=False, recursive=True) if flatten is not None else getattr(model, "layers", []))


def empty_vocabularies(model: Any) -> list[Any]:
    """The lookup layers of `model` whose table is empty (never adapted, or lost on saving)."""
    empty = []
    for layer in _layers(model):
        if type(layer).__name__ not in LOOKUP_CLASSES:
            continue
        table = getattr(_lookup_of(layer), "lookup_table", None)
        if table is not None and int(table.size()) == 0:
            empty.append(layer)
    return empty


def require_vocabularies(model: Any, path: str) -> None:
    """IncompatibleError naming the lookup layers that have no vocabulary to look up with."""
    empty = empty_vocabularies(model)
    if not empty:
        return
    names = ", ".join(f"{shown(layer.name)} ({type(layer).__name__})" for layer in empty)
    raise IncompatibleError(
        f"{path}: {names} {'has' if len(empty) == 1 else 'have'} no vocabulary: a legacy .h5 or a .weights.h5 "
        "does not store an adapted vocabulary (Keras keeps it in a .keras file's assets)",
        "give --arch a .keras file of the same model" if path.lower().endswith(".weights.h5")
        else "save the model as .keras (model.save('model.keras'))")


def check_output_keeps_vocabularies(model: Any, out: str) -> None:
    """Refuse (exit 2) writing a model with an adapted vocabulary to a file that cannot hold one (.h5,
    .weights.h5): it would be written, then fail to load for inference."""
    from wtool.errors import UsageError

    if out.lower().endswith(".keras"):
        return
    adapted = [layer for layer in _layers(model) if type(layer).__name__ in LOOKUP_CLASSES
               and getattr(_lookup_of(layer), "lookup_table", None) is not None
               and int(_lookup_of(layer).lookup_table.size()) > 0]
    if adapted:
        names = ", ".join(f"{shown(layer.name)} ({type(layer).__name__})" for layer in adapted[:3])
        raise UsageError(f"-o {out}: the vocabulary of {names} is kept only in a .keras file's assets; this "
                         "format would drop it", "write the trained model as .keras")
