"""Loading and saving Keras model graphs (TensorFlow is imported here, lazily).

The one place graph commands (train, infer, transfer --replace-head, new) get a
`keras.Model` from a file and write one back.

How a file becomes a model:

1. `check_graph` (no TensorFlow): read the saved model config through the weight store,
   translate it to a Keras 3 config (`wtool.graph.legacy_config.translate`: Keras 1, Keras 2 and
   tf.keras configs, no code executed) and decide whether it can be rebuilt safely.
2. The translated config is deserialized by Keras in safe mode (`--unsafe` lifts that
   for Lambda layers and registered custom objects only).
3. Every weight is assigned by its canonical path from the weight store, bitwise; a
   layer whose saved arrays do not match by name (Keras 1 `_W`/`_b`, per-gate LSTM
   arrays, CuDNN layers) goes through `wtool.graph.legacy_weights`. Any mismatch is reported
   once, naming both sides, with exit 4.

A Keras 3 `.keras` archive that needs no translation is loaded by Keras itself (same result).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wtool.errors import IncompatibleError, InputError, UnsafeError, WtoolError
from wtool.fileio import atomic_output, check_input_file
from wtool.graph.legacy_config import (
    Problem,
    Translation,
    TranslationError,
    translate,
    translate_training_config,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from wtool.store import ModelFile

# How many problems a message lists before "and N more".
MAX_LISTED = 6


def import_keras() -> Any:
    """Import keras (and TensorFlow) quietly and return the module.

    TensorFlow's C++ start-up lines (oneDNN, CUDA drivers, absl) go straight to file
    descriptor 2 before any log level applies, so stderr is pointed at /dev/null while
    it loads, whatever TF_CPP_MIN_LOG_LEVEL the environment holds (CI scripts export 0 to 3;
    none of those lines is meant for a wtool user). The C++ level is pinned to 3 for the
    same reason. Only WTOOL_DEBUG keeps them, for debugging TensorFlow itself.
    """
    import logging
    import sys

    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return sys.modules["keras"]
    quiet = not os.environ.get("WTOOL_DEBUG")
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved_fd = None
    if quiet:
        try:
            sys.stderr.flush()
            saved_fd = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:  # no real fd 2 (embedded use): import noisily
            saved_fd = None
    try:
        import keras
        import tensorflow  # noqa: F401  (its start-up messages belong inside the redirect)
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)

    logging.getLogger("absl").setLevel(logging.ERROR)
    return keras


# ---------------------------------------------------------------------------------------------
# checking (no TensorFlow)


@dataclass
class CheckResult:
    """Whether a file's graph can be rebuilt, and why not."""

    path: str
    exit_code: int  # 0 ok, 4 incompatible, 5 needs code (--unsafe)
    status: str  # "ok", "needs-unsafe", "incompatible", "no-graph"
    reasons: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    keras_version: str | None = None
    loader: str = "translated"  # "keras" (a Keras 3 archive Keras loads itself) or "translated"
    hint: str | None = None  # which option would make the graph load

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "status": self.status,
            "exit_code": self.exit_code,
            "keras_version": self.keras_version,
            "loader": self.loader,
            "reasons": list(self.reasons),
            "translations": list(self.changes),
            "hint": self.hint,
        }

    def summary(self) -> str:
        if self.ok:
            return "the graph can be rebuilt" + (f" ({len(self.changes)} translations)" if self.changes else "")
        return {"needs-unsafe": "the graph needs code from the file (--unsafe)",
                "incompatible": "the graph cannot be rebuilt",
                "no-graph": "the file holds no architecture"}.get(self.status, self.status)


def _verdict(problems: list[Problem], unsafe: bool) -> tuple[int, str]:
    if any(p.kind == "incompatible" for p in problems):
        return 4, "incompatible"
    if any(p.kind == "code" for p in problems) and not unsafe:
        return 5, "needs-unsafe"
    if unsafe and missing_classes(problems):
        # --unsafe allows code, but a custom class still has to be installed (--custom-objects)
        return 4, "incompatible"
    return 0, "ok"


