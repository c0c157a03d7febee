"""`wtool new`: make a fresh model from a compact layer spec or a Keras model config."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import click

from wtool.cli.commands.common import InputPath, OutputPath, common_options, unsafe_option
from wtool.cli.render import Output, TextWriter
from wtool.errors import IncompatibleError, InputError, UnsafeError, UsageError
from wtool.fileio import check_input_file
from wtool.graph.spec import parse_layers, parse_shape

# A model config larger than this is not a config someone wrote by hand or exported (exit 3).
CONFIG_MAX_BYTES = 64 * 1024 * 1024


def read_config(path: str) -> dict[str, Any]:
    """A Keras model config: `model.to_json()` output, a `.keras` file's config.json, or a `.keras` file."""
    from wtool.safety.archive import check_archive
    from wtool.safety.safejson import parse_config_json
    from wtool.store.npz_sniff import is_numpy_archive, numpy_archive_message

    p = check_input_file(path)
    if is_numpy_archive(p):
        raise InputError(*numpy_archive_message(p))
    try:
        if zipfile.is_zipfile(p):
            text = check_archive(p).config_bytes.decode("utf-8")  # the archive checked as a whole first
        else:
            if p.stat().st_size > CONFIG_MAX_BYTES:
                raise InputError(f"{path}: larger than {CONFIG_MAX_BYTES // 2**20} MB; not a model config")
            text = p.read_text(encoding="utf-8")
        config = parse_config_json(text, str(path))  # size, depth, value-count and duplicate-key caps
    except KeyError:
        raise InputError(f"{path}: a zip archive without config.json (not a .keras file)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON model config ({exc})") from None
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise InputError(f"{path}: not a Keras model config (no class_name/config)",
                         "use the output of model.to_json() or a .keras file's config.json")
    return config


def model_from_config(config: dict[str, Any], *, unsafe: bool, source: str) -> Any:
    from wtool.graph.custom import require_installed
    from wtool.graph.model import check_config_as_data, import_keras
    from wtool.safety.buildguard import cheap_build

    check_config_as_data(config, Path(source), unsafe)  # refusals (5) and budgets (3) before Keras sees it
    require_installed(config, source)  # --unsafe without the --custom-objects that registers a class: 4
    keras = import_keras()
    compile_config = config.get("compile_config")
    try:
        with cheap_build(source, zero_init=False):  # initialisers run (a fresh model), --max-params counted
            model = keras.saving.deserialize_keras_object(
                {k: v for k, v in config.items() if k != "compile_config"}, safe_mode=not unsafe)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if "safe_mode" in text or "Lambda" in text or "unsafe" in text.lower():
            raise UnsafeError(f"{source}: refused: the config needs code to load ({text})",
                              "pass --unsafe only if you trust this file") from None
        raise IncompatibleError(f"{source}: cannot build a model from this config: {text}") from None
    if not isinstance(model, keras.Model):
        raise InputError(f"{source}: the config describes a {type(model).__name__}, not a model")
    if compile_config:
        try:
            model.compile_from_config(compile_config)
        except (ValueError, TypeError, KeyError) as exc:
            raise IncompatibleError(f"{source}: cannot apply its compile config: {str(exc).splitlines()[0][:200]}",
                                    "pass --no-compile to drop it") from None
    return model


def summarize(model: Any) -> dict[str, Any]:
    """Layers with output shapes and parameter counts (the numbers `inspect` shows)."""
    layers = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        try:
            shape = list(layer.output.shape)
        except (AttributeError, ValueError):
            shape = None
        layers.append({
            "name": layer.name,
            "class": type(layer).__name__,
            "output_shape": shape,
            "params": int(sum(int(w.numpy().size) for w in layer.weights)),
            "trainable": bool(layer.trainable),
        })
    trainable = int(sum(int(w.numpy().size) for w in model.trainable_weights))
    total = int(sum(int(w.numpy().size) for w in model.weights))
    return {"name": model.name, "class": type(model).__name__, "input_shape": list(model.inputs[0].shape),
            "layers": layers, "params": {"total": total, "trainable": trainable, "non_trainable": total - trainable}}


