"""`wtool infer`: predictions with frozen weights, streamed from a file (or stdin) to a file (or stdout)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from wtool.cli.commands.common import InputPath, OutputPath, common_options, folder_options, unsafe_option
from wtool.cli.render import Output, cell, fmt_int

if TYPE_CHECKING:  # pragma: no cover - numpy stays out of `wtool --help`
    from rich.console import Console

    from wtool.data.rows import Column, RowWriter

SAVED_LABELS = "<saved with the model>"  # what a bare --labels stands for
TABLE_ROWS = 20  # without -o, a terminal gets a table up to this many rows, JSON lines beyond
INPUT_FORMATS = ("npy", "npz", "csv", "tsv", "jsonl", "json")  # = wtool.data.FORMAT_NAMES (a test keeps them equal)


def _cell(value: Any, limit: int = 6) -> str:
    import numpy as np

    arr = np.asarray(value)
    if arr.ndim == 0:
        item = arr.item()
        return f"{item:.6g}" if isinstance(item, float) else str(item)
    flat = arr.reshape(-1)
    shown = ", ".join(_cell(v) for v in flat[:limit])
    return "[" + shown + (", ..." if flat.size > limit else "") + "]"


def render_table(console: Console, columns: list[Column], batches: list[dict[str, Any]], first_row: int = 0) -> None:
    """Predictions as a table: one row per input row, one column per output column."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("row", justify="right", style="dim")
    for col in columns:
        table.add_column(cell(col.name), justify="right" if col.dtype.kind in "iuf" and not col.shape else "left")
    row = first_row
    for batch in batches:
        n = len(batch[columns[0].name]) if columns else 0
        for i in range(n):
            table.add_row(str(row), *(_cell(batch[c.name][i]) for c in columns))
            row += 1
    console.print(table)


def _progress(out: Output, total: int) -> tuple[Callable[[int], None] | None, Any]:
    if not out.show_progress or total == 0:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("infer"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn(), console=out.stderr, transient=True)
    task = bar.add_task("infer", total=total, rate="")
    first: list[float] = []  # (time, rows) of the first batch: the rate leaves tracing out

    def update(done: int) -> None:
        now = time.perf_counter()
        if not first:
            first.extend((now, done))
        elapsed = now - first[0]
        rate = f"{(done - first[1]) / elapsed:,.0f} rows/s" if elapsed > 0 else ""
        bar.update(task, completed=done, rate=rate)

    return update, bar


@contextmanager
def _progress_shown(out: Output, total: int) -> Iterator[Callable[[int], None] | None]:
    """The bar on stderr for as long as the run streams rows."""
    update, bar = _progress(out, total)
    if bar is None:
        yield update
        return
    with bar:
        yield update


@click.command(name="infer")
@click.argument("model", type=InputPath)
@click.argument("input_path", metavar="[INPUT]", required=False, type=InputPath)
@click.option("-o", "--output", "out_path", type=OutputPath,
              help="Write predictions here; the format follows the extension: .npy, .npz, .csv, .tsv, .jsonl.")
@click.option("--input", "named_inputs", multiple=True, metavar="NAME=FILE",
              help="Input file for the model input NAME (repeat for models with several inputs).")
@click.option("--input-key", metavar="KEY", help="Array of an .npz input, or field of JSON objects (default: x).")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS),
              help="Format of INPUT when its extension does not say (stdin is sniffed).")
@click.option("--columns", metavar="LIST", help="CSV columns to use: header names or 0-based numbers, 0-783 ranges.")
@click.option("--target", metavar="COLUMN", help="The label column of a training CSV: left out when the file has it.")
@click.option("--drop", multiple=True, metavar="COLUMNS",
              help="CSV columns to leave out (names or 0-based numbers, comma-separated; repeatable), as in train.")