def missing_classes(problems: list[Problem]) -> list[str]:
    """Custom classes the graph needs that no --custom-objects code has registered."""
    from wtool.graph import custom

    names = [p.custom_class for p in problems if p.kind == "code" and p.custom_class]
    return list(dict.fromkeys(n for n in names if not custom.is_installed(n)))


def _unsafe_hint(problems: list[Problem]) -> str:
    from wtool.graph.custom import OPTION_HINT

    classes = list(dict.fromkeys(p.custom_class for p in problems if p.kind == "code" and p.custom_class))
    if not classes:
        return "pass --unsafe only if you trust this file"
    shown = ", ".join(f"`{c}`" for c in classes[:3])
    return f"pass {OPTION_HINT} (the code that registers {shown}), only if you trust that code and this file"


def _is_native(mf: ModelFile) -> bool:
    """A Keras 3 `.keras` archive (Keras loads those itself)."""
    return str(mf.keras_version or "").startswith("3") and mf.format == "keras"


def _open_store(path: Path, arch_config: dict[str, Any] | None = None) -> ModelFile:
    from wtool.store import open_model

    return open_model(path, arch_config=arch_config)


WEIGHTS_ONLY_HINT = "use the .keras or .h5 model; train and infer also take --arch MODEL with a weights-only file"


def _translation(mf: ModelFile, path: Path) -> Translation:
    if mf.config is None:
        raise IncompatibleError(f"{path}: the file has no model config", WEIGHTS_ONLY_HINT)
    try:
        return translate(mf.config, mf.keras_version, getattr(mf, "backend", None),
                         {w.path: tuple(w.shape) for w in mf.weights})
    except TranslationError as exc:
        raise InputError(f"{path}: {exc.message}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: the model config is malformed ({type(exc).__name__}: {exc})") from None


def check_graph(path: str | os.PathLike[str], unsafe: bool = False) -> CheckResult:
    """Can the graph of PATH be rebuilt (with or without --unsafe)? Never imports TensorFlow."""
    from wtool.fileio import checkpoint_kind

    if checkpoint_kind(path) == "tf":
        reason = ("a TensorFlow checkpoint holds variables, not an architecture: `wtool set-weights MODEL "
                  "--from-checkpoint` puts them into a model file")
        return CheckResult(str(path), 4, "no-graph", [reason])
    if checkpoint_kind(path) == "orbax":
        return CheckResult(str(path), 4, "no-graph", ["an Orbax checkpoint holds arrays, not an architecture"])
    folder = Path(os.fspath(path))
    if folder.is_dir() and not folder.is_symlink() and (folder / "config.json").exists():
        with _open_store(folder) as mf:
            if getattr(mf, "preset", None) is not None:
                from wtool.graph.hub import check_preset

                return CheckResult(str(path), *check_preset(folder, mf.config, unsafe), keras_version=mf.keras_version,
                                   loader="keras-hub")
    p = check_input_file(path)
    with _open_store(p) as mf:
        if mf.config is None:
            reason = ("a weights-only file: a graph needs a .keras or .h5 model's architecture "
                      "(train and infer take it with --arch MODEL)")
            return CheckResult(str(path), 4, "no-graph", [reason], keras_version=mf.keras_version)
        t = _translation(mf, p)
        problems = t.problems if unsafe else [*t.problems, *_config_problems(mf.config, t.problems)]
    code, status = _verdict(problems, unsafe)
    reasons = group_reasons(_with_installed(problems))
    hint = None
    if status == "needs-unsafe":
        hint = _unsafe_hint(t.problems)
    elif status == "incompatible" and unsafe and missing_classes(t.problems):
        reasons = [r + (" (not installed)" if "custom" in r else "") for r in reasons]
        hint = _missing_hint(t.problems)
    return CheckResult(str(path), code, status, reasons, t.changes, mf.keras_version,
                       "keras" if _is_native(mf) and not t.changes else "translated", hint)


