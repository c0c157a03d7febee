"""`wtool set-weights`: assign weights directly, every value checked before anything is written."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from wtool.cli.commands.common import InputPath, OutputPath, common_options, max_shard_size_option
from wtool.cli.render import Output, can_encode, cell, fmt_shape, printable

if TYPE_CHECKING:
    from rich.console import Console


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _stats(s: Any, pm: str = "±") -> str:
    """`mean±std [min, max]`, compact enough for an 80-column table."""
    if s is None:
        return "-"
    if s.mean is None:
        return f"{s.nonfinite} NaN/Inf" if s.nonfinite else "empty"
    text = f"{_g(s.mean)}{pm}{_g(s.std)} [{_g(s.min)}, {_g(s.max)}]"
    return text + (f" +{s.nonfinite} NaN/Inf" if s.nonfinite else "")


# Spaces at the end of a line, before any closing colour codes.
_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$", re.M)


def print_wide(console: Console, table: Any) -> None:
    """Print a table at its natural width: rows are never folded (scripts grep them), and lines
    carry no trailing padding (rich pads every cell to its column's width)."""
    from rich.console import Console

    width = console.measure(table, options=console.options.update_width(1000)).maximum
    target = console
    if width > console.width:
        target = Console(file=console.file, width=width, force_terminal=console.is_terminal,
                         no_color=console.no_color, soft_wrap=True)
    with target.capture() as captured:
        target.print(table)
    console.file.write(_TRAILING.sub(r"\1", captured.get()))


def render_plan(console: Console, plan: Any, summary_only: bool = False) -> None:
    """The assignment table: path, shape, source, old stats -> new stats; then a one-line summary (alone with -q)."""
    from rich.table import Table

    doc = plan.to_json()
    if summary_only:
        _print_summary(console, plan, doc)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("weight", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("from", no_wrap=True)
    pm = "±" if can_encode(console.encoding, "±") else "+-"
    table.add_column(cell(f"old mean{pm}std [min, max]"), no_wrap=True)
    table.add_column(cell(f"new mean{pm}std [min, max]"), no_wrap=True)
    for a in plan.assignments:
        table.add_row(cell(a.path), fmt_shape(a.shape), cell(a.source), cell(_stats(a.old, pm)),
                      cell(_stats(a.new, pm)))
    print_wide(console, table)
    _print_summary(console, plan, doc)


def _print_summary(console: Console, plan: Any, doc: dict[str, Any]) -> None:
    counts = doc["counts"]
    if plan.dry_run:
        where = "dry run: nothing written"
    else:
        where = f"wrote {doc['output']}" + (" (values read back and checked)" if doc["verified"] else "")
    console.print(printable(f"{counts['assigned']} assigned, {counts['kept']} kept; optimizer state "
                            f"{doc['optimizer']}; {where}"), highlight=False, markup=False)


@click.command(name="set-weights")
@click.argument("model", type=InputPath)
@click.option("-o", "--output", type=OutputPath, help="Write the edited model here (format follows the extension; a new folder for a keras-hub preset).")
@click.option("--in-place", is_flag=True, help="Replace MODEL itself (atomically) instead of writing -o OUT.")
@click.option("--npz", "npz", multiple=True, metavar="FILE", type=InputPath,
              help="Arrays keyed by weight path, as `wtool inspect --export` writes them. Repeatable.")
@click.option("--weight", "weights", multiple=True, metavar="PATH=FILE.npy",
              help="One weight from a .npy file. Repeatable.")
@click.option("--from-model", metavar="SRC", type=InputPath,
              help="Take the same weight paths from another model file.")
@click.option("--layer", "from_layers", multiple=True, metavar="GLOB",
              help="With --from-model: only the weights under these layers/paths. Repeatable.")
@click.option("--from-checkpoint", metavar="DIR|PREFIX",
              help="Take MODEL's weights from a TensorFlow checkpoint (a prefix, its .index, or the folder of "
                   "its `checkpoint` file), matched through its object graph as tf.train.Checkpoint restores "
                   "do; optimizer slots are ignored. Needs TensorFlow.")
@click.option("--init", "inits", multiple=True, metavar="GLOB=INIT",
              help="Re-initialise: zeros, ones, constant:V, glorot_uniform, glorot_normal, he_normal, he_uniform, "
                   "lecun_normal, lecun_uniform, variance_scaling, random_normal, random_uniform, "
                   "truncated_normal, orthogonal, identity (Keras class names such as GlorotUniform too). "
                   "Repeatable.")
@click.option("--seed", type=int, default=None, help="Seed for --init (same seed, same values).")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values.")
@click.option("--reset-optimizer", is_flag=True,
              help="Drop the saved optimizer state (its moments belong to the old values).")
@click.option("--dry-run", is_flag=True, help="Check and show the plan; write nothing.")
@max_shard_size_option
@common_options
def command(out: Output, model: str, output: str | None, in_place: bool, npz: tuple[str, ...],
            weights: tuple[str, ...], from_model: str | None, from_layers: tuple[str, ...],
            from_checkpoint: str | None, inits: tuple[str, ...], seed: int | None, allow_nonfinite: bool, reset_optimizer: bool,
            dry_run: bool, max_shard_bytes: int | None) -> None:
    """Assign weights of MODEL directly and write the result to OUT.

    Sources can be combined; each weight may be assigned once. Every path, shape,
    dtype and value is checked first: any problem (all are listed) exits 4 and
    writes nothing. Everything not assigned is kept as it was, optimizer state
    included (unless --reset-optimizer). Runs at the HDF5 level, without TensorFlow
    (--from-checkpoint alone builds MODEL with Keras to match the checkpoint's object
    graph); the written values are read back and compared.

    Examples:

    \b
      wtool inspect model.keras --export w.npz      # edit w.npz, then:
      wtool set-weights model.keras --npz w.npz -o edited.keras
      wtool set-weights model.h5 --weight out/bias=bias.npy -o fixed.h5
      wtool set-weights model.keras --init 'out/*=zeros' --seed 1 --in-place
      wtool set-weights model.keras --from-model other.keras --layer features -o mixed.keras
      wtool set-weights model.keras --from-checkpoint run.ckpt -o restored.keras
    """
    from wtool.ops import surgery

    plan = surgery.plan_set_weights(
        model, output=output, npz=npz, weights=weights, from_model=from_model, from_layers=from_layers,
        from_checkpoint=from_checkpoint, inits=inits, seed=seed, allow_nonfinite=allow_nonfinite, reset_optimizer=reset_optimizer,
        in_place=in_place, dry_run=dry_run, max_shard_bytes=max_shard_bytes)
    if plan.problems:
        out.result(plan.to_json())  # --json: the whole plan with its problems, then the error
        surgery.apply_set_weights(plan)  # raises with every problem
    surgery.apply_set_weights(plan)
    for note in plan.to_json()["notes"]:
        out.info(f"note: {note}")
    out.result(plan.to_json(), lambda console: render_plan(console, plan, summary_only=out.quiet))
