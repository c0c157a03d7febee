"""`wtool inspect MODEL`: layers, weights, statistics, samples, histograms, export. No TensorFlow."""

from __future__ import annotations

import json
from typing import Any

import click

from wtool.cli.commands.common import (
    InputPath,
    OutputPath,
    common_options,
    unsafe_option,
    without_blas_threads,
)
from wtool.cli.render import (
    Output,
    TextWriter,
    cell,
    fmt_bytes,
    fmt_float,
    fmt_int,
    fmt_plural,
    fmt_shape,
    one_line,
)

FORMAT_NAMES = {
    ("keras", "keras3"): ".keras (zip archive)",
    ("h5", "legacy"): "full model .h5 (legacy HDF5)",
    ("weights.h5", "keras3"): "weights only (Keras 3 layout)",
    ("weights.h5", "legacy"): "weights only (legacy layout)",
    ("weights.json", "keras3"): "sharded weights (Keras 3 layout)",
    ("safetensors", "safetensors"): "safetensors (tensors only)",
    ("tf-checkpoint", "tf-checkpoint"): "TensorFlow checkpoint (.index + .data-*)",
    ("orbax", "orbax"): "Orbax checkpoint (read by orbax-checkpoint)",
}
SPARK = " ▁▂▃▄▅▆▇█"
SPARK_ASCII = " .:-=+*#%@"  # for a stdout that cannot show block characters


@click.command(name="inspect")
@click.argument("model", type=InputPath)
@click.option("--weights", "show_weights", is_flag=True, help="One row per weight: path, shape, dtype, parameters.")
@click.option("--stats", is_flag=True,
              help="Per weight: min, max, mean, std, L2 norm, fraction of zeros, NaN and Inf counts (chunked). "
                   "NaN/Inf are counted and left out of min/max/mean/std/L2.")
@click.option("--sample", type=click.IntRange(min=1), metavar="N",
              help="Show the top-left N x N values of each selected weight.")
@click.option("--histogram", is_flag=True, help="A small histogram of each selected weight.")
@click.option("--layer", "layers", multiple=True, metavar="GLOB",
              help="Only these layers / weight paths (shell glob, repeatable): 'features/*', '*/kernel'.")
@click.option("--export", type=OutputPath, metavar="OUT.npz|OUT.safetensors",
              help="Write the selected weights to OUT.npz or OUT.safetensors, keyed by path (dtypes kept).")
@click.option("--hash", "hashes", is_flag=True,
              help="A structural fingerprint (paths, shapes, dtypes) and content hashes (sha256) per weight and "
                   "for the model, the same for one model in every format.")
