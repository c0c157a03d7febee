"""`train --mixed-precision bfloat16|float16`: Keras's own mixed dtype policies for the run only.

The model is rebuilt by Keras from its saved config with every float32 layer policy replaced by
`mixed_bfloat16` / `mixed_float16` (what `keras.config.set_dtype_policy` would give those layers
when built in code): layers compute in 16 bits and keep float32 variables, and Keras's losses
cast the outputs to float32. float16 wraps the optimizer in `keras.optimizers.LossScaleOptimizer`
(dynamic loss scaling, as `model.compile` does under `mixed_float16`).

OUT is the model as it was loaded, float32 policies and all, with the trained variables copied
in (they are float32 already): mixed precision is how this run computed, not a property of the
file, so inference and later runs are unchanged unless asked again.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wtool.errors import IncompatibleError, InternalError, UsageError

POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def check_options(mixed_precision: str | None, strategy: str, lora: object | None) -> None:
    """Combinations refused before TensorFlow starts (exit 2)."""
    if mixed_precision is None:
        return
    if mixed_precision not in POLICIES:
        raise UsageError(f"--mixed-precision must be bfloat16 or float16 (not {mixed_precision})")
    if lora is not None:
        raise UsageError("--mixed-precision with --lora is not supported yet (the adapters are added to a model "
                         "rebuilt in float32)", "train the adapters in float32 (leave --mixed-precision out)")
    if strategy in ("mirrored", "multi-worker"):
        raise UsageError(f"--mixed-precision with --strategy {strategy} is not supported: the replicated train step "
                         "does not scale the loss", "train on one device (--strategy one-device or auto)")


def check_distribution(mixed_precision: str | None, distributed: bool) -> None:
    """`--strategy auto` that chose several devices: refused as an explicit --strategy mirrored is."""
    if mixed_precision is not None and distributed:
        raise UsageError("--mixed-precision is not supported with several devices (--strategy auto chose a "
                         "distributed strategy)", "pass --strategy one-device")


def check_resume(meta: dict[str, Any], mixed_precision: str | None) -> None:
    """A checkpoint holds its run's optimizer (a LossScaleOptimizer for float16): resume with the same policy."""
    if meta and meta.get("mixed_precision") != mixed_precision:
        was = meta.get("mixed_precision")
        option = f"--mixed-precision {was}" if was else "no --mixed-precision"
        raise UsageError(f"--resume: the checkpoint was written by a run with {option}",
                         f"resume with {option}, as that run")


def _layers(model: Any) -> Iterator[Any]:
    """Every layer below `model`, parents before their sublayers, in a fixed order."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def _rewrite(config: Any, policy: str) -> int:
    """Replace each float32 DTypePolicy in a saved config by `policy`, in place; how many were replaced."""
    count = 0
    if isinstance(config, dict):
        dtype = config.get("dtype")
        if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy" \
                and (dtype.get("config") or {}).get("name") == "float32":
            dtype["config"] = {**dtype["config"], "name": policy}
            count += 1
        for key, value in config.items():
            if key != "dtype":
                count += _rewrite(value, policy)
    elif isinstance(config, list):
        count += sum(_rewrite(item, policy) for item in config)
    return count


def rebuild(model: Any, mixed_precision: str, unsafe: bool) -> tuple[Any, str]:
    """A copy of `model` with the mixed policy, rebuilt by Keras (variables and assets such as a
    TextVectorization vocabulary carried by Keras's own saving), and the policy's name."""
    from wtool.graph.model import import_keras

    keras = import_keras()
    quantized = [layer.name for layer in _layers(model) if getattr(layer.dtype_policy, "quantization_mode", None)]
    if quantized:
        raise IncompatibleError(f"--mixed-precision: the model has quantized layers ({', '.join(quantized[:3])}); "
                                "their integer kernels do not train in a mixed float policy",
                                "train the float model, then `wtool quantize` it")
    policy = POLICIES[mixed_precision]
    with tempfile.TemporaryDirectory(prefix="wtool-mixed-") as tmp:
        plain, mixed = Path(tmp) / "float32.keras", Path(tmp) / "mixed.keras"
        model.save(plain)
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(mixed, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    top = (config.get("config") or {}).get("dtype")  # the model's own policy (not a layer's)
                    top_float32 = isinstance(top, dict) and (top.get("config") or {}).get("name") == "float32"
                    if _rewrite(config, policy) - top_float32 < 1:
                        raise IncompatibleError("--mixed-precision: no layer of the model computes in float32, so "
                                                "there is nothing to run in 16 bits")
                    data = json.dumps(config).encode()
                dst.writestr(item, data)
        rebuilt = keras.saving.load_model(mixed, safe_mode=not unsafe, compile=False)
    return rebuilt, policy


def wrap_optimizer(optimizer: Any, mixed_precision: str | None, trainable: list[Any]) -> Any:
    """float16: the (built) optimizer inside Keras's LossScaleOptimizer, built on the same variables; else itself."""
    if mixed_precision != "float16":
        return optimizer
    from wtool.graph.model import import_keras

    keras = import_keras()
    wrapped = keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
    with keras.name_scope(wrapped.name, caller=wrapped):
        wrapped.build(trainable)
    return wrapped


def describe(policy: str, optimizer: Any) -> str:
    """The run header's note."""
    text = f"mixed precision: {policy} (16-bit compute, float32 weights)"
    if hasattr(optimizer, "inner_optimizer"):
        text += f"; dynamic loss scaling by LossScaleOptimizer (initial scale {optimizer.initial_scale:g})"
    return text + "; OUT is written with float32 weights and the model's own dtype policy"


def copy_back(trained: Any, original: Any) -> Any:
    """`original` (float32 policies) with the trained variables and trainable flags of its mixed copy."""
    for mixed_layer, layer in zip(_layers(trained), _layers(original), strict=True):
        layer.trainable = mixed_layer.trainable
    pairs = list(zip(trained.weights, original.weights, strict=True))
    for src, dst in pairs:
        if src.path != dst.path or tuple(src.shape) != tuple(dst.shape) or str(src.dtype) != str(dst.dtype):
            raise InternalError(f"--mixed-precision: the rebuilt model's weight {src.path} {src.dtype} does not "
                                f"match {dst.path} {dst.dtype}", "this is a bug in wtool: run with --debug and report it")
    for src, dst in pairs:
        dst.assign(src)
    return original
