"""`wtool convert IN OUT`: a model or weights file in another format (OUT's extension), with what it drops."""

from __future__ import annotations

import click

from wtool.cli.commands.common import (
    InputPath,
    OutputPath,
    common_options,
    max_shard_size_option,
    unsafe_option,
)
from wtool.cli.render import Output, fmt_bytes, fmt_plural, printable


@click.command(name="convert")
@click.argument("source", metavar="IN", type=InputPath)
@click.argument("output", metavar="OUT", type=OutputPath)
@max_shard_size_option
@unsafe_option
@common_options
def command(out: Output, source: str, output: str, unsafe: bool, max_shard_bytes: int | None) -> None:
    """Convert IN to the format OUT's name asks for, listing what the target drops.

    OUT may be .keras, .h5, .weights.h5, .weights.json (sharded, --max-shard-size),
    .safetensors or .npz. The same format, .keras -> .weights.h5 / .weights.json,
    anything -> .safetensors / .npz, and .keras -> .h5 for plain Sequential and
    Functional models (built-in layers, RNNs included; the optimizer state kept
    for Adam, AdamW and SGD) and back (.h5 saved by Keras 3 -> .keras) run at the
    HDF5 level without TensorFlow. Nested models, wrappers, attention, custom or
    quantized layers and older .h5 files go through Keras (a note says why). A
    weights-only IN has no
    architecture to write a .keras or .h5 from (exit 4; `wtool transfer` does
    that). The written weights are compared with IN's.

    Examples:

    \b
      wtool convert model.keras model.h5
      wtool convert model.keras model.weights.h5
      wtool convert model.keras model.safetensors --json
      wtool convert model.keras model.weights.json --max-shard-size 2G
    """
    from wtool.ops.convert import convert

    report = convert(source, output, unsafe=unsafe, max_shard_bytes=max_shard_bytes)
    doc = report.to_json()
    for note in report.notes:
        out.info(f"note: {note}")

    def human(console) -> None:  # type: ignore[no-untyped-def]
        dropped = ", ".join(report.dropped) if report.dropped else "nothing"
        console.print(printable(
            f"wrote {report.output} (.{report.target_format}, {fmt_bytes(report.bytes)}) from "
            f".{report.source_format}: {fmt_plural(report.weights, 'weight')} by {report.method}"
            + (", values checked" if report.verified else "")), highlight=False, markup=False)
        console.print(printable(f"kept: {', '.join(report.kept)}; dropped: {dropped}"),
                      highlight=False, markup=False)

    out.result(doc, human)