@click.option("--check", is_flag=True, help="Also say whether the model graph can be rebuilt, and why not.")
@unsafe_option
@common_options
def command(model: str, show_weights: bool, stats: bool, sample: int | None, histogram: bool,
            layers: tuple[str, ...], export: str | None, hashes: bool, check: bool, unsafe: bool,
            out: Output) -> None:
    """Show what is inside a model or weights file, without TensorFlow.

    A header (format, Keras version, size, optimizer state, training config), the
    layers (nested layers indented) with their weight shapes and parameter counts,
    and the totals. The format is detected from the file's bytes.

    Examples:

    \b
      wtool inspect sample_models/cnn.keras
      wtool inspect sample_models/nested.h5 --weights --stats --layer 'features/*'
      wtool inspect sample_models/mlp.keras --sample 3 --layer hidden/kernel
      wtool inspect sample_models/lstm.weights.h5 --export lstm.npz --json
      wtool inspect sample_models/mlp.h5 --hash
    """
    without_blas_threads()  # before numpy loads
    from wtool.graph.model import needs_code
    from wtool.ops.inspect import (
        dequantized,
        export_npz,
        model_hashes,
        npz_widened_note,
        stats_of,
        summarize,
        weight_histogram,
        weight_sample,
        weight_stats,
    )
    from wtool.store import open_model

    with open_model(model) as mf:
        summary = summarize(mf, list(layers) or None)
        code = needs_code(mf)
        details: dict[str, dict[str, Any]] = {w.path: {} for w in summary.weights}
        for w in summary.weights:
            entry = details[w.path]
            if stats or histogram:
                entry["stats"] = weight_stats(mf, w.path)
            if stats:
                values = dequantized(mf, w.path)
                if values is not None:
                    entry["dequantized"] = (tuple(values.shape), stats_of(values))
            if histogram:
                entry["histogram"] = weight_histogram(mf, w.path, entry["stats"])
            if sample:
                entry["sample"] = weight_sample(mf, w.path, sample)
        hashed = model_hashes(mf, [w.path for w in summary.weights]) if hashes else None
        exported = None
        if export:
            size = export_npz(mf, [w.path for w in summary.weights], export)
            if not str(export).lower().endswith(".safetensors"):
                widened = npz_widened_note(mf, [w.path for w in summary.weights])
                if widened:
                    summary.warnings.append(widened)
            exported = {"file": export, "weights": len(summary.weights), "bytes": size}
    check_result = _check(model, unsafe) if check else None

    doc = _document(summary, details, exported, check_result)
    doc["needs_code"] = code
    if hashed is not None:
        doc["hash"] = hashed
    for warning in summary.warnings:
        out.warn(warning)
    show_weights = show_weights or stats
    def human(writer: TextWriter) -> None:
        render_summary(writer, summary, details, show_weights, stats, histogram, sample, check_result, code)
        if hashed is not None:
            _render_hash(writer, hashed, show_weights)

    if exported and out.quiet and not out.json_mode:
        pass  # -q with --export: the file is the result; nothing on stdout
    else:
        out.result_text(doc, human)
    if exported and not out.json_mode:
        out.info(f"exported {fmt_plural(exported['weights'], 'weight')} to {export} ({fmt_bytes(exported['bytes'])})")
    if check_result is not None and check_result.exit_code:
        raise click.exceptions.Exit(check_result.exit_code)


def _check(model: str, unsafe: bool) -> Any:
    """The graph check belongs to wtool.graph.model (it knows about config translation)."""
    from wtool.graph import model as model_module

    return model_module.check_graph(model, unsafe)


# ---- JSON -----------------------------------------------------------------------------------


def _document(summary: Any, details: dict[str, dict[str, Any]], exported: dict[str, Any] | None,
              check_result: Any) -> dict[str, Any]:
    import numpy as np

    weights = []
    for w in summary.weights:
        row: dict[str, Any] = {"path": w.path, "layer": w.layer, "name": w.name, "shape": list(w.shape),
                               "dtype": w.dtype, "params": w.params, "trainable": w.trainable}
        if summary.format in ("tf-checkpoint", "orbax"):  # its key: get_tensor(key), or its place in the tree
            row["checkpoint_key"] = w.h5_name
        entry = details[w.path]
        if "stats" in entry:
            row["stats"] = None if entry["stats"] is None else dict(entry["stats"].__dict__)
        if "dequantized" in entry:
            shape, deq = entry["dequantized"]
            row["dequantized"] = {"shape": list(shape), "dtype": "float32", "stats": dict(deq.__dict__)}
        if "histogram" in entry:
            h = entry["histogram"]
            row["histogram"] = None if h is None else {"edges": h.edges, "counts": h.counts}
        if "sample" in entry:
            row["sample"] = np.asarray(entry["sample"]).tolist()
        weights.append(row)
    doc: dict[str, Any] = {
        "file": summary.file,
        "format": summary.format,
        "layout": summary.layout,
        "keras_version": summary.keras_version,
        "backend": summary.backend,
        "file_size": summary.file_size,
        "model": {"name": summary.model_name, "class": summary.model_class},
        "has_optimizer": summary.has_optimizer,
        "optimizer_weights": summary.optimizer_weights,
        "has_training_config": summary.has_training_config,
        "total_params": summary.total_params,
        "trainable_params": summary.trainable_params,
        "non_trainable_params": summary.non_trainable_params,
        "weight_bytes": summary.weight_bytes,
        "layers": [_layer_document(layer, *summary.shown(layer)) for layer in summary.layers],
        "weights": weights,
        "inputs": summary.inputs,
        "outputs": summary.outputs,
        "warnings": summary.warnings,
        "preprocessing": getattr(summary, "preprocessing", []),
    }
    if summary.shards:
        doc["shards"] = summary.shards
    if getattr(summary, "preset", None):
        doc["keras_hub"] = summary.preset
    if summary.selected:
        doc["selected_params"] = summary.selected_params
    if exported:
        doc["export"] = exported
    if check_result is not None:
        doc["check"] = {"status": check_result.status, "exit_code": check_result.exit_code,
                        "reasons": check_result.reasons, "changes": check_result.changes,
                        "loader": check_result.loader, "hint": check_result.hint}
    return doc


