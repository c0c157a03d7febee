"""`wtool export MODEL OUT --format saved_model|tflite|onnx`: Keras's model.export, then run and compared."""

from __future__ import annotations

from typing import Any

import click

from wtool.cli.commands.common import InputPath, common_options, unsafe_option
from wtool.cli.render import Output, fmt_float, printable


@click.command(name="export")
@click.argument("model", type=InputPath)
@click.argument("output", metavar="OUT", type=InputPath)  # may name a directory (saved_model)
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite", "onnx"]), required=True,
              help="saved_model (a directory), tflite (OUT.tflite) or onnx (OUT.onnx; the optional onnx extra).")
@click.option("--atol", type=float, default=None, metavar="X",
              help="Exit 1 when the exported model differs from Keras by more than X (max |a-b|).")
@click.option("--batch", type=int, default=4, show_default=True, help="Rows of the random check batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random check batch.")
@unsafe_option
@common_options
def command(out: Output, model: str, output: str, fmt: str, atol: float | None, batch: int, seed: int,
            unsafe: bool) -> None:
    """Export MODEL for serving through Keras's own model.export, and check the result.

    The exported artifact is run on a random batch of the model's saved input shape
    (SavedModel serving signature, TFLite interpreter, onnxruntime) and compared with
    Keras's prediction; the max absolute difference is reported, and with --atol a
    larger one exits 1 (the artifact is kept). Needs TensorFlow.

    Examples:

    \b
      wtool export model.keras model_sm --format saved_model
      wtool export model.keras model.tflite --format tflite --atol 1e-5
    """
    from wtool.ops.export import export_model

    report = export_model(model, output, fmt, atol=atol, batch=batch, seed=seed, unsafe=unsafe)

    def human(console: Any) -> None:
        verdict = "" if report.atol is None else (" (within --atol)" if report.ok else
                                                  f" (more than --atol {report.atol:g})")
        console.print(printable(f"wrote {report.output} ({report.format}); ran it with {report.runtime} on a "
                                f"random batch of {report.batch}: max |keras - exported| = "
                                f"{fmt_float(report.max_abs_diff or 0.0)}{verdict}"), highlight=False, markup=False)

    out.result(report.to_json(), human)
    if not report.ok:
        raise click.exceptions.Exit(1)
