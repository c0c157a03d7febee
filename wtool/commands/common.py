"""Option bundles shared by every command, written once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from wtool.render import Output


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --json, -q/--quiet and --debug; pass an `out: Output` instead of the two flags."""

    @click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout and nothing else there.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress or notes on stderr.")
    @click.option("--debug", is_flag=True, help="Show the traceback of an error.")
    @functools.wraps(func)
    def wrapper(*args: Any, json_mode: bool, quiet: bool, debug: bool, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if debug:
            ctx.find_root().meta["wtool.debug"] = True
        return func(*args, out=Output(json_mode=json_mode, quiet=quiet), **kwargs)

    return wrapper


def unsafe_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--unsafe",
        is_flag=True,
        help="Allow model files that need code to load (Lambda layers, custom objects). Only for files you trust.",
    )(func)


# A path argument that click does not check for existence: wtool's own checks give exit 3.
InputPath = click.Path(dir_okay=True, file_okay=True, path_type=str)
OutputPath = click.Path(dir_okay=False, path_type=str)