@folder_options
@click.option("--header/--no-header", default=None, help="Whether the CSV has a header row (default: detected).")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Rows per batch (default 1024, fewer for large rows).")
@click.option("--shard", metavar="K/N", help="Only the K-th of N contiguous slices of the input (1-based).")
@click.option("--argmax", is_flag=True, help="Output the index of the largest value (the class).")
@click.option("--top-k", type=int, metavar="K", help="Output the K largest values and their indices.")
@click.option("--threshold", type=float, metavar="T", help="Binary output: class 1 where the value >= T, else 0.")
@click.option("--labels", "labels_path", type=InputPath, metavar="[FILE]", is_flag=False,
              flag_value=SAVED_LABELS,
              help="Class names (one per line, or a JSON list) printed beside the indices; a bare --labels uses "
                   "the names saved with the model (train on string labels or class folders), as "
                   "--argmax/--top-k do by default.")
@click.option("--arch", type=InputPath, metavar="MODEL", help="Architecture for a weights-only .weights.h5 MODEL.")
@unsafe_option
@common_options
def command(model: str, input_path: str | None, out_path: str | None, named_inputs: tuple[str, ...],
            input_key: str | None, input_format: str | None, columns: str | None, target: str | None,
            drop: tuple[str, ...], image_size: str | None, color_mode: str | None, max_length: int | None,
            header: bool | None,
            batch_size: int | None, shard: str | None, argmax: bool, top_k: int | None,
            threshold: float | None, labels_path: str | None, arch: str | None, unsafe: bool,
            out: Output) -> None:
    """Run a model on rows of data with frozen weights (training=False), streamed in batches.

    INPUT is .npy, .npz, .csv/.tsv, .jsonl or .json, or - for stdin. Without -o the
    predictions go to stdout: a table for a few rows on a terminal, else JSON lines
    (always JSON lines with --json; the run summary then goes to stderr). With -o and
    --json, stdout gets one JSON report: rows, batches, timings, rows/s, output path.

    Exit codes: 2 bad option, 3 unreadable input (bad CSV cell, empty input),
    4 rows that do not fit the model, 5 model needs code (use --unsafe).

    Examples:

      wtool infer model.keras rows.npy -o predictions.npy

      wtool infer model.keras pixels.csv --columns 0-783 --argmax --labels classes.txt

      wtool infer model.keras train.csv --target label --drop id -o preds.csv

      cat rows.jsonl | wtool infer model.keras - --top-k 3

      wtool infer model.keras big.npy --shard 2/4 -o part2.npy

      wtool infer two_inputs.keras --input image=img.npy --input meta=meta.csv -o out.npz

      wtool infer sample_models/texts.keras sample_models/texts --argmax
    """
    from wtool.data.rows import CollectWriter, JsonlWriter
    from wtool.infer.run import InferOptions, run_infer

    def to_stdout(cols: list[Column], n: int) -> RowWriter:
        if not out.json_mode and out.stdout.is_terminal and n <= TABLE_ROWS:
            return CollectWriter(cols)
        return JsonlWriter(sys.stdout, cols, owns=False)

    opts = InferOptions(model, input_path, out_path, named_inputs, input_key, input_format, columns, header,
                        batch_size, shard, argmax, top_k, threshold,
                        "" if labels_path == SAVED_LABELS else labels_path, arch, unsafe,
                        drop=tuple(c for item in drop for c in item.split(",") if c.strip()), target=target,
                        image_size=image_size, color_mode=color_mode, max_length=max_length)
    outcome = run_infer(opts, to_stdout, lambda total: _progress_shown(out, total))
    report = outcome.report
    for note in outcome.notes:
        out.info(f"note: {note}")
    if outcome.table is not None:
        render_table(out.stdout, outcome.columns, outcome.table.batches, outcome.first_row)
    summary = (f"{fmt_int(report.rows)} row{'s' * (report.rows != 1)} in {fmt_int(report.batches)} "
               f"batch{'es' * (report.batches != 1)}, "
               f"{report.predict_time_s:.2f} s ({fmt_int(round(report.rows_per_s))} rows/s)")
    if out_path is not None:
        out.result(report.as_dict())
        if not out.json_mode:
            out.info(f"wrote {out_path}: {summary}")
    else:
        out.info(summary)
