"""`wtool transfer`: transplant weights from one model into another's architecture, with a full report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from wtool.cli.commands.common import (
    InputPath,
    OutputPath,
    common_options,
    max_shard_size_option,
    unsafe_option,
)
from wtool.cli.commands.set_weights import print_wide
from wtool.cli.render import Output, cell, fmt_plural, fmt_shape, printable
from wtool.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console


def render_plan(console: Console, plan: Any, summary_only: bool = False) -> None:
    """Matched and mismatched pairs in one table, then what had no partner, then the counts (alone with -q).

    The words say whether anything moved: `transferred` / `skipped` only when OUT was
    written; `would transfer` / `would skip` for --dry-run; `matched` / `mismatch` when the
    transfer was refused (exit 4).
    """
    from rich.table import Table

    doc = plan.to_json()
    counts = doc["counts"]
    if plan.written:
        moved, left = "transferred", "skipped"
    elif plan.problems:
        moved, left = "matched", "mismatch"
    else:
        moved, left = "would transfer", "would skip" if plan.skip_mismatch else "mismatch"
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("status", "source", "", "target", "shape"):
        table.add_column(name, no_wrap=True)
    for p in plan.transferred:
        same = p.source == p.target
        table.add_row(moved, cell(p.source), "" if same else "->", "" if same else cell(p.target),
                      fmt_shape(p.target_shape) + (f"  {cell(p.conversion)}" if p.conversion else ""))
    for p in plan.skipped:
        why = {"shape": f"source {fmt_shape(p.source_shape)}, target {fmt_shape(p.target_shape)}",
               "dtype": p.detail, "count": p.detail}.get(p.reason or "", p.detail or "")
        table.add_row(f"[yellow]{left} ({p.reason})[/]", cell(p.source or "-"), "->", cell(p.target or "-"),
                      cell(why or ""))
    for path in plan.missing_in_source:
        table.add_row("[dim]missing in source[/]", "-", "", cell(path), "kept as is")
    for path in plan.unused_from_source:
        table.add_row("[dim]unused from source[/]", cell(path), "", "-", "")
    for path in plan.ignored_from_source:
        table.add_row("[dim]ignored[/]", cell(path), "", "-", "PyTorch bookkeeping")
    if table.row_count and not summary_only:
        print_wide(console, table)
    n_left = counts["skipped"] if plan.skip_mismatch else counts["mismatched"]
    left_word = {"skipped": "skipped", "would skip": "would skip", "mismatch": "mismatched"}[left]
    line = (f"{counts['matched']} {moved}, {n_left} {left_word}, "
            f"{counts['missing_in_source']} missing in source, {counts['unused_from_source']} unused from source")
    if doc["frozen"]:
        line += f"; {'frozen' if plan.written else 'would freeze'}: {', '.join(doc['frozen'])}"
    if plan.problems:
        line += "; refused: nothing written"
    elif plan.dry_run:
        line += "; dry run: nothing written"
    else:
        line += f"; wrote {doc['output']}" + (" (read back and checked)" if doc["verified"] else "")
    console.print(printable(line), highlight=False, markup=False)


def render_head(console: Console, report: Any) -> None:
    old = f"{report.old_units} units" if report.old_units is not None else report.replaced_class
    lines = [f"replaced head {report.replaced} ({old}) with Dense({report.units}, activation={report.activation})"]
    if report.dropped:
        lines.append(f"dropped the layers after it: {', '.join(report.dropped)}")
    kept = report.kept_weights
    lines.append(f"{fmt_plural(kept, 'weight')} kept from the base"
                 + (f"; frozen: {', '.join(report.frozen)}" if report.frozen else "") + f"; wrote {report.output}")
    for line in lines:
        console.print(printable(line), highlight=False, markup=False)


@click.command(name="transfer")
@click.argument("source", type=InputPath)
@click.argument("target", type=InputPath, required=False)
@click.option("-o", "--output", type=OutputPath, help="Write TARGET with the transferred weights here (a new folder for a keras-hub preset).")
@click.option("--by", type=click.Choice(["name", "order"]), default="name", show_default=True,
              help="Pair layers by path (nested included), or weight-bearing layers by position.")
@click.option("--map", "maps", multiple=True, metavar="SRC_GLOB=DST_GLOB",
              help="Pair layers explicitly; each * of SRC fills the same * of DST ('re:REGEX=DST' with \\1 groups). "
                   "Repeatable.")
@click.option("--map-file", type=InputPath, metavar="FILE",
              help="More --map rules, one SRC_GLOB=DST_GLOB a line (# comments).")
@click.option("--layout", type=click.Choice(["keras", "torch"]), default="keras", show_default=True,
              help="torch: SOURCE is a PyTorch state dict in .safetensors; tensors are converted to Keras "
                   "conventions on the way (Linear/Conv transposes, BatchNorm names, LSTM/GRU gates).")
@click.option("--prefix", metavar="PREFIX|auto",
              help="Strip this key prefix from SOURCE's names first ('model.'); auto: the prefix all keys share.")
@click.option("--layers", "layers", multiple=True, metavar="GLOB",
              help="Only weights under these layers/paths (either side). Repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave these layers/paths out. Repeatable.")
@click.option("--skip-mismatch", is_flag=True, help="Skip and report pairs whose shapes differ, instead of exit 4.")
@click.option("--allow-empty", is_flag=True, help="Accept a transfer that moves nothing.")
@click.option("--freeze", is_flag=True, help="Mark the layers that received weights non-trainable in OUT's config.")
@click.option("--reset-optimizer", is_flag=True, help="Drop TARGET's saved optimizer state.")
@click.option("--replace-head", "replace_head", type=int, metavar="UNITS",
              help="No TARGET: write SOURCE with its last layer replaced by a fresh Dense(UNITS).")
@click.option("--head-activation", metavar="NAME",
              help="Activation of the new head (default: the replaced Dense's, else softmax).")
@click.option("--head-layer", metavar="NAME", help="The layer to replace (default: the last with weights).")
@click.option("--seed", type=int, default=None, help="Seed for the new head's initial values.")
@click.option("--dry-run", is_flag=True, help="Match, check and show the report; write nothing.")
@max_shard_size_option
@unsafe_option
@common_options
def command(out: Output, source: str, target: str | None, output: str | None, by: str, maps: tuple[str, ...],
            layers: tuple[str, ...], exclude: tuple[str, ...], skip_mismatch: bool, allow_empty: bool,
            freeze: bool, reset_optimizer: bool, replace_head: int | None, head_activation: str | None,
            head_layer: str | None, seed: int | None, dry_run: bool, unsafe: bool, map_file: str | None,
            layout: str, prefix: str | None, max_shard_bytes: int | None) -> None:
    """Copy SOURCE's weights into TARGET's architecture and write OUT.

    TARGET's graph, its other weights and its optimizer state are kept; OUT's format
    follows its extension. Pairs whose shapes differ are an error (exit 4, all listed,
    nothing written) unless --skip-mismatch; a transfer that moves nothing is exit 4
    unless --allow-empty. Runs at the HDF5 level without TensorFlow, except when OUT
    needs a graph TARGET's format does not hold (e.g. .h5 -> .keras) and --replace-head.

    Examples:

    \b
      wtool transfer pretrained.h5 new.keras -o warm.keras
      wtool transfer a.keras b.keras --by order --skip-mismatch -o b2.keras
      wtool transfer old.h5 new.keras --map 'dense_*=fc_*' --freeze -o ft.keras
      wtool transfer base.keras --replace-head 5 --freeze -o ft.keras
      wtool transfer torch.safetensors net.keras --layout torch --prefix auto \\
          --map 'fc1=hidden' --map 'fc2=out' -o net_torch.keras
    """
    from wtool.ops import surgery

    if replace_head is not None:
        if target is not None:
            raise UsageError("--replace-head takes one model (SOURCE), not a TARGET",
                             "wtool transfer BASE --replace-head UNITS -o OUT")
        conflicting = [name for name, given in (("--map", maps), ("--layers", layers), ("--exclude", exclude),
                                                ("--skip-mismatch", skip_mismatch), ("--allow-empty", allow_empty),
                                                ("--reset-optimizer", reset_optimizer), ("--dry-run", dry_run),
                                                ("--by", by != "name"), ("--map-file", map_file),
                                                ("--layout", layout != "keras"), ("--prefix", prefix)) if given]
        if conflicting:
            raise UsageError(f"{', '.join(conflicting)} cannot be used with --replace-head")
        if output is None:
            raise UsageError("no output file given", "pass -o OUT")
        report = surgery.replace_head(source, output, units=replace_head, activation=head_activation,
                                      head_layer=head_layer, freeze=freeze, seed=seed, unsafe=unsafe)
        for note in report.notes:
            out.info(f"note: {note}")
        out.result(report.to_json(), lambda console: render_head(console, report))
        return
    if target is None:
        raise UsageError("missing TARGET", "wtool transfer SOURCE TARGET -o OUT, or "
                         "wtool transfer BASE --replace-head UNITS -o OUT")
    for name, given in (("--head-activation", head_activation), ("--head-layer", head_layer)):
        if given:
            raise UsageError(f"{name} goes with --replace-head")

    plan = surgery.plan_transfer(source, target, output=output, by=by, maps=maps, layers=layers,
                                 exclude=exclude, skip_mismatch=skip_mismatch, allow_empty=allow_empty,
                                 freeze=freeze, reset_optimizer=reset_optimizer, dry_run=dry_run,
                                 unsafe=unsafe, layout=layout, prefix=prefix, map_file=map_file,
                                 max_shard_bytes=max_shard_bytes)
    if plan.problems:
        out.result(plan.to_json(), lambda console: render_plan(console, plan))
        surgery.apply_transfer(plan)  # raises with every problem
    surgery.apply_transfer(plan)
    for note in plan.to_json()["notes"]:
        out.info(f"note: {note}")
    out.result(plan.to_json(), lambda console: render_plan(console, plan, summary_only=out.quiet))
