"""`wtool train MODEL --data - -o OUT`: the stream run's options, progress lines and summary (the
command's hook for wtool.train.stream; the stream has no known length, so lines, not a bar)."""

from __future__ import annotations

import sys
from typing import Any

import click

from wtool.cli.render import Output, TextWriter, fmt_float, fmt_int, fmt_plural
from wtool.train.options import TrainOptions

# Options a stream refuses even when given at their default value (click cannot tell otherwise).
REFUSED_WHEN_GIVEN = {"shuffle": "--shuffle", "plot_path": "--plot"}


class LineReporter:
    """One line on stderr per --save-every (or --log-every) batches; -q silences them."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def begin(self, header: dict[str, Any]) -> None:
        for note in header["notes"]:
            self.out.info(note)
        form = "JSON lines, batches of " + str(header["batch_size"]) if header["format"] == "jsonl" else ".npy batches"
        save = f"; saving OUT every {fmt_int(header['save_every'])} batches" if header["save_every"] else ""
        self.out.info(f"training from stdin ({form}) as it arrives: {header['optimizer']}, loss {header['loss']}; "
                      f"{header['trainable_weights']} trainable and {header['frozen_weights']} frozen weights; "
                      f"seed {header['seed']}{save}" + ("; compiled with XLA" if header["jit"] else ""))

    def progress(self, record: dict[str, Any]) -> None:
        self.out.info(f"batch {fmt_int(record['batches'])}  rows {fmt_int(record['rows'])}  loss "
                      f"{fmt_float(record['loss'])}  {fmt_int(int(record['rows_per_s']))} rows/s"
                      + ("  saved" if record["saved"] else ""))


def _render(summary: dict[str, Any]) -> Any:
    def human(writer: TextWriter) -> None:
        writer.line(f"trained {summary['model']} -> {summary['output']} (from stdin)")
        saves = f", saved every {summary['save_every']}" if summary["save_every"] else ""
        rows = [("batches", f"{fmt_int(summary['batches'])} ({fmt_plural(summary['rows'], 'row')}{saves})")]
        final = "  ".join(f"{k} {fmt_float(v)}" for k, v in summary["metrics"].items())
        if summary["final_loss"] is not None:
            rows.append(("final", f"loss {fmt_float(summary['final_loss'])} (last batches)"
                         + (f"  {final} (whole stream)" if final else "")))
        rows.append(("time", f"{summary['wall_time_s']:.1f} s wall"))
        steps = f"{summary['optimizer']}, {fmt_plural(summary['optimizer_steps'], 'step')}"
        if summary["restored_optimizer_steps"]:
            steps += f" ({fmt_int(summary['restored_optimizer_steps'])} before this run)"
        rows.append(("optimizer", steps))
        frozen = summary["frozen"]["weights"]
        rows.append(("frozen", f"{frozen} frozen weights unchanged" if frozen else "no frozen weights"))
        rows.append(("seed", str(summary["seed"])))
        for key, value in rows:
            writer.line(value, head=f"{key:<11}")

    return human


def run(out: Output, opts: TrainOptions, ctx: click.Context, save_every: int | None, log_every: int | None) -> None:
    """Train from stdin and print the summary."""
    from wtool.train.stream import StreamOptions, train_stream

    given = tuple(option for name, option in REFUSED_WHEN_GIVEN.items()
                  if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
                  and (name != "shuffle" or ctx.params[name]))  # --no-shuffle is what a stream does
    stream = StreamOptions(save_every=save_every, log_every=log_every, given=given)
    summary = train_stream(opts, stream, None if out.quiet else LineReporter(out))
    out.result_text(summary, _render(summary))
    sys.stdout.flush()
