"""Option bundles shared by every command, written once."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from wtool.cli.render import Output
from wtool.safety import limits


def without_blas_threads() -> None:
    """For commands that multiply no matrices (inspect, diff): numpy loads without an OpenBLAS thread pool.

    Starting the pool costs ~8 ms of a ~160 ms `wtool inspect` on 2 cores. Only before numpy is
    imported (so an embedding process is left alone), and a value the user set is kept.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --json, -q/--quiet and --debug; pass an `out: Output` instead of the two flags."""

    @click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout and nothing else there.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress or notes on stderr.")
    @click.option("--debug", is_flag=True, help="Show the traceback of an error.")
    @click.option("--max-params", envvar="WTOOL_MAX_PARAMS", metavar="N",
                  help="Refuse to build a graph with more than N parameters (default 1e9; only where a graph is "
                       "built: new, train, infer, transfer --replace-head, writes through Keras).")
    @click.option("--max-layers", envvar="WTOOL_MAX_LAYERS", metavar="N",
                  help="Refuse to build a graph with more than N layers (default 10000; where a graph is built).")
    @click.option("--max-bytes", envvar="WTOOL_MAX_BYTES", metavar="SIZE",
                  help="Refuse inputs that decompress to / declare more than SIZE (default 16G).")
    @functools.wraps(func)
    def wrapper(*args: Any, json_mode: bool, quiet: bool, debug: bool, max_params: str | None,
                max_layers: str | None, max_bytes: str | None, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if debug:
            ctx.find_root().meta["wtool.debug"] = True
            os.environ["WTOOL_DEBUG"] = "1"  # also keeps TensorFlow's start-up messages
        token = limits.set_current(limits.from_options(max_params, max_layers, max_bytes))
        try:
            return func(*args, out=Output(json_mode=json_mode, quiet=quiet), **kwargs)
        finally:
            limits.reset(token)

    return wrapper


def unsafe_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--unsafe, and --custom-objects (imported here, before the command loads any graph)."""

    @click.option("--unsafe", is_flag=True,
                  help="Allow model files that need code to load (Lambda layers, custom objects). Only for files "
                       "you trust.")
    @click.option("--custom-objects", "custom_objects", multiple=True, metavar="FILE.py|MODULE",
                  help="Import this Python file or module first, so the classes it registers with "
                       "@keras.saving.register_keras_serializable load (repeatable; runs its code: needs --unsafe).")
    @functools.wraps(func)
    def wrapper(*args: Any, custom_objects: tuple[str, ...], **kwargs: Any) -> Any:
        if custom_objects:
            from wtool.graph.custom import install
            from wtool.graph.model import import_keras

            install(custom_objects, unsafe=kwargs["unsafe"], load_keras=import_keras)
        return func(*args, **kwargs)

    return wrapper


def loss_options(*, loss: str, loss_weight: str, metric: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--loss, --loss-weight and --metric (repeatable, NAME= for one output), as `losses`, `loss_weights` and
    `metrics`; the help texts are the command's, as each says its own default."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option("--metric", "metrics", multiple=True, metavar="[NAME=]METRIC", help=metric)(func)
        func = click.option("--loss-weight", "loss_weights", multiple=True, metavar="NAME=W", help=loss_weight)(func)
        return click.option("--loss", "losses", multiple=True, metavar="[NAME=]LOSS", help=loss)(func)

    return decorate


def folder_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--image-size, --color-mode and --max-length: how a folder of images or text files is read (train, eval,
    infer)."""
    func = click.option("--max-length", type=int, metavar="N", help="A folder of text files: keep the first N "
                        "characters of each file (Keras's max_length; default: all).")(func)
    func = click.option("--color-mode", type=click.Choice(["grayscale", "rgb", "rgba"]),
                        help="A folder of images: channels to decode (default: from the model's input shape).")(func)
    return click.option("--image-size", metavar="HxW", help="A folder of images: resize to HEIGHTxWIDTH (default: "
                        "the model's input shape).")(func)


def column_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--x-cols and --y-cols: a CSV's columns per model input and output (train, eval)."""
    func = click.option("--y-cols", "y_cols", multiple=True, metavar="[NAME=]COLS",
                        help="CSV label columns of a model output; repeat per output.")(func)
    return click.option("--x-cols", "x_cols", multiple=True, metavar="[NAME=]COLS",
                        help="CSV feature columns of a model input (names or 0-based indexes, ranges like 0-783); "
                        "repeat per input.")(func)


def array_options(*, x: str, y: str, x_key: str, y_key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--x / --y (.npy files) and --x-key / --y-key (.npz arrays), NAME= per input or output, as `x_files`,
    `y_files`, `x_keys` and `y_keys`; the help texts are the command's (train's also speak of --data -)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option("--y-key", "y_keys", multiple=True, metavar="[NAME=]KEY", help=y_key)(func)
        func = click.option("--x-key", "x_keys", multiple=True, metavar="[NAME=]KEY", help=x_key)(func)
        func = click.option("--y", "y_files", multiple=True, metavar="[NAME=]FILE.npy", help=y)(func)
        return click.option("--x", "x_files", multiple=True, metavar="[NAME=]FILE.npy", help=x)(func)

    return decorate


class _PathText(click.Path):
    """click's Path minus the existence checks (wtool's own give exit 3), refusing an empty string."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("the path is empty", param, ctx)
        return super().convert(value, param, ctx)


InputPath = _PathText(dir_okay=True, file_okay=True, path_type=str)
OutputPath = _PathText(dir_okay=False, path_type=str)
DirPath = _PathText(file_okay=False, path_type=str)


def max_shard_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--max-shard-size SIZE: write OUT.weights.json as Keras-style shards of at most SIZE bytes."""

    @click.option("--max-shard-size", "max_shard_size", metavar="SIZE",
                  help="Write OUT.weights.json as shards of at most SIZE (e.g. 500M, 2G; split as Keras's "
                       "save_weights(max_shard_size=) splits). Default: a sharded input keeps its split, "
                       "anything else 5G shards.")
    @functools.wraps(func)
    def wrapper(*args: Any, max_shard_size: str | None, **kwargs: Any) -> Any:
        size = limits.parse_size(max_shard_size, "--max-shard-size") if max_shard_size is not None else None
        return func(*args, max_shard_bytes=size, **kwargs)

    return wrapper
