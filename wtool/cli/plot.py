"""Pictures of results (`train --plot`, `eval --plot`), drawn with matplotlib, an optional extra.

matplotlib's object API (Figure + the Agg canvas) is used, not pyplot: no global state, no GUI
backend, nothing shown. Files are written atomically; the size is fixed (FIG_INCHES at DPI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wtool.errors import UsageError
from wtool.fileio import atomic_output

FORMATS = (".png", ".svg", ".pdf")
DPI = 100
FIG_INCHES = (8.0, 6.0)  # a PNG is 800 x 600 pixels
MAX_ANNOTATED_CLASSES = 30  # counts are written in the cells up to this many classes


def check_plot_target(path: str) -> None:
    """Before any work: the format is one matplotlib writes, and matplotlib is installed."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--plot {path}: unsupported picture format '{suffix or Path(path).name}'",
                         f"use one of {', '.join(FORMATS)}")
    _matplotlib()


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed",
                         "pip install 'wtool[plot]' (or pip install matplotlib)") from None
    return matplotlib, Figure, FigureCanvasAgg


def _save(figure: Any, canvas_class: Any, path: str) -> None:
    import matplotlib

    canvas_class(figure)
    # an SVG keeps its words as text (searchable, editable), not as outlines
    with matplotlib.rc_context({"svg.fonttype": "none"}), atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format=Path(path).suffix.lower().lstrip("."))


def plot_curves(path: str, history: list[dict[str, Any]]) -> None:
    """Loss and each metric per epoch, one panel each, training and validation in one panel."""
    _, figure_class, canvas = _matplotlib()
    from matplotlib import ticker

    keys = [k for k in (history[0] if history else {}) if k not in ("epoch", "seconds", "lr")
            and not k.startswith("val_")]
    keys = keys or ["loss"]
    figure = figure_class(figsize=FIG_INCHES)
    epochs = [r["epoch"] for r in history]
    for i, key in enumerate(keys):
        axes = figure.add_subplot(len(keys), 1, i + 1)
        axes.plot(epochs, [r.get(key) for r in history], marker="." if len(epochs) < 50 else None, label="train")
        if any(f"val_{key}" in r for r in history):
            axes.plot(epochs, [r.get(f"val_{key}") for r in history], marker="." if len(epochs) < 50 else None,
                      label="validation")
        axes.set_ylabel(key)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")
        axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if i == len(keys) - 1:
            axes.set_xlabel("epoch")
    figure.suptitle("training curves")
    figure.tight_layout()
    _save(figure, canvas, path)


def plot_confusion(path: str, classifications: list[dict[str, Any]]) -> None:
    """Each classifier output's confusion matrix as a heat map, one panel per output in one picture
    (rows the true class, columns the predicted one)."""
    import math

    import numpy as np

    _, figure_class, canvas = _matplotlib()
    figure = figure_class(figsize=FIG_INCHES)
    cols = min(len(classifications), 3)
    rows = math.ceil(len(classifications) / cols)
    small = len(classifications) > 1
    for i, classification in enumerate(classifications):
        matrix = np.asarray(classification["confusion_matrix"])
        classes = classification["classes"]
        axes = figure.add_subplot(rows, cols, i + 1)
        image = axes.imshow(matrix, cmap="Blues", interpolation="nearest")
        figure.colorbar(image, ax=axes, shrink=0.5 if small else 1.0)
        n = len(classes)
        if n <= MAX_ANNOTATED_CLASSES // (cols if small else 1):
            rotate = n > (4 if small else 8)
            axes.set_xticks(range(n), labels=classes, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                            fontsize="small" if small else None)
            axes.set_yticks(range(n), labels=classes, fontsize="small" if small else None)
            middle = matrix.max() / 2 if matrix.size else 0
            for (row, col), count in np.ndenumerate(matrix):
                axes.text(col, row, str(count), ha="center", va="center", fontsize="x-small" if small else "small",
                          color="white" if count > middle else "black")
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{classification['output']}: accuracy {classification['accuracy']:.4f}",
                       fontsize="medium" if small else None)
    figure.tight_layout()
    _save(figure, canvas, path)
