"""`wtool eval`: loss and metrics on labelled data with frozen weights, a confusion matrix for classifiers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from wtool.cli.commands.common import (
    InputPath,
    OutputPath,
    array_options,
    column_options,
    common_options,
    folder_options,
    loss_options,
    unsafe_option,
)
from wtool.cli.render import Output, cell, fmt_float, fmt_int

if TYPE_CHECKING:  # pragma: no cover - rich stays out of `wtool --help`
    from rich.console import Console

MAX_TABLE_CLASSES = 20  # a wider confusion matrix is in --json (and --plot) only


def _progress(out: Output) -> tuple[Callable[[int, int], None] | None, Any]:
    if not out.show_progress:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=out.stderr, transient=True)
    task = bar.add_task("eval", total=None)
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.1 or done == total:  # a few updates a second at most
            bar.update(task, completed=done, total=total)
            last[0] = now

    return update, bar


def _render(document: dict[str, Any]) -> Callable[[Console], None]:
    def human(console: Console) -> None:
        from rich.table import Table

        console.print(f"evaluated {cell(document['model'])} on {cell(document['data'])}: "
                      f"{fmt_int(document['rows'])} rows, batch {document['batch_size']}, loss {cell(document['loss'])}",
                      highlight=False)
        metrics = Table(box=None, show_header=False, pad_edge=False)
        metrics.add_column(style="bold")
        metrics.add_column(justify="right")
        for name, value in document["metrics"].items():
            metrics.add_row(cell(name), fmt_float(value))
        console.print(metrics)
        for c in document["classification"]:
            _render_classification(console, c, Table)
        for gate in document["gates"]:
            verdict = "passed" if gate["passed"] else "[bold red]FAILED[/]"
            sign = "<=" if gate["option"] == "--fail-above" else ">="
            console.print(f"gate {cell(gate['metric'])} {fmt_float(gate['value'])} {sign} {fmt_float(gate['threshold'])}: "
                          f"{verdict}", highlight=False)
        if document.get("plot"):
            console.print(f"plot       {cell(document['plot'])}", highlight=False)

    return human


def _render_classification(console: Console, c: dict[str, Any], table_class: Any) -> None:
    classes = c["classes"]
    console.print(f"\n[bold]{cell(c['output'])}[/]: accuracy {fmt_float(c['accuracy'])}, macro F1 "
                  f"{fmt_float(c['macro_f1'])} over {len(classes)} classes", highlight=False)
    if len(classes) <= MAX_TABLE_CLASSES:
        matrix = table_class(title="confusion matrix (rows: true, columns: predicted)", title_justify="left",
                             box=None, header_style="bold", pad_edge=False)
        matrix.add_column("true \\ pred", style="bold")
        for name in classes:
            matrix.add_column(cell(name), justify="right")
        for name, row in zip(classes, c["confusion_matrix"], strict=True):
            matrix.add_row(cell(name), *(fmt_int(v) for v in row))
        console.print(matrix)
    else:
        console.print(f"confusion matrix of {len(classes)} classes: see --json or --plot", highlight=False)
    per_class = table_class(box=None, header_style="bold", pad_edge=False)
    for head in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(head, justify="left" if head == "class" else "right")
    for row in c["per_class"]:
        per_class.add_row(cell(row["class"]), fmt_float(row["precision"]), fmt_float(row["recall"]),
                          fmt_float(row["f1"]), fmt_int(row["support"]))
    per_class.add_row("macro avg", fmt_float(c["macro_precision"]), fmt_float(c["macro_recall"]),
                      fmt_float(c["macro_f1"]), fmt_int(sum(r["support"] for r in c["per_class"])), style="dim")
    console.print(per_class)


@click.command(name="eval")
@click.argument("model", type=InputPath)
@click.option("--data", type=InputPath, help="Labelled data: .npz (arrays x, y), .csv (with --target), or a folder "
              "with one subfolder per class of images, or of text files (.txt) for a model that takes strings.")
@array_options(x="Features as .npy (memory-mapped); with --y. Several inputs: NAME=FILE per input (repeat).",
               y="Labels as .npy (memory-mapped). Several outputs: NAME=FILE per output (repeat).",
               x_key="Feature array of a .npz (default x). Several inputs: NAME=KEY per input, or KEY in input order.",
               y_key="Label array of a .npz (default y). Several outputs: NAME=KEY per output, or KEY in output "
               "order.")
@click.option("--target", help="Label column of a .csv (header name or 0-based index; numbers, or the string "
              "labels the model was trained on); the rest are features.")
@click.option("--drop", multiple=True, metavar="COLUMNS", help="CSV columns that are not features (as in train).")
@folder_options
@column_options
@click.option("--val-split", "--validation-split", "val_split", type=float, metavar="F",
              help="Evaluate only the validation part of train --val-split F: the last F of the rows; of a folder, "
              "the files Keras's image/text_dataset_from_directory(validation_split=F, subset='validation', "
              "seed=S) gives (needs --seed S).")
@click.option("--seed", type=int, help="The seed of a folder's --val-split (the one train used, printed by train).")
@click.option("--arch", type=InputPath, metavar="MODEL", help="Architecture (.keras/.h5) for a weights-only MODEL.")
@unsafe_option
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N", help="Rows per batch (default 256).")
@loss_options(loss="Loss instead of the model's saved one (mse, sparse_categorical_crossentropy, ...); NAME=LOSS "
              "per output (repeat).",
              loss_weight="Weight of an output's loss in the total (repeatable), as compile's loss_weights.",
              metric="A Keras metric by name (repeatable; replaces the saved ones); NAME=METRIC for one output "
              "only.")
@click.option("--labels", "labels_path", type=InputPath, metavar="FILE",
              help="Class names for the confusion matrix (one per line, or a JSON list).")
@click.option("--fail-under", multiple=True, metavar="METRIC=VALUE",
              help="Exit 1 when METRIC is below VALUE (repeatable; metrics that are better when higher).")
@click.option("--fail-above", multiple=True, metavar="METRIC=VALUE",
              help="Exit 1 when METRIC is above VALUE (repeatable; loss-like metrics, better when lower).")
@click.option("--plot", "plot_path", type=OutputPath, metavar="FILE.png",
              help="Draw the confusion matrix to FILE (.png, .svg, .pdf; needs matplotlib: wtool[plot]); one panel per "
              "classifier output.")
@common_options
def command(out: Output, model: str, data: str | None, x_files: tuple[str, ...], y_files: tuple[str, ...],
            x_keys: tuple[str, ...], y_keys: tuple[str, ...], target: str | None, drop: tuple[str, ...],
            image_size: str | None, color_mode: str | None, max_length: int | None, x_cols: tuple[str, ...],
            y_cols: tuple[str, ...], val_split: float | None, seed: int | None, arch: str | None, unsafe: bool,
            batch_size: int | None, losses: tuple[str, ...], loss_weights: tuple[str, ...], metrics: tuple[str, ...], labels_path: str | None, fail_under: tuple[str, ...],
            fail_above: tuple[str, ...], plot_path: str | None) -> None:
    """Loss and metrics of MODEL on labelled data, with frozen weights (training=False), as model.evaluate gives them.

    Loss and metrics come from the model's saved compile config (or --loss / --metric). A
    classifier output also gets accuracy, a confusion matrix and per-class precision, recall
    and F1. With --fail-under / --fail-above the exit code is 1 when a metric misses its bound,
    so a CI job can gate on a model.

    Examples:

    \b
      wtool eval sample_models/mlp.keras --data sample_models/mlp.npz
      wtool eval sample_models/mlp.keras --data sample_models/mlp.npz --metric accuracy --fail-under accuracy=0.05
      wtool eval model.keras --x test_x.npy --y test_y.npy --labels classes.txt --plot confusion.png --json
      wtool eval two.keras --data test.npz --x-key a=xa --x-key b=xb --y-key value=y1 --y-key kind=y2
      wtool eval sample_models/texts.keras --data sample_models/texts/ --max-length 200
      wtool eval images-trained.keras --data sample_models/images/ --val-split 0.25 --seed 0
    """
    from wtool.train.evaluate import EvalOptions, check_gates, evaluate, parse_gates

    gates = parse_gates(fail_under, fail_above)
    if plot_path is not None:
        from wtool.cli.plot import check_plot_target

        check_plot_target(plot_path)
    labels = None
    if labels_path is not None:
        from wtool.data.labels import load_labels

        labels = load_labels(labels_path)
    opts = EvalOptions(model=model, data=data, x_files=x_files, y_files=y_files, x_keys=x_keys, y_keys=y_keys,
                       x_cols=x_cols, y_cols=y_cols, target=target,
                       drop=tuple(c for item in drop for c in item.split(",") if c.strip()), image_size=image_size,
                       color_mode=color_mode, max_length=max_length, arch=arch, unsafe=unsafe, batch_size=batch_size, loss=losses,
                       loss_weights=loss_weights, metrics=metrics, labels=labels, val_split=val_split, seed=seed)
    update, bar = _progress(out)
    if bar is not None:
        bar.start()
    try:
        report = evaluate(opts, update)
    finally:
        if bar is not None:
            bar.stop()
    document = report.as_dict()
    document["gates"] = check_gates(gates, report.values())
    document["passed"] = all(g["passed"] for g in document["gates"])
    document["plot"] = None
    if plot_path is not None:
        if not document["classification"]:
            out.warn(f"--plot {plot_path}: not written; the model's output is not a classifier (no confusion matrix)")
        else:
            from wtool.cli.plot import plot_confusion

            plot_confusion(plot_path, document["classification"])  # one panel per classifier output
            document["plot"] = plot_path
    out.result(document, _render(document))
    if not document["passed"]:
        raise click.exceptions.Exit(1)