def _layer_document(layer: Any, paths: list[str], params: int) -> dict[str, Any]:
    """With --layer, a layer lists and counts only its selected weights, as the text table does."""
    return {"path": layer.path, "name": layer.name, "class": layer.class_name, "depth": layer.depth,
            "params": params, "trainable": layer.trainable, "weights": paths,
            **({"missing": True} if layer.missing else {}),
            **({"quantization": layer.quantization} if layer.quantization else {}),
            **({"lora_rank": layer.lora_rank} if layer.lora_rank else {})}


# ---- human output -----------------------------------------------------------------------------


def _render_hash(writer: TextWriter, hashed: dict[str, Any], per_weight: bool) -> None:
    writer.line()
    writer.line(f"structure sha256:{hashed['structure']}  (paths, shapes, dtypes)")
    writer.line(f"content   sha256:{hashed['content']}  (and every value)")
    if per_weight:
        writer.table(["weight", "sha256"], [[p, h] for p, h in hashed["weights"].items()])


def _listed(values: list[Any], size: int | None) -> str:
    shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, str) else str(v)
                      for v in values)
    return f"[{shown}{', ...' if size is None or size > len(values) else ''}]"


def _state_text(state: dict[str, Any]) -> str:
    """One preprocessing layer's state in a table cell."""
    cls = state["class"]
    if "vocabulary_size" in state:
        if state["source"] is None:
            return "no vocabulary in this file (Keras keeps an adapted one in a .keras file's assets)"
        size = state["vocabulary_size"]
        head = cell(_listed(state["vocabulary_head"], size))
        return f"vocabulary of {fmt_int(size)} {head}" if size is not None else f"vocabulary from {state['source']}"
    if cls == "Normalization":
        if "mean" not in state:
            return "-"
        n = state.get("features")
        return (f"mean {_listed(state['mean'], n)} variance {_listed(state.get('variance', []), n)}"
                + (f" ({fmt_plural(n, 'feature')})" if n else ""))
    if cls == "Discretization":
        bins = state.get("bins")
        return f"{bins} bins, boundaries {_listed(state['bin_boundaries_head'], (bins or 1) - 1)}"
    if cls == "Hashing":
        return f"{state.get('num_bins')} bins" + (f", salt {state['salt']}" if state.get("salt") else "")
    return f"{state.get('num_tokens')} tokens ({state.get('output_mode')})"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render_summary(writer: TextWriter, summary: Any, details: dict[str, dict[str, Any]], show_weights: bool,
                   stats: bool, histogram: bool, sample: int | None, check_result: Any,
                   code: list[str] | None = None) -> None:
    """What `wtool inspect` prints (also `wtool new`, for the model it wrote)."""
    fmt = FORMAT_NAMES.get((summary.format, summary.layout), summary.format)
    preset = getattr(summary, "preset", None)
    if preset:
        declared = preset["parameter_count"]
        fmt = (f"keras-hub preset (keras-hub {preset['keras_hub_version']}"
               + (f", {declared:,} parameters declared" if declared is not None else "") + ")")
        if preset.get("task_parameters") is not None:
            fmt += (f"; task {preset.get('task_class') or '?'}: {preset['task_parameters']:,} parameters in "
                    "task.weights.h5, shown under task/")
    if getattr(summary, "shards", None):
        fmt += f"; {len(summary.shards)} shards: {', '.join(summary.shards[:3])}{', ...' if len(summary.shards) > 3 else ''}"
    saved_by = f"Keras {summary.keras_version}" if summary.keras_version else "unknown Keras version"
    if summary.backend:
        saved_by += f" ({summary.backend} backend)"
    head = [
        ("file", summary.file),
        ("format", fmt),
        ("saved by", saved_by),
        ("model", f"{summary.model_name} ({summary.model_class})" if summary.model_name else "- (no architecture in file)"),
        ("size", fmt_bytes(summary.file_size)),
        ("optimizer",
         f"state present ({fmt_plural(summary.optimizer_weights, 'array')})" if summary.has_optimizer else "none"),
        ("training config", "present" if summary.has_training_config else "none"),
    ]
    if summary.inputs is not None:
        head.append(("inputs", _io_text(summary.inputs, with_dtype=True)))
        head.append(("outputs", _io_text(summary.outputs or [], with_dtype=False)))
    if code:
        more = f" (and {len(code) - 1} more)" if len(code) > 1 else ""
        head.append(("needs code", f"{code[0]}{more}; graph commands refuse it without --unsafe"))
    for key, value in head:
        writer.line(one_line(value), head=f"{key:<16}")
    writer.line()

    shapes = {w.path: w.shape for w in summary.weights}
    nested = _nested_params(summary)
    rows = []
    for layer in summary.layers:
        own = [fmt_shape(shapes[p]) for p in layer.weights if p in shapes]
        count = summary.shown(layer)[1]  # with --layer, the parameters of the weights the row shows
        params = fmt_int(count) if layer.weights else ("missing" if layer.missing else "0")
        if not layer.weights and layer.path in nested:
            params = fmt_int(nested[layer.path])
        rows.append(["  " * layer.depth + layer.name, _class_label(layer), " ".join(own) or "-", params,
                     _yes(layer.trainable)])
    writer.table(["layer", "class", "weights", "params", "trainable"], rows, {"params"})
    writer.line()
    writer.line(f" {fmt_plural(summary.total_params, 'param')} ({fmt_bytes(summary.weight_bytes)}): "
                 f"{fmt_int(summary.trainable_params)} trainable, {fmt_int(summary.non_trainable_params)} "
                 f"non-trainable", head="total")
    if summary.selected:
        n, params = len(summary.weights), summary.selected_params
        writer.line(f" {fmt_plural(n, 'weight')}, {fmt_plural(params, 'param')}", head="selected")
    if getattr(summary, "preprocessing", None):
        writer.line()
        writer.table(["preprocessing", "class", "state"],
                     [[s["layer"], s["class"], _state_text(s)] for s in summary.preprocessing], set())
    if show_weights:
        writer.line()
        _render_weights(writer, summary, details, stats)
    if histogram:
        writer.line()
        _render_histograms(writer, summary, details)
    if sample:
        writer.line()
        _render_samples(writer, summary, details, sample)
    if check_result is not None:
        writer.line()
        reasons = check_result.reasons
        if len(reasons) > 1:  # every reason, one a line
            writer.line(f" {check_result.status} ({len(reasons)} reasons):", head="graph")
            for reason in reasons:
                writer.line(one_line(f"  - {reason}"))
        else:
            writer.line(one_line(f" {check_result.status}" + (f": {reasons[0]}" if reasons else "")), head="graph")
        if check_result.hint:
            writer.line(one_line(f"  {check_result.hint}"), head="hint")


