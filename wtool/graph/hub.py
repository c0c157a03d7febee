"""Graph commands on a keras-hub preset directory: keras-hub's own `from_preset` on the local folder.

A preset with a `task.json` naming a keras-hub task (a classifier, a causal LM, ...) is built as that task,
backbone and head, with `model.weights*` and `task.weights.h5`, by the task class's own `from_preset`, as
`keras_hub.models.ImageClassifier.from_preset(dir)` builds it; without one (a backbone's `save_to_preset`)
the backbone is built by `Backbone.from_preset`. The task's preprocessor (tokenizer, image converter) is
built with it but never run: graph commands feed arrays to the network as `task(x, training=False)` does,
as they do for every other model (train and eval too), so the arrays are what the preprocessor would give.

keras-hub is an optional extra (`pip install 'wtool[hub]'`): without it the command stops with exit 4
naming the extra. Its classes (module `keras_hub.*`, registered `keras_hub>Name`) are code from an
installed package, like Keras's own, so they are not refused as code in the preset's configs; every
other object in config.json and task.json is checked as in any model file (wtool.safety.config_check).
Only a local folder is ever given to keras-hub (a resolved path that exists), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from wtool.errors import IncompatibleError, WtoolError

HUB_EXTRA_HINT = "pip install 'wtool[hub]' (keras-hub, from_preset on the local folder)"
HUB_PACKAGE = "keras_hub"
TASK_FILE = "task.json"


def hub_installed() -> bool:
    return importlib.util.find_spec(HUB_PACKAGE) is not None


def _task_config(folder: Path) -> Any:
    """task.json as keras-hub would read it (links refused, size capped), or None without one."""
    from wtool.store.preset import read_preset_files

    return read_preset_files(folder)[2]


def preset_code_findings(folder: Path, config: dict[str, Any] | None) -> list[Any]:
    """What in config.json and task.json (the two configs keras-hub deserializes) would run code. No TF."""
    from wtool.safety.config_check import Finding, code_findings

    found = list(code_findings(config, allow_hub=True))
    task = _task_config(folder)
    found += [Finding(f.where, f.layer, f"{TASK_FILE}: {f.why}") for f in code_findings(task, allow_hub=True)]
    return found


def check_preset(folder: Path, config: dict[str, Any] | None, unsafe: bool) -> tuple[int, str, list[str]]:
    """`inspect --check` on a preset, without TensorFlow or keras-hub: (exit code, status, reasons)."""
    found = [f"{f.where or 'model'}: {f.why}" for f in preset_code_findings(folder, config)]
    if found and not unsafe:
        return 5, "needs-unsafe", found
    if not hub_installed():
        return 4, "incompatible", [f"graph commands on a keras-hub preset need keras-hub: {HUB_EXTRA_HINT}"]
    return 0, "ok", []


def load_preset_model(folder: Path, config: dict[str, Any] | None, unsafe: bool) -> Any:
    """The task (backbone + head) keras-hub builds from task.json, else the backbone; weights loaded."""
    from wtool.safety.config_check import check_config

    task_config = _task_config(folder)
    check_config(config, str(folder), unsafe=unsafe, what="config.json", allow_hub=True)  # exit 5 even without it
    if task_config is not None:
        check_config(task_config, str(folder / TASK_FILE), unsafe=unsafe, what=TASK_FILE, allow_hub=True)
    if not hub_installed():
        raise IncompatibleError(f"{folder}: graph commands on a keras-hub preset need keras-hub, which is not "
                                "installed", HUB_EXTRA_HINT)
    import keras_hub  # registers keras_hub>... classes

    local = folder.resolve()
    if not local.is_dir():  # keras-hub would take anything else for a Kaggle or Hugging Face handle
        raise IncompatibleError(f"{folder}: not a local preset folder")
    task_cls = _task_class(keras_hub, task_config, folder)
    what = f"task {task_cls.__name__}" if task_cls is not None else "backbone"
    try:
        if task_cls is None:
            return keras_hub.models.Backbone.from_preset(str(local))
        task = task_cls.from_preset(str(local))
    except WtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - keras-hub raises many types; each becomes one line
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise IncompatibleError(f"{folder}: keras-hub cannot build the preset's {what}: {type(exc).__name__}: "
                                f"{text}", f"see `wtool inspect {folder}`") from None
    _note_preprocessor(task, folder)
    return task


def _task_class(keras_hub: Any, task_config: Any, folder: Path) -> Any:
    """The keras-hub Task subclass task.json names (by its registered name), or None: build the backbone."""
    if task_config is None:
        return None
    import click
    import keras

    name = task_config.get("registered_name") if isinstance(task_config, dict) else None
    cls = keras.saving.get_registered_object(name) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, keras_hub.models.Task) \
            and cls.__module__.split(".")[0] == HUB_PACKAGE:
        return cls
    shown = name if isinstance(name, str) else "no registered class"
    click.echo(f"note: {folder}: {TASK_FILE} names {shown}, not a keras-hub task: the backbone is built",
               err=True)
    return None


def _note_preprocessor(task: Any, folder: Path) -> None:
    """Said once on stderr: a Keras user calling `task.predict` gets preprocessing; graph commands do not."""
    import click

    pre = getattr(task, "preprocessor", None)
    if pre is not None:
        click.echo(f"note: {folder}: task {type(task).__name__}: its preprocessor ({type(pre).__name__}) is not "
                   "run; inputs go to the network as given, as in task(x)", err=True)