def _config_problems(config: Any, known: list[Problem]) -> list[Problem]:
    """What the config check (wtool.safety.config_check) refuses beyond the translation's own problems.

    Loading stops at the first refusal; a report lists them all. A layer the translation already
    reported (a Lambda, a custom class) is not reported twice.
    """
    from wtool.safety.config_check import code_findings

    reported = {p.layer for p in known}
    out: list[Problem] = []
    for finding in code_findings(config):
        if finding.layer in reported and finding.layer:
            continue
        problem = Problem("code", finding.layer, finding.why)
        if problem not in out:
            out.append(problem)
    return out


def needs_code(mf: ModelFile) -> list[str]:
    """What in the file's config graph commands refuse as code (Lambda, function reference, unknown class).

    For inspect's header: reading weights stays allowed. Empty for a weights-only file or one whose
    config cannot be translated (--check says why). No TensorFlow.
    """
    if mf.config is None:
        return []
    if getattr(mf, "preset", None) is not None:  # keras-hub builds it (wtool.graph.hub): its classes are not code
        from wtool.graph.hub import preset_code_findings

        return group_reasons([Problem("code", f.layer, f.why) for f in preset_code_findings(mf.path, mf.config)])
    try:
        t = translate(mf.config, mf.keras_version, getattr(mf, "backend", None))
    except (TranslationError, KeyError, TypeError, ValueError, AttributeError):
        return []
    code = [p for p in t.problems if p.kind == "code" or p.layer in t.lambdas]
    return group_reasons(_with_installed([*code, *_config_problems(mf.config, t.problems)]))


def _with_installed(problems: list[Problem]) -> list[Problem]:
    """A class that --custom-objects registered is reported as such, not as missing code."""
    from dataclasses import replace

    from wtool.graph import custom

    return [replace(p, reason=f"custom class `{p.custom_class}`, registered by --custom-objects")
            if p.custom_class and custom.is_installed(p.custom_class) else p for p in problems]


def _missing_hint(problems: list[Problem]) -> str:
    from wtool.graph import custom

    return custom.missing_hint(missing_classes(problems))


def group_reasons(problems: list[Problem]) -> list[str]:
    """One line per distinct reason, naming the layers it applies to (13 Lambdas: one line)."""
    layers: dict[str, list[str]] = {}
    for problem in problems:
        layers.setdefault(problem.reason, []).append(problem.layer)
    out = []
    for reason, names in layers.items():
        names = [n for n in names if n]
        if not names:
            out.append(reason)
        elif len(names) == 1:
            out.append(f"layer `{names[0]}`: {reason}")
        else:
            shown = ", ".join(f"`{n}`" for n in names[:3])
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            out.append(f"layers {shown}{more}: {reason}")
    return out


def _raise_for(problems: list[Problem], unsafe: bool, path: Path) -> None:
    code, _status = _verdict(problems, unsafe)
    if code == 0:
        return
    listed = group_reasons([p for p in problems if p.kind == "incompatible"] or list(problems))
    text = "; ".join(listed[:MAX_LISTED])
    if len(listed) > MAX_LISTED:
        text += f"; and {len(listed) - MAX_LISTED} more"
    if code == 5:
        raise UnsafeError(f"{path}: refused: the graph needs code from the file: {text}", _unsafe_hint(problems))
    missing = missing_classes(problems) if unsafe else []
    if missing and not any(p.kind == "incompatible" for p in problems):
        shown = ", ".join(f"`{c}`" for c in missing[:MAX_LISTED])
        raise IncompatibleError(f"{path}: the graph needs custom classes that are not installed: {shown}",
                                _missing_hint(problems))
    raise IncompatibleError(f"{path}: the graph cannot be rebuilt: {text}",
                            f"see `wtool inspect {path} --check`")


