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
                            f"{report.inputs[0]}, {counts['identical']} identical integer weights; "
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
@click.option("--reset-optimizer", is_flag=True, help="Drop the first model's saved optimizer state.")
@unsafe_option
@common_options
def command(out: Output, models: tuple[str, ...], output: str | None, mean: bool, weights: str | None,
            slerp_t: float | None, task_base: str | None, scales: str | None, layers: tuple[str, ...], ema: bool,
            reset_optimizer: bool, unsafe: bool) -> None:
    """Average or interpolate the weights of same-architecture MODELS into OUT.

    OUT is a copy of the first model (architecture, optimizer state) with the merged
    weights, computed one weight at a time at the HDF5 level, without TensorFlow.
    BatchNorm moving statistics are averaged like the other weights; integer weights
    must be identical in every model. The report gives, per weight, the relative
    distance |MODEL - OUT| / |OUT| of each input.

    Examples:

    \b
      wtool merge a.keras b.keras c.keras -o soup.keras
      wtool merge a.keras b.keras --weights 0.7,0.3 -o mix.keras
      wtool merge a.keras b.keras --slerp 0.5 -o mid.keras
      wtool merge ft1.keras ft2.keras --task-arithmetic base.keras --scales 0.5 -o multi.keras
      wtool merge trained.keras --ema -o ema.keras
    """
    from wtool.ops.merge import merge

    report = merge(models, output, mean=mean, weights=weights, slerp_t=slerp_t, task_base=task_base, scales=scales,
                   layers=layers, ema=ema, reset_optimizer=reset_optimizer, unsafe=unsafe)
    for note in report.notes:
        out.info(f"note: {note}")
    out.result(report.to_json(), lambda console: render_report(console, report))