def _class_label(layer: Any) -> str:
    """`Dense [int8]`: the quantization mode and LoRA rank Keras saved in the layer's config."""
    tags = ([layer.quantization] if layer.quantization else []) + (
        [f"lora rank {layer.lora_rank}, merged"] if layer.lora_rank else [])
    return (layer.class_name or "?") + (f" [{', '.join(tags)}]" if tags else "")


def _io_text(tensors: list[dict[str, Any]], *, with_dtype: bool) -> str:
    """`image (None, 28, 28, 1) float32, meta (None, 3) float32`; `?` for a shape the config does not tell."""
    parts = []
    for t in tensors:
        shape = "?" if t["shape"] is None else "(" + ", ".join("None" if d is None else str(d) for d in t["shape"]) + \
            ("," if len(t["shape"]) == 1 else "") + ")"
        parts.append(f"{t['name']} {shape}" + (f" {t['dtype']}" if with_dtype else "")
                     + (f" (unknown from {t['unknown']})" if t["shape"] is None and t.get("unknown") else ""))
    return ", ".join(parts) or "-"


def _nested_params(summary: Any) -> dict[str, int]:
    """Parameters below each model-like layer (`features` -> its layers' weights), in one pass."""
    paths = {layer.path for layer in summary.layers}
    parents = {p.rsplit("/", 1)[0] for p in paths if "/" in p and p.rsplit("/", 1)[0] in paths}
    totals = dict.fromkeys(parents, 0)
    for w in summary.weights:
        parts = w.layer.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in totals:
                totals[prefix] += w.params
    return totals