def saved_inputs(path: str | os.PathLike[str]) -> list[tuple[str, tuple[int | None, ...], str]] | None:
    """(name, batch shape, dtype) of each model input as the (translated) config declares it. No TensorFlow.

    None where the config does not say plainly (no config, nested input structures, an input that
    is not an InputLayer) or where loading may refuse the graph (that answer comes first): the
    model itself is the judge then.
    """
    from wtool.safety.config_check import check_config, code_findings

    try:
        p = check_input_file(path)
        with _open_store(p) as mf:
            if mf.config is None:
                return None
            t = _translation(mf, p)
            if t.problems or code_findings(mf.config):
                return None
            config = t.config
            check_config(config, str(p))  # over a limit (exit 3) or needing code: loading says so, first
    except WtoolError:
        return None
    cfg = config.get("config") if isinstance(config, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list) or not cfg["layers"]:
        return None
    layers = cfg["layers"]
    by_name = {(layer.get("config") or {}).get("name"): layer for layer in layers if isinstance(layer, dict)}
    if config.get("class_name") == "Sequential":
        names = [(layers[0].get("config") or {}).get("name")]
    else:
        refs = cfg.get("input_layers")
        if isinstance(refs, list) and refs and isinstance(refs[0], str):
            refs = [refs]
        if not isinstance(refs, list) or not all(isinstance(r, list) and r and isinstance(r[0], str) for r in refs):
            return None
        names = [r[0] for r in refs]
    out = []
    for name in names:
        layer = by_name.get(name)
        lcfg = layer.get("config") if isinstance(layer, dict) else None
        if not isinstance(layer, dict) or layer.get("class_name") != "InputLayer" or not isinstance(lcfg, dict) \
                or not isinstance(lcfg.get("batch_shape"), list):
            return None
        shape, dtype = lcfg["batch_shape"], lcfg.get("dtype")
        out.append((str(name), tuple(shape), dtype if isinstance(dtype, str) else "float32"))
    return out


# ---------------------------------------------------------------------------------------------
# loading


def load_model(path: str | os.PathLike[str], *, unsafe: bool = False, arch: str | os.PathLike[str] | None = None,
               compile: bool = False) -> keras.Model:
    """Load a model for graph work. `arch` gives the architecture for a weights-only file.

    Raises InputError (3) for unreadable files, UnsafeError (5) when the graph needs code and
    `unsafe` is off, IncompatibleError (4) when the graph or the weights do not fit.
    """
    folder = Path(os.fspath(path))
    if folder.is_dir() and not folder.is_symlink() and (folder / "config.json").exists():
        with _open_store(folder) as mf:  # a folder that is not even readable (links, no weights) says so first
            preset, config = getattr(mf, "preset", None), mf.config
        if preset is not None:  # a keras-hub preset: keras-hub builds it (the wtool[hub] extra)
            from wtool.graph.hub import load_preset_model

            return load_preset_model(folder, config, unsafe)
        raise IncompatibleError(f"{folder}: an unzipped .keras folder: graph "
                                "commands take a .keras file", f"wtool convert {folder} model.keras makes one")
    p = check_input_file(path)
    with _open_store(p) as mf:
        if mf.config is not None:
            t = _translation(mf, p)
            _raise_for(t.problems, unsafe, p)
            native = _is_native(mf) and not t.changes
            _note_derived_inputs(t, p)
            check_config_as_data(mf.config if native else t.config, p, unsafe, raw=None if native else mf.config)
            keras = import_keras()
            if native:
                return _keras_load(keras, p, unsafe, compile)
            model = build_model(t, unsafe=unsafe, source=p)
            assign_weights(model, mf, source=p, translation=t)
            if compile:
                _compile_from(model, mf.training_config)
            return model
    if arch is None:
        raise IncompatibleError(f"{path}: a weights-only file has no architecture", WEIGHTS_ONLY_HINT)
    with _open_store(check_input_file(arch)) as arch_file:
        arch_config = arch_file.config
    model = load_model(arch, unsafe=unsafe, compile=compile)
    with _open_store(p, arch_config=arch_config) as mf:
        assign_weights(model, mf, source=p, translation=None)
    return model


def _note_derived_inputs(t: Translation, path: Path) -> None:
    """An input shape wtool worked out (the file records none) is said on stderr, once."""
    import click

    for change in t.changes:
        if "taken from the stored kernel" in change:
            click.echo(f"note: {path}: {change}", err=True)
            return


