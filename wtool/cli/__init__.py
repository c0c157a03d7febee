"""The command line: the click app, one module per command, rendering, exit codes.

Owns: `app` (the group, lazy command loading, the one place errors become exit codes),
`render` (text tables and JSON), `commands/` (one module per command: parse -> call ->
render).
May import: every other part of wtool; nothing imports it. No TensorFlow at import time:
commands import it inside the functions that run a graph.
"""

from wtool.cli.app import COMMANDS, cli, main, report_error

__all__ = ["COMMANDS", "cli", "main", "report_error"]
