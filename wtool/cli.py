"""The click app: wires the commands and maps errors to exit codes in one place.

No TensorFlow here: commands import it lazily inside the functions that run a graph.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

import click

from wtool import __version__
from wtool.errors import WtoolError

# command name -> module under wtool.commands exposing `command`.
COMMANDS = {
    "new": "new",
    "inspect": "inspect",
    "diff": "diff",
    "train": "train",
    "infer": "infer",
    "set-weights": "set_weights",
    "transfer": "transfer",
}


def _debug_enabled(ctx: click.Context | None) -> bool:
    if os.environ.get("WTOOL_DEBUG"):
        return True
    return bool(ctx is not None and ctx.find_root().meta.get("wtool.debug"))


_CONTROL = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)])


def _printable(text: str) -> str:
    """The text with terminal control characters escaped (messages can quote text from untrusted files)."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) in _CONTROL else c for c in str(text))


def report_error(error: WtoolError) -> None:
    click.echo(f"error: {_printable(error.message)}", err=True)
    if error.hint:
        click.echo(f"hint: {_printable(error.hint)}", err=True)


class WtoolGroup(click.Group):
    """A group that turns WtoolError into `error:`/`hint:` lines and the error's exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(f"wtool.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"wtool.commands.{module_name}":
                return None  # not built yet
            raise
        command: click.Command = module.command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WtoolError as error:
            if _debug_enabled(ctx):
                traceback.print_exc()
            report_error(error)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place a bug becomes exit 70
            if _debug_enabled(ctx):
                traceback.print_exc()
            name = type(exc).__name__
            click.echo(_printable(f"error: internal error ({name}: {exc})".splitlines()[0]), err=True)
            click.echo("hint: this is a bug in wtool; run again with --debug and report the traceback", err=True)
            ctx.exit(70)


@click.group(cls=WtoolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="wtool")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """wtool: train, run, inspect, diff and edit the weights of Keras models.

    Works on .keras, legacy .h5 (Keras 1/2, tf.keras, Keras 3) and .weights.h5.
    Exit codes: 0 ok, 1 diff found a difference, 2 usage, 3 unreadable input,
    4 incompatible shapes/data, 5 refused as unsafe, 6 training diverged,
    7 a worker of a multi-worker job failed, 70 internal error, 130 interrupted.
    """
    if debug:
        ctx.meta["wtool.debug"] = True


def main() -> None:
    cli.main(prog_name="wtool")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