def check_config_as_data(config: Any, path: Path, unsafe: bool, raw: Any = None) -> None:
    """wtool.safety.config_check on the config Keras will see: refusals (5) and size budgets (3) before building.

    `raw` (the file's own config, when it was translated) gets the code refusals too, so a module
    or class that translation would quietly replace is still refused. With --unsafe, each thing
    it lets through is named on stderr.
    """
    import click

    from wtool.safety.config_check import check_code, check_config

    if raw is not None:
        check_code(raw, str(path), unsafe=unsafe)
    report = check_config(config, str(path), unsafe=unsafe)
    for line in report.allowed_lines():
        click.echo(f"warning: {path}: --unsafe allows {line}", err=True)


def _keras_load(keras: Any, path: Path, unsafe: bool, compile: bool) -> Any:
    from wtool.safety.buildguard import cheap_build

    try:
        with cheap_build(str(path)):  # weights come from the file: no initialisers run, --max-params counted
            return keras.saving.load_model(path, safe_mode=not unsafe, compile=compile)
    except WtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; each becomes one line
        raise _build_error(exc, path) from None


def _build_error(exc: BaseException, path: Path) -> WtoolError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lower = text.lower()
    if "safe_mode" in text or "unsafe" in lower:
        return UnsafeError(f"{path}: refused: the model needs code to load ({text[:200]})",
                           "pass --unsafe only if you trust this file")
    if "could not locate" in lower or "unknown layer" in lower:
        return IncompatibleError(f"{path}: the graph needs code that is not installed ({text[:200]})")
    return IncompatibleError(f"{path}: Keras cannot rebuild the graph: {type(exc).__name__}: {text[:300]}",
                             f"see `wtool inspect {path} --check`")


def _compile_from(model: Any, training_config: dict[str, Any] | None) -> bool:
    """Compile with the file's training settings when Keras 3 can express them exactly.

    Best effort, like Keras's own legacy loader: the model stays uncompiled otherwise.
    """
    import warnings

    args = translate_training_config(training_config)
    if args is None:
        return False
    keras = import_keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = keras.optimizers.deserialize(args["optimizer"])
            model.compile(optimizer=optimizer, loss=args["loss"], metrics=args["metrics"],
                          loss_weights=args["loss_weights"])
    except Exception:  # noqa: BLE001 - any failure means "not compiled", as documented
        return False
    return True


def config_to_model(config: dict[str, Any], *, unsafe: bool = False, source: str = "config",
                    keras_version: str | None = None) -> Any:
    """A model from a (possibly old) model config, e.g. Keras 2's `model.to_json()`: translated,
    checked and built like a file's graph. No weights are loaded (they start initialised)."""
    version = keras_version or (config.get("keras_version") if isinstance(config, dict) else None)
    try:
        t = translate(config, version, config.get("backend") if isinstance(config, dict) else None)
    except TranslationError as exc:
        raise InputError(f"{source}: {exc.message}") from None
    _raise_for(t.problems, unsafe, Path(source))
    check_config_as_data(t.config, Path(source), unsafe, raw=config)
    return build_model(t, unsafe=unsafe, source=source, initialise=True)


def build_model(translation: Translation, *, unsafe: bool = False, source: str | os.PathLike[str] = "model",
                initialise: bool = False) -> Any:
    """Deserialize a translated config into a built Keras 3 model.

    Without `initialise` the variables start as zeros (the file's weights are assigned next).
    """
    keras = import_keras()
    path = Path(source)
    from wtool.safety.buildguard import cheap_build

    try:
        with cheap_build(str(path), zero_init=not initialise):  # --max-params counted either way
            model = keras.saving.deserialize_keras_object(translation.config, safe_mode=not unsafe)
    except WtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; each becomes one line
        raise _build_error(exc, path) from None
    if not getattr(model, "built", False):
        raise IncompatibleError(f"{path}: the rebuilt model has no input shape, so its weights cannot be created")
    return model


