"""`--custom-objects FILE.py|MODULE`: the user's own code, imported so its registered classes load.

Importing a file runs it, so this needs `--unsafe`, and says so once on stderr. What counts
as "installed" afterwards is Keras's own registry (`@keras.saving.register_keras_serializable`),
asked directly; until keras is imported no user code has run and nothing is installed, so the
TensorFlow-free `inspect --check` needs no import to answer.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wtool.errors import InputError, UnsafeError

# What --custom-objects brought in during this process: (the user's spec, classes it registered).
_imported: list[tuple[str, list[str]]] = []

OPTION_HINT = "--unsafe --custom-objects FILE.py|MODULE"


def install(specs: Sequence[str], *, unsafe: bool, load_keras: Callable[[], Any]) -> list[str]:
    """Import each spec (a .py file or a module name); return the classes they registered.

    `load_keras` is `wtool.graph.model.import_keras` (passed in: model.py asks this module what is installed).
    """
    if not specs:
        return []
    if not unsafe:
        raise UnsafeError(f"--custom-objects {specs[0]}: importing it runs its Python code; refused without --unsafe",
                          "pass --unsafe too, only for code you trust")
    import click

    keras = load_keras()  # the user's `import keras` then loads quietly
    click.echo(f"warning: --unsafe: running the Python code of {', '.join(specs)} (--custom-objects)", err=True)
    registered: list[str] = []
    for spec in specs:
        before = set(keras.saving.get_custom_objects())
        _import_one(spec)
        added = sorted(set(keras.saving.get_custom_objects()) - before)
        _imported.append((spec, added))
        registered += added
    return registered


def _import_one(spec: str) -> None:
    try:
        if spec.endswith(".py") or "/" in spec or Path(spec).is_file():
            path = Path(spec)
            if not path.is_file():
                raise InputError(f"--custom-objects {spec}: no such file")
            # named as the user's own `import layers` would name it, so a model saved afterwards
            # records the same module as one saved by their script
            name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules \
                else f"wtool_custom_{path.stem}_{len(_imported)}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise InputError(f"--custom-objects {spec}: not a Python file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except InputError:
        raise
    except ModuleNotFoundError as exc:
        raise InputError(f"--custom-objects {spec}: no module named '{exc.name}'",
                         "give a .py file's path, or a module importable from PYTHONPATH") from None
    except Exception as exc:  # noqa: BLE001 - the user's code can raise anything; one line says what
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"--custom-objects {spec}: importing it failed: {type(exc).__name__}: {first[:200]}") from None


def is_installed(class_name: str) -> bool:
    """Is `class_name` (e.g. `demo>Scale`, or a bare legacy `Scale`) in Keras's registry now?"""
    keras = sys.modules.get("keras")
    if keras is None or not _imported:
        return False
    names = keras.saving.get_custom_objects()
    if class_name in names:
        return True
    return any(key.rsplit(">", 1)[-1] == class_name for key in names)


def missing_hint(class_names: Sequence[str]) -> str:
    """What to pass when classes are not installed, naming what was imported, so hints never go in a circle."""
    shown = ", ".join(f"`{c}`" for c in class_names[:3])
    if not _imported:
        return (f"pass --custom-objects FILE.py|MODULE with the code that registers {shown} "
                "(@keras.saving.register_keras_serializable)")
    done = "; ".join(f"{spec} registered {', '.join(added) or 'nothing'}" for spec, added in _imported)
    return f"{done}: register {shown} there with @keras.saving.register_keras_serializable"


def require_installed(config: object, source: str) -> None:
    """Exit 4 naming the option when a Keras 3 config needs registered classes nobody installed."""
    from wtool.errors import IncompatibleError

    needed: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            name, module = node.get("registered_name"), node.get("module")
            if isinstance(name, str) and isinstance(module, str) and not module.startswith("keras"):
                needed.append(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    missing = list(dict.fromkeys(n for n in needed if not is_installed(n)))
    if missing:
        shown = ", ".join(f"`{c}`" for c in missing[:6])
        raise IncompatibleError(f"{source}: the config needs custom classes that are not installed: {shown}",
                                missing_hint(missing))
