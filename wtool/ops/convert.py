"""`wtool convert IN OUT`: one model or weights file into another format, chosen by OUT's name.

What moves, by target:

| OUT | how | without TensorFlow |
|---|---|---|
| same format as IN | byte copy, read back | yes |
| `.keras` -> `.weights.h5` | the archive's weights file, extracted | yes |
| any -> `.safetensors` / `.npz` | every weight, keyed by path, dtypes kept | yes |
| `.keras` -> `.h5`, plain models | the legacy layout written with h5py, bytes copied (`wtool.store.legacy_h5`) | yes |
| Keras 3's `.h5` -> `.keras`, plain models | the same mapping backwards (`wtool.store.keras_from_legacy`) | yes |
| the rest | Keras loads IN and saves OUT (needs the graph) | no |

"The rest" is what `legacy_h5` cannot map with certainty (nested models, wrappers, attention,
custom or quantized layers, bfloat16): the report's notes say why Keras was used.

The report lists what the target keeps and what it drops (architecture, training
config, optimizer state, trainable flags). A weights-only input (`.weights.h5`,
`.safetensors`, `.npz`) has no architecture to write a `.keras` or `.h5` from: that is
`wtool transfer SRC ARCH -o OUT` (or `set-weights ARCH --npz`), said in the hint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from wtool.errors import IncompatibleError, UsageError
from wtool.fileio import check_model_input

TARGETS = {"keras": ".keras", "h5": ".h5", "weights.h5": ".weights.h5", "safetensors": ".safetensors",
           "npz": ".npz"}


def target_format(path: str | os.PathLike[str]) -> str:
    name = os.fspath(path).lower()
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".npz"):
        return "npz"
    from wtool.store.write import format_of_name

    try:
        return format_of_name(path)
    except UsageError:
        raise UsageError(f"{os.fspath(path)}: cannot tell the output format from the name",
                         "name the output .keras, .h5, .weights.h5, .safetensors or .npz") from None


@dataclass
class ConvertReport:
    input: str
    output: str
    source_format: str
    target_format: str
    method: str  # copy | extract | export | hdf5 | keras
    weights: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    verified: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _held(mf: Any) -> dict[str, bool]:
    """What of IN a target could keep or drop."""
    return {"architecture": mf.config is not None,
            "training config": bool(mf.has_training_config),
            "optimizer state": bool(mf.has_optimizer),
            "trainable flags": mf.non_trainable_params > 0 and mf.config is not None}


def convert(inp: str, out: str, *, unsafe: bool = False, max_shard_bytes: int | None = None) -> ConvertReport:
    """Write IN as OUT's format; returns what was kept and dropped. Raises before writing on any problem."""
    fmt = target_format(out)
    src = check_model_input(inp)
    try:
        same = os.path.exists(out) and os.path.samefile(out, src)
    except OSError:
        same = False
    if same:
        raise UsageError(f"{out}: is the input file; inputs are never changed", "write to another file")
    if src.name.lower().endswith(".npz"):
        if fmt != "npz":
            raise IncompatibleError(f"{inp}: an .npz holds arrays only, no architecture to write .{fmt} from",
                                    f"wtool set-weights ARCH.keras --npz {inp} -o OUT puts them into a model")
    from wtool.store import open_model

    with open_model(src) as mf:
        held = _held(mf)
        report = ConvertReport(str(inp), str(out), mf.format, fmt, "export", weights=len(mf.weights))
        if fmt in ("safetensors", "npz"):
            from wtool.ops.inspect import export_npz, npz_widened_note

            report.bytes = export_npz(mf, [w.path for w in mf.weights], out)
            widened = npz_widened_note(mf, [w.path for w in mf.weights]) if fmt == "npz" else None
            if widened:
                report.notes.append(widened)
            report.kept = ["weights"]
            report.dropped = [k for k, v in held.items() if v]
            if mf.format == "safetensors" and fmt == "safetensors":
                report.method = "copy"
            report.verified = _same_values(mf, out)
            return report
        done = _hdf5_level(mf, out, fmt, report, held) if max_shard_bytes is None else None
        if done is not None:
            return done
        if mf.format == "safetensors":
            raise IncompatibleError(f"{inp}: a .safetensors file holds tensors only, no architecture to write "
                                    f".{fmt} from",
                                    f"wtool transfer {inp} ARCH.keras -o {out} puts them into a model "
                                    "(--layout torch for PyTorch checkpoints)")
    return _convert_h5(inp, out, fmt, report, held, unsafe, max_shard_bytes)