# ---------------------------------------------------------------------------------------------
# weights


def _layer_index(model: Any) -> dict[str, Any]:
    """Canonical layer path -> layer, for every weight-owning layer (nested models walked)."""
    index: dict[str, Any] = {}

    def walk(container: Any, prefix: str) -> None:
        for layer in getattr(container, "layers", []):
            key = f"{prefix}{layer.name}"
            if hasattr(layer, "layers") and layer.__class__.__name__ in ("Functional", "Sequential", "Model"):
                walk(layer, key + "/")
            else:
                index[key] = layer

    walk(model, "")
    return index


def _owner(path: str, keys: set[str]) -> str | None:
    parts = path.split("/")
    for i in range(len(parts) - 1, 0, -1):
        key = "/".join(parts[:i])
        if key in keys:
            return key
    return None


def _fmt_shape(shape: Any) -> str:
    shape = tuple(int(s) for s in shape)
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _fits(array: Any, variable: Any) -> bool:
    import numpy as np

    if tuple(array.shape) != tuple(variable.shape):
        return False
    src, dst = np.dtype(array.dtype), np.dtype(variable.dtype)
    return src == dst or np.can_cast(src, dst, casting="safe")


@dataclass
class _WeightPlan:
    """What assign_weights found: arrays by saved path, converted layers, and every mismatch."""

    direct: list[tuple[Any, Any, str]] = field(default_factory=list)  # (variable, saved weight, path)
    converted: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)  # owner -> (variable, array)
    failed: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def assign_weights(model: Any, mf: ModelFile, *, source: str | os.PathLike[str] = "file",
                   translation: Translation | None = None) -> None:
    """Assign every weight of `model` from the store `mf` by canonical path (bitwise).

    All mismatches are collected and reported once (IncompatibleError, exit 4). Layers that
    derive state from their variables (Normalization's mean/variance) are finalized after,
    as Keras's own loaders do, or they keep computing with the zeros they were built with.
    """
    from wtool.store.model_paths import weight_paths

    pairs = list(weight_paths(model))
    index = _layer_index(model)
    keys = set(index)
    owners = {path: _owner(path, keys) for path, _var in pairs}
    saved = {w.path: w for w in mf.weights}
    plan = _WeightPlan()
    _convert_legacy_layers(plan, _owners_not_matching(pairs, owners, saved), index, pairs, owners, mf, translation)
    _plan_direct(plan, pairs, owners, saved)
    plan.problems.extend(f"file weight `{w.path}` {_fmt_shape(w.shape)} has no place in the model"
                         for w in mf.weights if w.path not in plan.used)
    if plan.problems:
        raise IncompatibleError(f"{source}: the file's weights do not fit the model: {_listed(plan.problems)}",
                                "check the architecture (`wtool inspect --check`) or pass the right --arch")
    assignments = [(var, mf.read(w.path), path) for var, w, path in plan.direct]
    assignments += [(var, array, owner) for owner, items in plan.converted.items() for var, array in items]
    _assign_checked(assignments, source)
    _finalize_states(index.values())


