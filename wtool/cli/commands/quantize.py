"""`wtool quantize MODEL --mode int8|int4|float8 [--layers GLOB] -o OUT`: Keras's model.quantize, reported."""

from __future__ import annotations

from typing import Any

import click

from wtool.cli.commands.common import InputPath, OutputPath, common_options, unsafe_option
from wtool.cli.render import Output, cell, fmt_bytes, printable


def render_report(console: Any, report: Any) -> None:
    from rich.table import Table

    from wtool.cli.commands.set_weights import print_wide

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("layer", "class", "result"):
        table.add_column(name, no_wrap=True)
    for layer in report.layers:
        table.add_row(cell(layer.path), layer.class_name, cell(("quantized: " if layer.quantized else "skipped: ")
                                                               + layer.detail))
    print_wide(console, table)
    ratio = report.size_after / report.size_before if report.size_before else 0.0
    console.print(printable(f"{report.quantized_count} of {len(report.layers)} layers quantized to {report.mode}; "
                            f"wrote {report.output}: {fmt_bytes(report.size_before)} -> "
                            f"{fmt_bytes(report.size_after)} ({ratio:.0%} of the input)"),
                  highlight=False, markup=False)


@click.command(name="quantize")
@click.argument("model", type=InputPath)
@click.option("--mode", type=click.Choice(["int8", "int4", "float8"]), required=True,
              help="Keras's quantization mode: int8 (per-channel scales), int4 (packed, grouped scales), float8.")
@click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
              help="Quantize only the layers whose path matches (repeatable; e.g. 'encoder/*').")
@click.option("-o", "--output", type=OutputPath, required=True, help="Write the quantized model here (.keras).")
@unsafe_option
@common_options
def command(out: Output, model: str, mode: str, layer_globs: tuple[str, ...], output: str, unsafe: bool) -> None:
    """Quantize MODEL's weights with Keras's own model.quantize and write OUT.

    Every layer that holds weights is listed: quantized (with its new dtype policy) or
    skipped, and why (not selected, already quantized, no quantized form in Keras).
    OUT is written atomically; nothing is written when no layer was quantized (exit 4).
    Needs TensorFlow.

    Examples:

    \b
      wtool quantize sample_models/mlp.keras --mode int8 -o mlp.int8.keras
      wtool quantize sample_models/cnn.keras --mode int4 --layers out -o cnn.int4.keras
    """
    from wtool.ops.quantize import quantize_model

    report = quantize_model(model, output, mode, list(layer_globs) or None, unsafe=unsafe)
    out.result(report.to_json(), lambda console: render_report(console, report))