def _convert_h5(inp: str, out: str, fmt: str, report: ConvertReport, held: dict[str, bool],
                unsafe: bool, max_shard_bytes: int | None = None) -> ConvertReport:
    from wtool.ops.rebuild import rebuild_with_keras
    from wtool.store import write as store_write

    src_fmt = report.source_format
    result = store_write.write_weights(inp, src_fmt, out, [], out_format=fmt, rebuild=rebuild_with_keras(unsafe),
                                       max_shard_bytes=max_shard_bytes)
    report.method = {"splice": "copy", "rewrite": "copy", "keras": "keras"}.get(result.method, result.method)
    if src_fmt == "keras" and fmt == "weights.h5":
        report.method = "extract"
    report.notes += result.notes
    optimizer_kept = result.optimizer == "kept"
    can_hold = {"architecture": store_write.has_config(fmt), "training config": store_write.has_config(fmt),
                "optimizer state": optimizer_kept, "trainable flags": store_write.has_config(fmt)}
    report.kept = ["weights"] + [k for k, v in held.items() if v and can_hold[k]]
    report.dropped = [k for k, v in held.items() if v and not can_hold[k]]
    from wtool.store import open_model

    with open_model(inp) as a, open_model(out, arch_config=a.config) as b:
        report.verified = _same_values(a, b)
        report.bytes = b.file_size  # a sharded OUT: the map and its shards
    if not report.verified:
        from wtool.errors import InternalError

        raise InternalError(f"{out}: the converted weights differ from {inp}")
    return report


def _hdf5_level(mf: Any, out: str, fmt: str, report: ConvertReport, held: dict[str, bool]) -> ConvertReport | None:
    """.keras <-> Keras 3's .h5 without TensorFlow where the mapping is certain; None (and a note why) if not."""
    from wtool.store.legacy_h5 import NeedsGraph

    try:
        if mf.format == "keras" and fmt == "h5":
            from wtool.store.legacy_h5 import plan_legacy_h5

            return _write_legacy(mf, out, plan_legacy_h5(mf), report, held)
        if mf.format == "h5" and fmt == "keras":
            from wtool.store.keras_from_legacy import plan_keras_archive

            return _write_keras(mf, out, plan_keras_archive(mf), report, held)
    except NeedsGraph as exc:
        report.notes.append(f"through Keras (TensorFlow): {exc}")
    return None


def _write_legacy(mf: Any, out: str, plan: Any, report: ConvertReport, held: dict[str, bool]) -> ConvertReport:
    """.keras -> legacy .h5 at the HDF5 level (wtool.store.legacy_h5): byte copies, checked, no TensorFlow."""
    from wtool.fileio import atomic_output
    from wtool.store import open_model
    from wtool.store.legacy_h5 import write_legacy_h5

    with atomic_output(out) as tmp:
        write_legacy_h5(mf.path, plan, tmp)
        with open_model(tmp) as b:
            by_path = {w.path: w for w in b.weights}
            if [w.path for w in mf.weights] != [w.path for w in b.weights] or any(
                    (by_path[w.path].shape, by_path[w.path].dtype) != (w.shape, w.dtype) for w in mf.weights):
                from wtool.errors import InternalError

                raise InternalError(f"{out}: the written file does not name the weights as {mf.path} does")
    report.method = "hdf5"
    report.notes += plan.notes
    optimizer_kept = plan.optimizer is not None
    can_hold = {"architecture": True, "training config": "training_config" in plan.attrs,
                "optimizer state": optimizer_kept, "trainable flags": True}
    report.kept = ["weights"] + [k for k, v in held.items() if v and can_hold[k]]
    report.dropped = [k for k, v in held.items() if v and not can_hold[k]]
    report.bytes = os.path.getsize(out)
    report.verified = True
    return report


def _write_keras(mf: Any, out: str, plan: Any, report: ConvertReport, held: dict[str, bool]) -> ConvertReport:
    """Keras 3's legacy .h5 -> .keras at the HDF5 level (wtool.store.keras_from_legacy), every value compared."""
    from wtool.errors import InternalError
    from wtool.fileio import atomic_output
    from wtool.store import open_model
    from wtool.store.keras_from_legacy import write_keras_archive

    with atomic_output(out) as tmp:
        write_keras_archive(mf.path, plan, tmp)
        with open_model(tmp) as b:
            if [w.path for w in mf.weights] != [w.path for w in b.weights] or not _same_values(mf, b):
                raise InternalError(f"{out}: the written archive does not hold the weights of {mf.path}")
    report.method = "hdf5"
    report.notes += plan.notes
    can_hold = {"architecture": True, "training config": "compile_config" in plan.config,
                "optimizer state": any(d.startswith("optimizer/") for d, _ in plan.datasets), "trainable flags": True}
    report.kept = ["weights"] + [k for k, v in held.items() if v and can_hold[k]]
    report.dropped = [k for k, v in held.items() if v and not can_hold[k]]
    report.bytes = os.path.getsize(out)
    report.verified = True
    return report


def _same_values(a: Any, out: Any) -> bool:
    """Every weight of `a` is in `out` (a path or an opened file) with equal bytes."""
    import numpy as np

    from wtool.store import open_model

    b = open_model(out) if isinstance(out, str | os.PathLike) and not str(out).endswith(".npz") else out
    if str(out).endswith(".npz"):
        from wtool.store.arrays import load_npz

        arrays = load_npz(str(out))
        return all(w.path in arrays and np.array_equal(arrays[w.path], a.read(w.path), equal_nan=True)
                   for w in a.weights)
    try:
        by_path = {w.path for w in b.weights}
        return all(w.path in by_path and _equal(a.read(w.path), b.read(w.path)) for w in a.weights)
    finally:
        if b is not out:
            b.close()


def _equal(x: Any, y: Any) -> bool:
    import numpy as np

    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    return bool(x.tobytes() == y.tobytes()) if x.dtype.kind not in "fc" else bool(
        np.array_equal(x, y, equal_nan=True))
