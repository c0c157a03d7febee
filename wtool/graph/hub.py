"""Graph commands on a keras-hub preset directory: keras-hub's own `Backbone.from_preset` on the local folder.

keras-hub is an optional extra (`pip install 'wtool[hub]'`): without it the command stops with exit 4
naming the extra. Its classes (module `keras_hub.*`, registered `keras_hub>Name`) are code from an
installed package, like Keras's own, so they are not refused as code in the preset's config; every
other object in it is checked as in any model file (wtool.safety.config_check). Only a local folder is
ever given to keras-hub (a resolved path that exists), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from wtool.errors import IncompatibleError, WtoolError

HUB_EXTRA_HINT = "pip install 'wtool[hub]' (keras-hub, from_preset on the local folder)"
HUB_PACKAGE = "keras_hub"


def hub_installed() -> bool:
    return importlib.util.find_spec(HUB_PACKAGE) is not None


def check_preset(folder: Path, config: dict[str, Any] | None, unsafe: bool) -> tuple[int, str, list[str]]:
    """`inspect --check` on a preset, without TensorFlow or keras-hub: (exit code, status, reasons)."""
    from wtool.safety.config_check import code_findings

    found = [f"{f.where or 'model'}: {f.why}" for f in code_findings(config, allow_hub=True)]
    if found and not unsafe:
        return 5, "needs-unsafe", found
    if not hub_installed():
        return 4, "incompatible", [f"graph commands on a keras-hub preset need keras-hub: {HUB_EXTRA_HINT}"]
    return 0, "ok", []


def load_preset_backbone(folder: Path, config: dict[str, Any] | None, unsafe: bool) -> Any:
    """The backbone as keras-hub builds it (weights included, sharded or not); task heads are not built."""
    from wtool.safety.config_check import check_config

    check_config(config, str(folder), unsafe=unsafe, what="config.json", allow_hub=True)  # exit 5 even without it
    if not hub_installed():
        raise IncompatibleError(f"{folder}: graph commands on a keras-hub preset need keras-hub, which is not "
                                "installed", HUB_EXTRA_HINT)
    import keras_hub  # noqa: F401 - registers keras_hub>... classes

    local = folder.resolve()
    if not local.is_dir():  # keras-hub would take anything else for a Kaggle or Hugging Face handle
        raise IncompatibleError(f"{folder}: not a local preset folder")
    try:
        return keras_hub.models.Backbone.from_preset(str(local))
    except WtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - keras-hub raises many types; each becomes one line
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise IncompatibleError(f"{folder}: keras-hub cannot build the preset's backbone: {type(exc).__name__}: "
                                f"{text}", f"see `wtool inspect {folder}`") from None