def _listed(problems: list[str]) -> str:
    text = "; ".join(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        text += f"; and {len(problems) - MAX_LISTED} more"
    return text


def _owners_not_matching(pairs: list[tuple[str, Any]], owners: dict[str, str | None],
                         saved: dict[str, Any]) -> list[str]:
    """Layers with a variable whose saved array is missing or shaped differently (by name)."""
    direct_ok: dict[str, bool] = {}
    for path, var in pairs:
        owner = owners[path]
        if owner is None:
            continue
        w = saved.get(path)
        direct_ok[owner] = direct_ok.get(owner, True) and w is not None and tuple(w.shape) == tuple(var.shape)
    return [owner for owner, ok in direct_ok.items() if not ok]


def _convert_legacy_layers(plan: _WeightPlan, owners_to_convert: list[str], index: dict[str, Any],
                           pairs: list[tuple[str, Any]], owners: dict[str, str | None], mf: ModelFile,
                           translation: Translation | None) -> None:
    """Layers whose arrays do not match one-to-one by name go through wtool.graph.legacy_weights."""
    from wtool.graph import legacy_weights

    by_layer_saved: dict[str, list[Any]] = {}
    for saved_weight in mf.weights:
        by_layer_saved.setdefault(saved_weight.layer, []).append(saved_weight)
    conversions = translation.weight_conversions if translation is not None else {}
    keras1_file = not mf.keras_version or str(mf.keras_version).startswith("1")
    for owner in owners_to_convert:
        layer = index[owner]
        saved_here = by_layer_saved.get(owner) or by_layer_saved.get(layer.name) or []
        if not saved_here:
            continue  # reported per weight by _plan_direct
        expected_vars = [v for p, v in pairs if owners[p] == owner]
        info = dict(conversions.get(layer.name, {}))
        if keras1_file:
            info.setdefault("keras1", True)
        plan.used.update(w.path for w in saved_here)
        try:
            arrays = [mf.read(w.path) for w in saved_here]
            new = legacy_weights.convert(layer.__class__.__name__, arrays, [tuple(v.shape) for v in expected_vars],
                                         info, layer.get_config())
        except legacy_weights.WeightConversionError as exc:
            plan.problems.append(f"layer `{owner}`: {exc} (file: {', '.join(w.path for w in saved_here)})")
            plan.failed.add(owner)
            continue
        plan.converted[owner] = list(zip(expected_vars, new, strict=True))


def _plan_direct(plan: _WeightPlan, pairs: list[tuple[str, Any]], owners: dict[str, str | None],
                 saved: dict[str, Any]) -> None:
    """Every other variable takes the saved array of the same canonical path and shape."""
    for path, var in pairs:
        owner = owners[path]
        if owner in plan.converted or owner in plan.failed:
            continue
        w = saved.get(path)
        if w is None:
            plan.problems.append(f"model weight `{path}` {_fmt_shape(var.shape)} has no array in the file")
            continue
        plan.used.add(path)
        if tuple(w.shape) != tuple(var.shape):
            plan.problems.append(f"`{path}`: model expects {_fmt_shape(var.shape)} {var.dtype}, "
                                 f"the file has {_fmt_shape(w.shape)} {w.dtype}")
            continue
        plan.direct.append((var, w, path))


def _assign_checked(assignments: list[tuple[Any, Any, str]], source: str | os.PathLike[str]) -> None:
    """Check every array's shape and dtype first, so a mismatch leaves no variable half-assigned."""
    import numpy as np

    bad = [f"`{path}`: model expects {_fmt_shape(var.shape)} {var.dtype}, "
           f"the file has {_fmt_shape(np.shape(array))} {np.asarray(array).dtype}"
           for var, array, path in assignments if not _fits(np.asarray(array), var)]
    if bad:
        raise IncompatibleError(f"{source}: the file's weights do not fit the model: " + "; ".join(bad[:MAX_LISTED]))
    for var, array, _path in assignments:
        var.assign(np.asarray(array).astype(var.dtype, copy=False))


def _finalize_states(layers: Any) -> None:
    """Recompute state derived from variables (Keras's legacy .h5 loader does the same)."""
    for layer in layers:
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize) and getattr(layer, "weights", None):
            finalize()


# ---------------------------------------------------------------------------------------------
# saving


def save_model(model: keras.Model, out: str | os.PathLike[str], *, include_optimizer: bool = True,
               class_names: list[str] | None = None) -> None:
    """Write a model atomically; the format follows OUT's extension. `class_names` go with it
    (wtool.store.class_names), so infer can print them."""
    out = Path(out)
    with atomic_output(out) as tmp:
        if out.name.endswith(".weights.h5"):
            model.save_weights(tmp)
        elif out.suffix in (".h5", ".hdf5"):
            model.save(tmp, include_optimizer=include_optimizer)
        else:
            model.save(tmp)
        if class_names:
            from wtool.store.class_names import write as write_class_names

            write_class_names(tmp, class_names)