def _render_weights(writer: TextWriter, summary: Any, details: dict[str, dict[str, Any]], stats: bool) -> None:
    columns = ["weight", "shape", "dtype", "params", "trainable"]
    if stats:
        columns += ["min", "max", "mean", "std", "l2", "zeros", "nan", "inf"]
    checkpoint = summary.format in ("tf-checkpoint", "orbax")
    if checkpoint:
        columns.append("checkpoint key")
    from wtool.store.quantized import stored_as

    rows = []
    layers = {layer.path: layer for layer in summary.layers}
    for w in summary.weights:
        layer = layers.get(w.layer)
        packed = stored_as(layer.class_name, layer.quantization, w.name) if layer is not None else None
        row = [w.path, fmt_shape(w.shape), w.dtype + (f" ({packed})" if packed else ""), fmt_int(w.params),
               _yes(w.trainable)]
        if stats:
            row += _stat_cells(details[w.path].get("stats"))
        if checkpoint:
            row.append(w.h5_name)
        rows.append(row)
        if stats and "dequantized" in details[w.path]:
            shape, deq = details[w.path]["dequantized"]
            rows.append([f"{w.path} (dequantized)", fmt_shape(shape), "float32", "-", "-", *_stat_cells(deq)])
    writer.table(columns, rows, {"params", "min", "max", "mean", "std", "l2", "zeros", "nan", "inf"})


def _stat_cells(s: Any) -> list[str]:
    if s is None:
        return ["-"] * 8
    return [fmt_float(s.min), fmt_float(s.max), fmt_float(s.mean), fmt_float(s.std), fmt_float(s.l2_norm),
            f"{s.zero_fraction:.1%}", str(s.nan_count), str(s.inf_count)]


def _render_histograms(writer: TextWriter, summary: Any, details: dict[str, dict[str, Any]]) -> None:
    width = max((len(one_line(w.path)) for w in summary.weights), default=0)
    ramp = SPARK if writer.can_show(SPARK) else SPARK_ASCII
    for w in summary.weights:
        h = details[w.path].get("histogram")
        if h is None:
            writer.line(f"{one_line(w.path):<{width}}  (no finite values)")
            continue
        top = max(h.counts) or 1
        bars = "".join(ramp[0 if c == 0 else 1 + round((len(ramp) - 2) * c / top)] for c in h.counts)
        s = details[w.path]["stats"]
        writer.line(f"{one_line(w.path):<{width}}  {fmt_float(s.min):>10} |{bars}| {fmt_float(s.max)}")


def _render_samples(writer: TextWriter, summary: Any, details: dict[str, dict[str, Any]], n: int) -> None:
    import numpy as np

    for w in summary.weights:
        values = np.asarray(details[w.path]["sample"])
        if len(w.shape) > 2:
            view = f"{w.path} viewed as ({fmt_int(int(np.prod(w.shape[:-1])))}, {w.shape[-1]}), [0:{n}, 0:{n}]"
        elif len(w.shape) == 2:
            view = f"{w.path}[0:{n}, 0:{n}]"
        elif len(w.shape) == 1:
            view = f"{w.path}[0:{n}]"
        else:
            view = w.path
        writer.line(one_line(view))
        text = np.array2string(values, precision=4, suppress_small=False, max_line_width=10_000, threshold=10_000)
        writer.line(text)
