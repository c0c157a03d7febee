"""`wtool merge A B [C ...] -o OUT`: checkpoint averaging (soups, weighted, slerp, task arithmetic, EMA)."""

from __future__ import annotations

from typing import Any

import click

from wtool.cli.commands.common import InputPath, OutputPath, common_options, unsafe_option
from wtool.cli.render import Output, cell, fmt_shape, printable


def render_report(console: Any, report: Any) -> None:
    from rich.table import Table

    from wtool.cli.commands.set_weights import print_wide

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("weight", "shape", "status", "distance of each input from the result"):
        table.add_column(name, no_wrap=True)
    for w in report.weights:
        dist = ", ".join(f"{d:.4g}" for d in w.distances) if w.distances else ""
        table.add_row(cell(w.path), fmt_shape(w.shape), w.status, dist)
    print_wide(console, table)
    doc = report.to_json()
    counts = doc["counts"]
    console.print(printable(f"{counts['merged']} merged ({report.mode}), {counts['kept']} kept from "
                            f"{report.inputs[0]}, {counts['identical']} identical integer weights"
                            + (f", {counts['recomputed']} BatchNorm statistics re-estimated" if counts['recomputed']
                               else "") + "; "
                            f"optimizer state {report.optimizer}; wrote {report.output}"),
                  highlight=False, markup=False)


@click.command(name="merge")
@click.argument("models", nargs=-1, required=True, type=InputPath)
@click.option("-o", "--output", type=OutputPath, help="Write the merged model here (format follows the extension).")
@click.option("--mean", is_flag=True, help="Uniform average of all models (the default).")
@click.option("--weights", metavar="W1,W2,...", help="Weighted average, one weight per model (normalised to sum 1).")
@click.option("--slerp", "slerp_t", type=float, metavar="T", help="Spherical interpolation of two models, 0 <= T <= 1.")
@click.option("--task-arithmetic", "task_base", type=InputPath, metavar="BASE",
              help="BASE + sum of scale * (MODEL - BASE): task vectors added to BASE.")
@click.option("--scales", metavar="S1,S2,...", help="With --task-arithmetic: one scale, or one per model (default 1).")
@click.option("--layers", "layers", multiple=True, metavar="GLOB",
              help="Merge only these layers/paths (repeatable); the rest are kept from the first model.")
@click.option("--ema", is_flag=True, help="One MODEL: write the moving averages its use_ema=True optimizer kept.")
@click.option("--recompute-bn", is_flag=True,
              help="Re-estimate BatchNorm moving statistics of the merged model on --data (needs TensorFlow).")
@click.option("--data", type=InputPath, metavar="DATA",
              help="With --recompute-bn: input rows (.npy/.npz/.csv/.jsonl) to measure the statistics on.")
@click.option("--x-key", metavar="KEY", help="With --recompute-bn: the array of an .npz (or JSON field) to read.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True,
              help="With --recompute-bn: rows per batch.")
@click.option("--reset-optimizer", is_flag=True, help="Drop the first model's saved optimizer state.")
@unsafe_option
@common_options
def command(out: Output, models: tuple[str, ...], output: str | None, mean: bool, weights: str | None,
            slerp_t: float | None, task_base: str | None, scales: str | None, layers: tuple[str, ...], ema: bool,
            recompute_bn: bool, data: str | None, x_key: str | None, batch_size: int, reset_optimizer: bool,
            unsafe: bool) -> None:
    """Average or interpolate the weights of same-architecture MODELS into OUT.

    OUT is a copy of the first model (architecture, optimizer state) with the merged
    weights, computed one weight at a time at the HDF5 level, without TensorFlow.
    BatchNorm moving statistics are averaged like the other weights, or, with
    --recompute-bn --data DATA, measured again on DATA with the merged weights (one
    pass in training mode, as torch's update_bn does; this needs TensorFlow). Integer
    weights must be identical in every model. The report gives, per weight, the relative
    distance |MODEL - OUT| / |OUT| of each input.

    Examples:

    \b
      wtool merge a.keras b.keras c.keras -o soup.keras
      wtool merge a.keras b.keras --weights 0.7,0.3 -o mix.keras
      wtool merge a.keras b.keras --slerp 0.5 -o mid.keras
      wtool merge ft1.keras ft2.keras --task-arithmetic base.keras --scales 0.5 -o multi.keras
      wtool merge trained.keras --ema -o ema.keras
      wtool merge a.keras b.keras --recompute-bn --data train.npz -o soup.keras
    """
    from wtool.errors import UsageError
    from wtool.ops.merge import BnRecompute, merge

    if recompute_bn and data is None:
        raise UsageError("--recompute-bn needs --data DATA: rows to measure the BatchNorm statistics on")
    if data is not None and not recompute_bn:
        raise UsageError("--data goes with --recompute-bn (merge reads no data otherwise)")
    if x_key is not None and not recompute_bn:
        raise UsageError("--x-key goes with --recompute-bn --data DATA")
    bn = BnRecompute(data, x_key, batch_size) if recompute_bn and data is not None else None
    report = merge(models, output, mean=mean, weights=weights, slerp_t=slerp_t, task_base=task_base, scales=scales,
                   layers=layers, ema=ema, reset_optimizer=reset_optimizer, unsafe=unsafe, recompute_bn=bn)
    for note in report.notes:
        out.info(f"note: {note}")
    out.result(report.to_json(), lambda console: render_report(console, report))