def _quiet_line(doc: dict[str, Any]) -> Any:
    """-q: the one line a script wants (what was written, and the seed to repeat it)."""

    def render(writer: TextWriter) -> None:
        writer.line(f"wrote {doc['output']}; seed {doc['seed']}")

    return render


def _human(doc: dict[str, Any]) -> Any:
    """The summary `wtool inspect OUT` prints, read back from the written file, then seed and compile settings."""

    def render(writer: TextWriter) -> None:
        from wtool.cli.commands.inspect import render_summary
        from wtool.ops.inspect import summarize
        from wtool.store import open_model

        with open_model(doc["output"]) as mf:
            summary = summarize(mf)
        render_summary(writer, summary, {}, False, False, False, None, None)
        extra = [f"seed {doc['seed']}" if doc.get("seed") is not None else "",
                 f"compiled with {doc['compiled']}" if doc.get("compiled") else ""]
        if any(extra):
            writer.line("; ".join(e for e in extra if e))

    return render

INPUT_DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8", "bfloat16")


def _check_usage(out_file: str, config_file: str | None, layers_spec: str | None, input_shape: str | None,
                 optimizer: str | None, lr: float | None, metrics: tuple[str, ...], loss: str | None) -> None:
    """Option combinations and OUT's format, before anything is read or TensorFlow starts."""
    if config_file and (layers_spec or input_shape):
        raise UsageError("give either --config FILE or --layers with --input-shape, not both")
    if not config_file and not layers_spec:
        raise UsageError("nothing to build", "pass --layers SPEC with --input-shape, or --config FILE.json")
    if (optimizer or lr is not None or metrics) and not loss and not config_file:
        raise UsageError("--optimizer/--lr/--metric compile the model and need --loss")
    name = Path(out_file).name.lower()
    if not name.endswith((".keras", ".h5", ".hdf5")) or name.endswith(".weights.h5"):
        raise UsageError(f"{out_file}: OUT must end in .keras or .h5 (not .weights.h5)",
                         "a fresh model needs its architecture saved")
    if layers_spec and not input_shape:
        raise UsageError("--layers needs --input-shape", "e.g. --input-shape 784 or --input-shape 28,28,1")


def _parse_spec(layers_spec: str | None, input_shape: str | None, input_dtype: str | None) -> tuple[Any, Any]:
    """`--layers` and `--input-shape` parsed (usage errors before TensorFlow starts)."""
    assert layers_spec is not None and input_shape is not None
    specs = parse_layers(layers_spec)
    shape = parse_shape(input_shape)
    if input_dtype is not None and input_dtype not in INPUT_DTYPES:
        raise UsageError(f"--input-dtype '{input_dtype}' is not a dtype", "e.g. float32 or int32")
    return specs, shape


def _model_from_spec(specs: Any, shape: Any, input_dtype: str | None, model_name: str) -> Any:
    """The model a parsed `--layers` spec describes, within --max-layers and --max-params."""
    from wtool.graph.spec import build_model
    from wtool.safety import limits
    from wtool.safety.buildguard import cheap_build

    cap = limits.current().max_layers
    if len(specs) > cap:
        raise InputError(f"--layers: {len(specs)} layers (limit {cap:,})", "raise the limit with --max-layers")
    with cheap_build("--layers", zero_init=False):  # --max-params counted before any weight is allocated
        return build_model(specs, shape, input_dtype=input_dtype, name=model_name)


def _compile(keras: Any, model: Any, out_file: str, optimizer: str | None, lr: float | None, loss: str,
             metrics: tuple[str, ...]) -> str:
    """Compile with the named optimizer, loss and metrics (checked against Keras's names first)."""
    from wtool.train.optim import build_optimizer
    from wtool.train.options import TrainOptions

    opt = build_optimizer(TrainOptions(model=out_file, optimizer=optimizer or "adam", lr=lr), None, 1, 1)
    try:
        keras.losses.get(loss)
    except (ValueError, TypeError):
        raise UsageError(f"--loss '{loss}' is not a Keras loss",
                         "e.g. mse, binary_crossentropy, sparse_categorical_crossentropy") from None
    for metric in metrics:
        if metric.lower() in ("accuracy", "acc"):
            continue
        try:
            keras.metrics.get(metric)
        except (ValueError, TypeError):
            raise UsageError(f"--metric '{metric}' is not a Keras metric", "e.g. accuracy, mae, auc") from None
    model.compile(optimizer=opt, loss=loss, metrics=list(metrics) or None)
    return f"{type(opt).__name__.lower()}, loss {loss}"


