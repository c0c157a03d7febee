"""The error family. Each class carries its exit code, so one place (cli.main) maps them."""

from __future__ import annotations


class WtoolError(Exception):
    """Base class: a problem the user can act on. Never shown with a traceback."""

    exit_code = 70

    def __init__(self, message: str, hint: str | None = None, *, multiline: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # One line unless built as a list on purpose (one line per problem); a newline inside a
        # name from a file is shown escaped either way.
        self.multiline = multiline


class UsageError(WtoolError):
    """Bad option or argument (exit 2)."""

    exit_code = 2


class InputError(WtoolError):
    """An input cannot be read: missing, corrupt, unsupported, over a limit (exit 3)."""

    exit_code = 3


class IncompatibleError(WtoolError):
    """Shapes, names or data do not fit the model (exit 4)."""

    exit_code = 4


class UnsafeError(WtoolError):
    """Refused as unsafe: the file needs code to load (exit 5)."""

    exit_code = 5


class DivergedError(WtoolError):
    """Training loss became NaN or Inf (exit 6)."""

    exit_code = 6


class ClusterError(WtoolError):
    """A worker of a multi-worker job failed, stopped answering or never joined (exit 7)."""

    exit_code = 7


class InternalError(WtoolError):
    """A bug in wtool, e.g. a frozen weight moved (exit 70)."""

    exit_code = 70


class Interrupted(WtoolError):
    """SIGINT/SIGTERM; a checkpoint may have been saved (exit 130)."""

    exit_code = 130
