"""`wtool diff A B`: weight-by-weight comparison by canonical path. Exit 0 equal, 1 different."""

from __future__ import annotations

from typing import Any

import click

from wtool.cli.commands.common import InputPath, common_options, without_blas_threads
from wtool.cli.render import Output, TextWriter, fmt_float, fmt_plural, fmt_shape

STATUS_TEXT = {"same": "same", "changed": "changed", "dtype": "dtype differs", "shape": "shape differs",
               "only_a": "only in A", "only_b": "only in B"}


@click.command(name="diff")
@click.argument("a", type=InputPath)
@click.argument("b", type=InputPath)
@click.option("--atol", type=float, default=0.0, show_default=True,
              help="Absolute tolerance: |a-b| <= atol + rtol*|b| counts as equal.")
@click.option("--rtol", type=float, default=0.0, show_default=True, help="Relative tolerance (see --atol).")
@click.option("--layer", "layers", multiple=True, metavar="GLOB",
              help="Only these layers / weight paths (shell glob, repeatable).")
@click.option("--all", "show_all", is_flag=True, help="List equal weights too (by default only differences).")
@click.option("--summary", is_flag=True,
              help="Only the per-layer relative change ||a-b||/||a|| over each layer's weights.")
@common_options
def command(a: str, b: str, atol: float, rtol: float, layers: tuple[str, ...], show_all: bool, summary: bool,
            out: Output) -> None:
    """Compare two model or weights files weight by weight, without TensorFlow.

    Weights are matched by path, so a model saved as .keras and as .h5 compares equal.
    A or B may be an .npz keyed by weight path (what `inspect --export` writes).
    Each weight is same, changed (max |a-b| and relative L2 change ||a-b||/||a||),
    dtype differs (equal values, different dtypes, e.g. float32 vs float16),
    shape differs, only in A or only in B. NaN equals NaN at the same place; a NaN
    against a number is counted under "NaN mismatch" (max |a-b| and L2 are over the
    other values); an Inf against a number makes both inf. The relative change is
    n/a (JSON null) when A's weight is all zeros. --atol/--rtol must not be negative
    or NaN. Exit status 0 when everything is equal within the tolerance, 1 when
    anything differs.

    Examples:

    \b
      wtool diff sample_models/mlp.keras sample_models/mlp.h5
      wtool diff before.keras after.keras --atol 1e-6 --layer 'features/*'
      wtool diff a.keras b.weights.h5 --json
      wtool diff before.keras after.keras --summary
    """
    without_blas_threads()  # before numpy loads
    from wtool.ops.diff import check_tolerances, diff_models
    from wtool.store.npz import open_weights

    check_tolerances(atol, rtol)  # before opening the files
    with open_weights(a) as ma, open_weights(b) as mb:
        report = diff_models(ma, mb, atol=atol, rtol=rtol, layer_globs=list(layers) or None, norms=summary)
    if summary:
        from wtool.ops.diff import layer_changes

        changes = layer_changes(report)
        doc = {"a": report.a, "b": report.b, "equal": report.equal,
               "layers": [{"layer": c.layer, "weights": c.weights, "changed": c.changed, "status": c.status,
                           "rel_change": c.rel_change} for c in changes]}
        out.result_text(doc, lambda writer: _render_summary(writer, report, changes))
    else:
        out.result_text(_document(report), lambda writer: _render(writer, report, show_all))
    if not report.equal:
        raise click.exceptions.Exit(1)


def _document(report: Any) -> dict[str, Any]:
    return {
        "a": report.a,
        "b": report.b,
        "equal": report.equal,
        "atol": report.atol,
        "rtol": report.rtol,
        "summary": report.counts,
        "weights": [{"path": w.path, "status": w.status,
                     "shape_a": list(w.shape_a) if w.shape_a is not None else None,
                     "shape_b": list(w.shape_b) if w.shape_b is not None else None,
                     "dtype_a": w.dtype_a, "dtype_b": w.dtype_b,
                     "max_abs_diff": w.max_abs_diff, "rel_l2_change": w.rel_l2_change,
                     "mismatched": w.mismatched, "nan_mismatched": w.nan_mismatched,
                     **({"dequantized": True} if w.dequantized else {})} for w in report.weights],
    }


def _summary_line(report: Any) -> str:
    c = report.counts
    total = len(report.weights)
    verdict = "equal" if report.equal else "different"
    tol = f" (atol {report.atol:g}, rtol {report.rtol:g})" if report.atol or report.rtol else ""
    return (f"{verdict}{tol}: {fmt_plural(total, 'weight')}, {c['same']} same, {c['changed']} changed, "
            f"{c['dtype']} dtype differs, {c['shape']} shape differs, {c['only_a']} only in A, "
            f"{c['only_b']} only in B")


def _render(writer: TextWriter, report: Any, show_all: bool) -> None:
    from wtool.ops.diff import same_dtype

    rows = []
    shown = [w for w in report.weights if show_all or w.status != "same"]
    with_nan = any(w.nan_mismatched for w in shown)
    for w in shown:
        compared = w.status in ("changed", "same", "dtype")
        shape = fmt_shape(w.shape_a if w.shape_a is not None else w.shape_b)
        if w.status == "shape":
            shape = f"{fmt_shape(w.shape_a)} vs {fmt_shape(w.shape_b)}"
        elif compared and not same_dtype(w.dtype_a, w.dtype_b):
            shape = f"{shape} {w.dtype_a} vs {w.dtype_b}"
        rel = fmt_float(w.rel_l2_change) if w.rel_l2_change is not None else ("n/a" if compared else "-")
        row = [w.path + (" (dequantized)" if w.dequantized else ""), STATUS_TEXT[w.status], shape,
               fmt_float(w.max_abs_diff) if w.max_abs_diff is not None else "-", rel,
               str(w.mismatched) if compared else "-"]
        if with_nan:
            row.append(str(w.nan_mismatched) if compared else "-")
        rows.append(row)
    if rows:
        headers = ["weight", "status", "shape", "max |a-b|", "rel L2 change", "mismatched"]
        headers += ["NaN mismatch"] if with_nan else []
        writer.table(headers, rows, {"max |a-b|", "rel L2 change", "mismatched", "NaN mismatch"})
    writer.line(_summary_line(report))


def _render_summary(writer: TextWriter, report: Any, changes: list[Any]) -> None:
    rows = [[c.layer, c.status if c.status != "other" else "shape/only in one",
             fmt_float(c.rel_change) if c.rel_change is not None else "n/a", f"{c.changed}/{c.weights}"]
            for c in changes]
    if rows:
        writer.table(["layer", "status", "rel change", "weights changed"], rows, {"rel change", "weights changed"})
    writer.line(_summary_line(report))