@click.command(name="new")
@click.argument("out_file", metavar="OUT", type=OutputPath)
@click.option("--input-shape", help="Input shape without the batch axis: 2, 784, 28,28,1 or 28x28x1.")
@click.option("--input-dtype", help="Input dtype (default float32; int32 when the first layer is an embedding).")
@click.option("--layers", "layers_spec", help="Comma-separated layers, e.g. dense:64:relu,dropout:0.2,dense:10:softmax.")
@click.option("--config", "config_file", type=InputPath,
              help="A Keras model config (model.to_json(), a .keras config.json, or a .keras file).")
@click.option("--name", "model_name", default="model", show_default=True, help="Model name.")
@click.option("--seed", type=int,
              help="Seed the initializers: the same command twice writes identical weights (default: drawn and shown).")
@click.option("--optimizer", help="Compile with this optimizer (sgd, adam, ...; saved as train's default).")
@click.option("--lr", type=float, help="Learning rate for --optimizer.")
@click.option("--loss", help="Compile with this loss (mse, sparse_categorical_crossentropy, ...).")
@click.option("--metric", "metrics", multiple=True, help="Compile with this metric (repeatable).")
@click.option("--no-compile", is_flag=True, help="With --config: drop the config's compile settings.")
@unsafe_option
@common_options
def command(out: Output, out_file: str, input_shape: str | None, input_dtype: str | None, layers_spec: str | None,
            config_file: str | None, model_name: str, seed: int | None, optimizer: str | None, lr: float | None,
            loss: str | None, metrics: tuple[str, ...], no_compile: bool, unsafe: bool) -> None:
    """Make a fresh model with newly initialized weights and write it to OUT (.keras, .h5).

    Layer kinds: dense, conv1d, conv2d, maxpool, avgpool, globalavgpool, globalmaxpool,
    flatten, dropout, batchnorm, layernorm, embedding, lstm, gru, simplernn, activation,
    reshape. Each takes its values after colons, then an optional activation, `nobias`,
    `seq` (RNNs: return sequences) and `name=NAME`.

    Examples:

    \b
      wtool new xor.keras --input-shape 2 --layers "dense:3:sigmoid:nobias,dense:1:sigmoid:nobias" --seed 0
      wtool new cnn.keras --input-shape 28,28,1 --layers "conv2d:8:3:relu,maxpool,flatten,dense:10:softmax" --loss sparse_categorical_crossentropy --optimizer adam
      wtool new copy.keras --config sample_models/mlp.keras --seed 1
    """
    _check_usage(out_file, config_file, layers_spec, input_shape, optimizer, lr, metrics, loss)
    config = read_config(config_file) if config_file else None
    spec = _parse_spec(layers_spec, input_shape, input_dtype) if config is None else None
    from wtool.graph.model import import_keras, save_model

    keras = import_keras()
    if seed is None:  # draw one and record it, so the run can be repeated with --seed
        import secrets

        seed = secrets.randbelow(2**31)
    keras.utils.set_random_seed(seed)
    if config is not None:
        if no_compile:
            config.pop("compile_config", None)
        model = model_from_config(config, unsafe=unsafe, source=str(config_file))
    else:
        assert spec is not None
        model = _model_from_spec(*spec, input_dtype, model_name)
    compiled = _compile(keras, model, out_file, optimizer, lr, loss, metrics) if loss else None
    if compiled is None and getattr(model, "compiled", False) and getattr(model, "optimizer", None) is not None:
        compiled = f"{type(model.optimizer).__name__.lower()}, loss {model.loss}"  # from --config's compile_config
    save_model(model, Path(out_file))
    doc = {"output": str(Path(out_file)), "seed": seed, "compiled": compiled, "model": summarize(model)}
    out.result_text(doc, _quiet_line(doc) if out.quiet else _human(doc))

