"""The click app: wires the commands and maps errors to exit codes in one place.

No TensorFlow here: commands import it lazily inside the functions that run a graph.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback
from typing import Any, NoReturn

import click

from wtool import __version__
from wtool.cli.render import one_line, printable, silence_stdout
from wtool.errors import WtoolError

# command name -> module under wtool.cli.commands exposing `command`.
COMMANDS = {
    "new": "new",
    "inspect": "inspect",
    "diff": "diff",
    "train": "train",
    "infer": "infer",
    "eval": "eval",
    "set-weights": "set_weights",
    "transfer": "transfer",
    "convert": "convert",
    "merge": "merge",
    "export": "export",
    "quantize": "quantize",
}


# What a shell reports for a command killed by SIGPIPE; Python ignores the signal, so say it ourselves.
EXIT_BROKEN_PIPE = 141
# Writing failed for a reason outside wtool (full disk, quota, device error): exit 2, never "a bug".
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _write_failed(exc: OSError) -> None:
    where = f" {exc.filename}" if exc.filename else ""
    click.echo(one_line(f"error: cannot write{where}: {exc.strerror or exc}"), err=True)
    click.echo("hint: check the disk or device the output goes to (stdout, or the file named)", err=True)


def _exit(code: int, standalone_mode: bool) -> int:
    if standalone_mode:
        sys.exit(code)
    return code


def _debug_enabled(ctx: click.Context | None) -> bool:
    if os.environ.get("WTOOL_DEBUG"):
        return True
    return bool(ctx is not None and ctx.find_root().meta.get("wtool.debug"))


def report_error(error: WtoolError) -> None:
    message = printable(error.message) if error.multiline else one_line(error.message)
    click.echo(f"error: {message}", err=True)
    if error.hint:
        click.echo(f"hint: {one_line(error.hint)}", err=True)


class WtoolGroup(click.Group):
    """A group that turns WtoolError into `error:`/`hint:` lines and the error's exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        # Imported on demand: `wtool inspect` never pays for the train command's imports.
        module = importlib.import_module(f"wtool.cli.commands.{module_name}")
        command: click.Command = module.command
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = click.utils.make_str(args[0]) if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            suggestion = f" (did you mean '{close[0]}'?)" if close else ""
            raise click.UsageError(f"no such command '{name}'{suggestion}", ctx)
        return super().resolve_command(ctx, args)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the app; click's own usage errors become one `error:` line plus a `hint:`, exit 2."""
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
            return _exit(2, standalone_mode)
        except click.UsageError as exc:
            message = " ".join(exc.format_message().split())
            click.echo(one_line(f"error: {message[:1].lower()}{message[1:]}"), err=True)
            click.echo(f"hint: see '{self._command_path(exc, args)} --help'", err=True)
            return _exit(2, standalone_mode)
        except click.ClickException as exc:
            click.echo(one_line(f"error: {exc.format_message()}"), err=True)
            return _exit(exc.exit_code, standalone_mode)
        except click.exceptions.Abort:
            click.echo("error: interrupted", err=True)
            return _exit(130, standalone_mode)
        except BrokenPipeError:  # while printing --help or --version
            silence_stdout()
            return _exit(EXIT_BROKEN_PIPE, standalone_mode)
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            _write_failed(exc)
            return _exit(2, standalone_mode)
        code = result if isinstance(result, int) else 0
        return _exit(code, standalone_mode)

    @staticmethod
    def _command_path(exc: click.UsageError, args: Any) -> str:
        """`wtool CMD` for the help hint; click leaves the context out of some parse errors."""
        if exc.ctx is not None:
            return exc.ctx.command_path
        words = list(sys.argv[1:] if args is None else args)
        name = next((w for w in words if w in COMMANDS), None)
        return f"wtool {name}" if name else "wtool"

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
        except BrokenPipeError:  # the reader of stdout stopped early (`| head`): end quietly, status 128+SIGPIPE
            silence_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                self._internal_error(ctx, exc)
            _write_failed(exc)
            ctx.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place a bug becomes exit 70
            self._internal_error(ctx, exc)

    @staticmethod
    def _internal_error(ctx: click.Context, exc: Exception) -> NoReturn:
        if _debug_enabled(ctx):
            traceback.print_exc()
        name = type(exc).__name__
        click.echo(one_line(f"error: internal error ({name}: {exc})".splitlines()[0]), err=True)
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
    7 a worker of a multi-worker job failed, 70 internal error, 130 interrupted,
    141 the reader of stdout stopped early.
    """
    if debug:
        ctx.meta["wtool.debug"] = True
        os.environ["WTOOL_DEBUG"] = "1"


def main() -> None:
    # A closed stdout/stderr (`wtool inspect M >&-`) discards what would go there, as /dev/null would.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    cli.main(prog_name="wtool")
