"""`wtool export MODEL OUT --format saved_model|tflite|onnx`: Keras's own `model.export`, then a check.

After exporting, the artifact is run on a random batch of the model's input shape (the
SavedModel's `serving_default` signature, the TFLite interpreter, onnxruntime) and compared
with Keras's own prediction (`training=False`): the report carries the max absolute
difference, and `atol` turns a larger one into a failed check (exit 1 in the CLI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.fileio import atomic_output, check_model_input

FORMATS = {"saved_model": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}
ONNX_HINT = "pip install 'wtool[onnx]' (tf2onnx, onnx and onnxruntime), or export saved_model / tflite"


@dataclass
class ExportReport:
    model: str
    output: str
    format: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    batch: int = 4
    runtime: str = ""
    max_abs_diff: float | None = None
    atol: float | None = None
    ok: bool = True
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_onnx_available() -> None:
    missing = []
    for name in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
        except Exception:  # noqa: BLE001 - a broken install is as good as none
            missing.append(name)
    if missing:
        raise UsageError(f"--format onnx needs {', '.join(missing)}, which are not installed", ONNX_HINT)


def _random_batch(model: Any, batch: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = tuple(batch if i == 0 or d is None else int(d) for i, d in enumerate(tensor.shape))
        dtype = np.dtype(str(getattr(tensor, "dtype", "float32")))
        if dtype.kind in "iu":
            arrays.append(rng.integers(0, 2, shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _flat(outputs: Any) -> list[np.ndarray]:
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    if isinstance(outputs, list | tuple):
        return [np.asarray(o) for o in outputs]
    return [np.asarray(outputs)]


def export_model(model_path: str, output: str, fmt: str, *, atol: float | None = None, batch: int = 4,
                 seed: int = 0, unsafe: bool = False) -> ExportReport:
    """Export MODEL to OUT through Keras, run the artifact and compare it with Keras. Atomic."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (not {fmt!r})")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1 (not {batch})")
    if atol is not None and not atol >= 0:
        raise UsageError(f"--atol must not be negative or NaN (not {atol:g})")
    out = Path(output)
    if fmt == "tflite" and out.suffix.lower() != ".tflite":
        raise UsageError(f"{output}: a TFLite output must end in .tflite")
    if fmt == "onnx" and out.suffix.lower() != ".onnx":
        raise UsageError(f"{output}: an ONNX output must end in .onnx")
    if fmt == "saved_model" and out.exists():
        raise UsageError(f"{output}: exists; a SavedModel is a new directory", "remove it or choose another name")
    check_model_input(model_path)
    if fmt == "onnx":
        _check_onnx_available()
    from wtool.graph.model import load_model

    model = load_model(model_path, unsafe=unsafe, compile=False)
    if not getattr(model, "inputs", None):
        raise IncompatibleError(f"{model_path}: the model has no saved input shape to export with",
                                "build it on an input (keras.Input) and save it again")
    report = ExportReport(str(model_path), str(output), fmt, batch=batch, atol=atol)
    report.inputs = [{"name": getattr(t, "name", f"input_{i}"), "shape": [None if d is None else int(d)
                                                                          for d in t.shape],
                      "dtype": str(t.dtype)} for i, t in enumerate(model.inputs)]
    xs = _random_batch(model, batch, seed)
    want = _flat(model(xs if len(xs) > 1 else xs[0], training=False))
    if fmt == "saved_model":
        got = _export_saved_model(model, out, xs, report)
    else:
        with atomic_output(out) as tmp:
            with _quiet():
                model.export(str(tmp), format=FORMATS[fmt], verbose=False)
            got = _run_tflite(tmp, xs, report) if fmt == "tflite" else _run_onnx(tmp, xs, report)
    if len(got) != len(want):
        raise IncompatibleError(f"{output}: the exported model has {len(got)} outputs, Keras {len(want)}")
    diffs = [float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)))) if w.size else 0.0
             for g, w in zip(got, want, strict=True)]
    report.max_abs_diff = max(diffs) if diffs else 0.0
    report.ok = atol is None or report.max_abs_diff <= atol
    return report


@contextlib.contextmanager
def _quiet() -> Any:
    """No Python warnings, and file descriptor 2 on /dev/null: TensorFlow Lite's C++ runtime prints
    `INFO: Created TensorFlow Lite XNNPACK delegate` there, which no log level silences (kept with WTOOL_DEBUG)."""
    import sys

    saved = None
    if not os.environ.get("WTOOL_DEBUG"):
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:  # no real fd 2 (embedded use)
            saved = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def _export_saved_model(model: Any, out: Path, xs: list[np.ndarray], report: ExportReport) -> list[np.ndarray]:
    """Into a temporary directory beside OUT, checked there, then renamed into place."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: output directory {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        target = tmp / "saved_model"
        with _quiet():
            model.export(str(target), format="tf_saved_model", verbose=False)
        import tensorflow as tf

        loaded = tf.saved_model.load(str(target))
        signature = loaded.signatures["serving_default"]
        names = list(signature.structured_input_signature[1].keys())
        if len(names) != len(xs):
            raise IncompatibleError(f"{out}: the serving signature takes {len(names)} inputs, the model {len(xs)}")
        by_name = {n: x for n, x in zip(sorted(names), xs, strict=True)} if len(xs) > 1 else {names[0]: xs[0]}
        outputs = signature(**{n: tf.constant(x) for n, x in by_name.items()})
        report.runtime = "tf.saved_model serving_default signature"
        got = [outputs[k].numpy() for k in sorted(outputs)]
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return got


def _run_tflite(path: Path, xs: list[np.ndarray], report: ExportReport) -> list[np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter  # the maintained runtime, when installed

        report.runtime = "ai_edge_litert Interpreter"
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806 - a class
        report.runtime = "tf.lite.Interpreter"
    with _quiet():
        interp = Interpreter(model_path=str(path))
        details = interp.get_input_details()
        if len(details) != len(xs):
            raise IncompatibleError(
                f"{report.output}: the TFLite model takes {len(details)} inputs, the model {len(xs)}")
        for d, x in zip(details, xs, strict=True):
            interp.resize_tensor_input(d["index"], x.shape)
        interp.allocate_tensors()
        for d, x in zip(details, xs, strict=True):
            interp.set_tensor(d["index"], x.astype(d["dtype"]))
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _run_onnx(path: Path, xs: list[np.ndarray], report: ExportReport) -> list[np.ndarray]:  # pragma: no cover
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    report.runtime = f"onnxruntime {onnxruntime.__version__}"
    return list(session.run(None, dict(zip(names, xs, strict=True))))
