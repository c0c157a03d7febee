"""`transfer` as plan -> apply: match SOURCE's layers and weights to TARGET's, check every pair."""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wtool.errors import IncompatibleError, UsageError
from wtool.ops.planning import (
    Problem,
    check_output,
    closest,
    dtype_problem,
    glob_hits,
    notes_after_write,
    open_checked,
    parse_assignment,
    problems_error,
    quantization_of,
    quantized_refusal,
    shape_text,
    stored_value,
)
from wtool.ops.rebuild import rebuild_with_keras
from wtool.store import write as store_write
from wtool.store.naming import LEGACY_VAR_NAMES, normalize_var  # noqa: F401  (LEGACY_VAR_NAMES re-exported)


@dataclass
class Pair:
    """A source weight and the target weight it goes into."""

    source: str | None
    target: str | None
    source_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    status: str = "transferred"   # transferred | skipped
    reason: str | None = None     # shape | dtype | count
    detail: str | None = None
    target_layer: str = field(default="", repr=False)
    source_h5: str = field(default="", repr=False)
    target_h5: str = field(default="", repr=False)
    conversion: str | None = None  # --layout torch: how the source tensor(s) became the target's value
    convert: Any = field(default=None, repr=False)  # torch_layout.Conversion
    target_dtype: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"source": self.source, "target": self.target}
        if self.conversion is not None:
            doc["conversion"] = self.conversion
        if self.status == "transferred":
            doc["shape"] = list(self.target_shape or ())
        else:
            doc.update(reason=self.reason, source_shape=None if self.source_shape is None else list(self.source_shape),
                       target_shape=None if self.target_shape is None else list(self.target_shape),
                       detail=self.detail)
        return doc


@dataclass
class TransferPlan:
    source: str
    target: str
    output: str | None
    by: str
    source_format: str = ""
    target_format: str = ""
    transferred: list[Pair] = field(default_factory=list)
    skipped: list[Pair] = field(default_factory=list)
    missing_in_source: list[str] = field(default_factory=list)
    unused_from_source: list[str] = field(default_factory=list)
    ignored_from_source: list[str] = field(default_factory=list)
    layout: str = "keras"
    prefix: str = ""
    layer_pairs: list[tuple[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)
    skip_mismatch: bool = False
    allow_empty: bool = False
    dry_run: bool = False
    has_optimizer: bool = False
    reset_optimizer: bool = False
    unsafe: bool = False
    max_shard_bytes: int | None = None  # --max-shard-size: write OUT.weights.json shards of at most this
    result: store_write.WriteResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        """True once OUT holds the transferred weights (not for --dry-run or a refused transfer)."""
        return self.result is not None and not self.problems and not self.dry_run

    def counts(self) -> dict[str, int]:
        """`matched` pairs fit; `transferred` is how many were written (0 when nothing was);
        `skipped` were left out by --skip-mismatch, `mismatched` refused the transfer (strict)."""
        mismatches = len(self.skipped)
        return {"matched": len(self.transferred), "transferred": len(self.transferred) if self.written else 0,
                "skipped": mismatches if self.skip_mismatch else 0,
                "mismatched": 0 if self.skip_mismatch else mismatches,
                "missing_in_source": len(self.missing_in_source),
                "unused_from_source": len(self.unused_from_source)}

    def to_json(self) -> dict[str, Any]:
        optimizer = ("dropped" if self.reset_optimizer else "kept") if self.has_optimizer else "none"
        if self.result is not None:
            optimizer = self.result.optimizer
        return {
            "source": self.source, "target": self.target,
            "output": None if self.dry_run else self.output,
            "dry_run": self.dry_run, "by": self.by, "ok": not self.problems, "written": self.written,
            "matched": [p.to_json() for p in self.transferred],
            "transferred": [p.to_json() for p in self.transferred] if self.written else [],
            "skipped": [p.to_json() for p in self.skipped] if self.skip_mismatch else [],
            "mismatched": [] if self.skip_mismatch else [p.to_json() for p in self.skipped],
            "missing_in_source": self.missing_in_source,
            "unused_from_source": self.unused_from_source,
            "ignored_from_source": self.ignored_from_source,
            "layout": self.layout, "prefix": self.prefix,
            "counts": self.counts(),
            "frozen": (self.result.frozen if self.result else self.freeze),
            "problems": [asdict(p) for p in self.problems],
            "optimizer": optimizer,
            "verified": bool(self.result and self.result.verified == len(self.transferred)),
            "method": self.result.method if self.result else None,
            "notes": notes_after_write(self.notes, self.result),
        }


def _layer_order(weights: Sequence[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for w in weights:
        seen.setdefault(w.layer, None)
    return list(seen)


def _glob_regex(glob: str) -> tuple[re.Pattern[str], int]:
    """A glob as a regex whose `*` and `?` capture, and the number of captures."""
    out, n, i = [], 0, 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("(.*)")
            n += 1
        elif c == "?":
            out.append("(.)")
            n += 1
        elif c == "[":
            j = glob.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(fnmatch.translate(glob[i : j + 1])[4:-3])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z"), n


def _fill_wildcards(glob: str, values: Sequence[str]) -> str:
    it = iter(values)
    return re.sub(r"[*?]", lambda _m: next(it), glob)


def _map_layers(rules: Sequence[tuple[str, str]], src_layers: Sequence[str], dst_layers: Sequence[str],
                problems: list[Problem]) -> list[tuple[str, str]]:
    """Explicit `--map SRC_GLOB=DST_GLOB` pairs: each wildcard of SRC fills the same wildcard of DST.

    `re:SRC_REGEX=DST` takes a regular expression (matching the whole layer path) instead,
    whose groups fill `\\1`, `\\2`, ... of DST.
    """
    pairs: list[tuple[str, str]] = []
    dst_set = set(dst_layers)
    for src_glob, dst_glob in rules:
        is_regex = src_glob.startswith("re:")
        if is_regex:
            try:
                regex, n_src = re.compile(src_glob[3:] + r"\Z"), 0
            except re.error as exc:
                raise UsageError(f"--map {src_glob}: not a regular expression ({exc})") from None
            n_dst = 0
        else:
            regex, n_src = _glob_regex(src_glob)
            n_dst = dst_glob.count("*") + dst_glob.count("?")
        if n_dst and n_dst != n_src:
            raise UsageError(f"--map {src_glob}={dst_glob}: the target side has {n_dst} wildcard(s), "
                             f"the source side {n_src}", "use the same wildcards on both sides, or none on the "
                             "target side")
        matched = False
        for layer in src_layers:
            m = regex.match(layer)
            if not m:
                continue
            matched = True
            if is_regex:
                try:
                    dst = m.expand(dst_glob)
                except (re.error, IndexError) as exc:
                    raise UsageError(f"--map {src_glob}={dst_glob}: {exc}") from None
            elif n_dst:
                dst = _fill_wildcards(dst_glob, m.groups())
            else:
                dst = dst_glob
            if dst not in dst_set:
                near = closest(dst, dst_layers)
                problems.append(Problem("map", dst, f"--map {src_glob}={dst_glob}: {layer} -> {dst}, but the target "
                                        "has no layer " + dst + (f" (closest: {', '.join(near)})" if near else ""),
                                        near))
                continue
            pairs.append((layer, dst))
        if not matched:
            near = closest(src_glob, src_layers)
            problems.append(Problem("map", src_glob, f"--map {src_glob}={dst_glob}: no source layer matches "
                                    f"{src_glob}" + (f" (closest: {', '.join(near)})" if near else ""), near))
    return pairs


def plan_transfer(
    source_path: str,
    target_path: str,
    *,
    output: str | None,
    by: str = "name",
    maps: Sequence[str] = (),
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_mismatch: bool = False,
    allow_empty: bool = False,
    freeze: bool = False,
    reset_optimizer: bool = False,
    dry_run: bool = False,
    unsafe: bool = False,
    layout: str = "keras",
    prefix: str | None = None,
    map_file: str | None = None,
    max_shard_bytes: int | None = None,
) -> TransferPlan:
    """Match SOURCE's weights to TARGET's, check every pair, and return the plan (nothing written).

    The steps: check the options, pair the layers (explicit --map rules, then by name or
    order), pair the weights inside each layer pair and sort them into the report's lists
    (filtered by --layer/--exclude), then turn mismatches into problems unless skipped.
    """
    if layout not in ("keras", "torch"):
        raise UsageError(f"--layout must be keras or torch (not {layout!r})")
    maps = [*maps, *_read_map_file(map_file)] if map_file else list(maps)
    out, rules = _check_transfer_options(source_path, target_path, output, by, maps, freeze, dry_run)
    with open_checked(source_path) as src, open_checked(target_path) as dst:
        plan = TransferPlan(str(source_path), str(target_path), out, by, src.format, dst.format,
                            skip_mismatch=skip_mismatch, allow_empty=allow_empty, dry_run=dry_run,
                            has_optimizer=bool(dst.has_optimizer), reset_optimizer=reset_optimizer,
                            unsafe=unsafe, layout=layout, max_shard_bytes=max_shard_bytes)
        src_weights = _source_weights(src, layout, prefix, plan)
        if freeze and not store_write.has_config(dst.format):
            raise UsageError(f"{target_path}: a weights-only file has no config to record frozen layers in",
                             "transfer into a .keras or .h5 model, or drop --freeze")
        dst_weights = _torch_targets(dst.weights) if layout == "torch" else list(dst.weights)
        src_layers, dst_layers = _layer_order(src_weights), _layer_order(dst_weights)
        layer_pairs = _pair_layers(rules, by, src_layers, dst_layers, plan.problems)
        pairer = _pair_torch if layout == "torch" else _pair_weights
        _sort_weight_pairs(plan, layer_pairs, src_weights, dst_weights, _selector(layers, exclude), pairer)
        if layout == "torch":  # --freeze names the Keras layer that owns the weight, not its sublayer
            owner = {w.path: w.layer for w in dst.weights}
            for p in plan.transferred + plan.skipped:
                p.target_layer = owner.get(p.target or "", p.target_layer)
        _refuse_quantized(plan, quantization_of(src), quantization_of(dst))
        _collect_problems(plan, src_layers, dst_layers)
        if plan.ignored_from_source:
            plan.notes.append(f"ignored {len(plan.ignored_from_source)} PyTorch bookkeeping tensor(s) "
                              f"(num_batches_tracked): Keras has no such weight")
        if freeze:
            plan.freeze = list(dict.fromkeys(p.target_layer for p in plan.transferred))
        if plan.has_optimizer and getattr(dst, "optimizer_moments", 1) > 0 and not reset_optimizer and plan.transferred:
            plan.notes.append("optimizer state of TARGET kept: its saved moments belong to the old values "
                              "(use --reset-optimizer to drop it)")
    return plan


def _read_map_file(path: str) -> list[str]:
    """--map-file: one SRC_GLOB=DST_GLOB rule a line; blank lines and `#` comments skipped."""
    from wtool.fileio import check_model_input

    p = check_model_input(path)
    if p.stat().st_size > 1 << 20:
        raise UsageError(f"--map-file {path}: larger than 1 MB")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--map-file {path}: not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _source_weights(src: Any, layout: str, prefix: str | None, plan: TransferPlan) -> list[Any]:
    """SOURCE's weights as the pairing sees them: PyTorch modules for --layout torch, --prefix stripped."""
    if layout == "torch" and src.format != "safetensors":
        raise UsageError(f"--layout torch reads a .safetensors SOURCE (not .{src.format})",
                         "export the PyTorch state dict with safetensors.torch.save_file")
    if layout != "torch" and not prefix:
        return list(src.weights)
    from wtool.ops import torch_layout
    from wtool.store.types import WeightInfo

    sep = "." if layout == "torch" else "/"
    keys = [w.h5_name if layout == "torch" else w.path for w in src.weights]
    pfx = torch_layout.common_prefix(keys, sep) if prefix == "auto" else (prefix or "")
    plan.prefix = pfx
    if pfx and not any(k.startswith(pfx) for k in keys):
        raise UsageError(f"--prefix {pfx}: no source key starts with it")
    if layout == "torch":
        return torch_layout.source_view([(w.h5_name, tuple(w.shape), w.dtype) for w in src.weights], pfx)
    out = []
    for w in src.weights:
        path = w.path[len(pfx):] if pfx and w.path.startswith(pfx) else w.path
        layer, _, name = path.rpartition("/")
        out.append(WeightInfo(path, layer or path, name or path, tuple(w.shape), w.dtype, w.trainable, w.h5_name))
    return out


def _torch_targets(weights: Sequence[Any]) -> list[Any]:
    """TARGET's weights grouped by their direct parent (`mha/query`), as PyTorch groups tensors by module."""
    from dataclasses import replace

    out = []
    for w in weights:
        parent, _, var = w.path.rpartition("/")
        out.append(replace(w, layer=parent, name=var) if parent else w)
    return out


def _check_transfer_options(source_path: str, target_path: str, output: str | None, by: str,
                            maps: Sequence[str], freeze: bool, dry_run: bool
                            ) -> tuple[str | None, list[tuple[str, str]]]:
    """The output path (None for a dry run without one) and the parsed --map rules; usage errors first."""
    if by not in ("name", "order"):
        raise UsageError(f"--by must be name or order (not {by!r})")
    out = None if dry_run and output is None else check_output(output, False, [source_path, target_path], target_path)
    rules = [parse_assignment(m, "--map") for m in maps]
    from wtool.store.preset_write import is_preset_output

    if freeze and out is not None and is_preset_output(target_path):
        raise UsageError(f"{out}: --freeze records frozen layers in a .keras or .h5 config, not in a preset",
                         "drop --freeze")
    if freeze and out is not None and not store_write.has_config(store_write.format_of_name(out)):
        raise UsageError(f"{out}: a .weights.h5 file has no config to record frozen layers in",
                         "write a .keras or .h5 file, or drop --freeze")
    return out, rules


def _pair_layers(rules: Sequence[tuple[str, str]], by: str, src_layers: Sequence[str],
                 dst_layers: Sequence[str], problems: list[Problem]) -> list[tuple[str, str]]:
    """Layer pairs: the --map rules first, then the remaining layers by name or by order.

    A target layer that would receive from two source layers is a `map` problem.
    """
    layer_pairs = _map_layers(rules, src_layers, dst_layers, problems)
    used_src = {s for s, _ in layer_pairs}
    used_dst = {d for _, d in layer_pairs}
    rest_src = [s for s in src_layers if s not in used_src]
    rest_dst = [d for d in dst_layers if d not in used_dst]
    if by == "name":
        dst_rest_set = set(rest_dst)
        layer_pairs += [(s, s) for s in rest_src if s in dst_rest_set]
    else:
        layer_pairs += list(zip(rest_src, rest_dst, strict=False))
    seen_dst: dict[str, str] = {}
    for s, d in layer_pairs:
        if d in seen_dst and seen_dst[d] != s:
            problems.append(Problem("map", d, f"{d}: receives from both {seen_dst[d]} and {s}"))
        seen_dst[d] = s
    return layer_pairs


def _selector(layers: Sequence[str], exclude: Sequence[str]) -> Callable[..., bool]:
    """Whether a pair (by its source and target paths) passes --layer and --exclude."""

    def selected(*paths: str | None) -> bool:
        named = [p for p in paths if p]
        if layers and not any(glob_hits(g, p) for g in layers for p in named):
            return False
        return not any(glob_hits(g, p) for g in exclude for p in named)

    return selected


def _by_layer(weights: Sequence[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for w in weights:
        grouped.setdefault(w.layer, []).append(w)
    return grouped


def _sort_weight_pairs(plan: TransferPlan, layer_pairs: Sequence[tuple[str, str]], src_weights: Sequence[Any],
                       dst_weights: Sequence[Any], selected: Callable[..., bool],
                       pairer: Callable[..., list[Pair]] | None = None) -> None:
    """Pair the weights of each layer pair into transferred / skipped / missing / unused, in file order."""
    src_by_layer, dst_by_layer = _by_layer(src_weights), _by_layer(dst_weights)
    paired_src: set[str] = set()
    paired_dst: set[str] = set()
    for s_layer, d_layer in layer_pairs:
        plan.layer_pairs.append((s_layer, d_layer))
        paired_src.update(w.path for w in src_by_layer[s_layer])
        paired_dst.update(w.path for w in dst_by_layer[d_layer])
        for pair in (pairer or _pair_weights)(src_by_layer[s_layer], dst_by_layer[d_layer], s_layer, d_layer):
            if not selected(pair.source, pair.target):
                continue
            if pair.status == "ignored":
                plan.ignored_from_source.append(pair.source or "")
            elif pair.source is None:
                plan.missing_in_source.append(pair.target or "")
            elif pair.target is None:
                plan.unused_from_source.append(pair.source)
            elif pair.status == "transferred":
                plan.transferred.append(pair)
            else:
                plan.skipped.append(pair)
    plan.missing_in_source += [w.path for w in dst_weights if w.path not in paired_dst and selected(w.path)]
    shown = (lambda w: w.h5_name) if plan.layout == "torch" else (lambda w: w.path)  # torch: the file's keys
    plan.unused_from_source += [shown(w) for w in src_weights if w.path not in paired_src and selected(shown(w))]
    src_order = {shown(w): i for i, w in enumerate(src_weights)}
    dst_order = {w.path: i for i, w in enumerate(dst_weights)}
    plan.missing_in_source.sort(key=lambda p: dst_order.get(p, 0))
    plan.unused_from_source.sort(key=lambda p: src_order.get(p, 0))


def _refuse_quantized(plan: TransferPlan, source: dict[str, str | None], target: dict[str, str | None]) -> None:
    """A pair into an int8/int4 layer from a source not quantized the same way is skipped, with why."""
    if not any(target.values()):
        return
    for pair in plan.transferred + plan.skipped:
        why = quantized_refusal(pair.target or "", target.get(pair.target or ""), source.get(pair.source or ""),
                                f"source {pair.source}")
        if why and pair.reason != "count":
            pair.status, pair.reason, pair.detail = "skipped", "quantized", why
    plan.skipped += [p for p in plan.transferred if p.status == "skipped"]
    plan.transferred = [p for p in plan.transferred if p.status != "skipped"]


def _collect_problems(plan: TransferPlan, src_layers: Sequence[str], dst_layers: Sequence[str]) -> None:
    """Mismatched pairs are problems unless --skip-mismatch; an empty transfer is one unless --allow-empty."""
    if plan.skipped and not plan.skip_mismatch:
        for p in plan.skipped:
            plan.problems.append(Problem(p.reason or "shape", p.target or "", _skip_message(p)))
    if not plan.transferred and not plan.allow_empty and not plan.problems:
        plan.problems.append(Problem("empty", "", _empty_message(plan, src_layers, dst_layers)))


def _pair_weights(src_ws: Sequence[Any], dst_ws: Sequence[Any], s_layer: str, d_layer: str) -> list[Pair]:
    """Pair the weights of two matched layers: by variable name when the names agree, else by order."""
    s_names = [normalize_var(s_layer, w.name) for w in src_ws]
    d_names = [normalize_var(d_layer, w.name) for w in dst_ws]
    unique = len(set(s_names)) == len(s_names) and len(set(d_names)) == len(d_names)
    if len(src_ws) == len(dst_ws):
        if unique and set(s_names) == set(d_names):
            return _pair_named(src_ws, dst_ws, s_names, d_names)
        return [_check_pair(s, d, d_layer) for s, d in zip(src_ws, dst_ws, strict=True)]
    if unique and set(s_names) & set(d_names):
        # e.g. a kernel-only layer into one with a bias: pair the kernels, report the rest.
        return _pair_named(src_ws, dst_ws, s_names, d_names)
    detail = (f"{s_layer} has {len(src_ws)} weights {_shapes(src_ws)}, "
              f"{d_layer} has {len(dst_ws)} {_shapes(dst_ws)}")
    return [Pair(s_layer, d_layer, None, None, "skipped", "count", detail, d_layer)]


def _pair_torch(src_ws: Sequence[Any], dst_ws: Sequence[Any], s_layer: str, d_layer: str) -> list[Pair]:
    """--layout torch: the target layer's variables decide what each PyTorch tensor becomes (torch_layout)."""
    from wtool.ops.torch_layout import plan_layer

    convs, unused, ignored = plan_layer(src_ws, dst_ws)
    key_of = {w.path: w.h5_name for w in src_ws}
    dtype_of = {w.h5_name: w.dtype for w in src_ws}
    pairs = []
    for d in dst_ws:
        conv = convs.get(d.path)
        if conv is None:
            pairs.append(Pair(None, d.path, None, tuple(d.shape), target_layer=d.layer, target_h5=d.h5_name))
            continue
        pair = Pair(" + ".join(conv.sources), d.path, conv.shape, tuple(d.shape), target_layer=d_layer,
                    target_h5=d.h5_name, conversion=conv.text, convert=conv, target_dtype=d.dtype)
        if conv.shape != tuple(d.shape):
            pair.status, pair.reason = "skipped", "shape"
            if conv.shape is None:
                pair.detail = conv.text
        else:
            why = next((w for w in (dtype_problem(np.dtype(dtype_of[k]), np.dtype(d.dtype))
                                    for k in conv.sources) if w), None)
            if why:
                pair.status, pair.reason, pair.detail = "skipped", "dtype", why
        pairs.append(pair)
    pairs += [Pair(key_of[p], None, None, None) for p in unused]
    pairs += [Pair(key_of[p], None, None, None, status="ignored") for p in ignored]
    return pairs


def _shapes(ws: Sequence[Any]) -> str:
    return "[" + ", ".join(shape_text(w.shape) for w in ws) + "]"


def _pair_named(src_ws: Sequence[Any], dst_ws: Sequence[Any], s_names: list[str], d_names: list[str]) -> list[Pair]:
    src_named = dict(zip(s_names, src_ws, strict=True))
    pairs = []
    for name, d in zip(d_names, dst_ws, strict=True):
        s = src_named.pop(name, None)
        if s is None:
            pairs.append(Pair(None, d.path, None, tuple(d.shape), target_layer=d.layer, target_h5=d.h5_name))
        else:
            pairs.append(_check_pair(s, d, d.layer))
    for s in src_named.values():
        pairs.append(Pair(s.path, None, tuple(s.shape), None, source_h5=s.h5_name))
    return pairs


def _check_pair(s: Any, d: Any, d_layer: str) -> Pair:
    pair = Pair(s.path, d.path, tuple(s.shape), tuple(d.shape), target_layer=d_layer, source_h5=s.h5_name,
                target_h5=d.h5_name, target_dtype=d.dtype)
    if tuple(s.shape) != tuple(d.shape):
        pair.status, pair.reason = "skipped", "shape"
    else:
        why = dtype_problem(np.dtype(s.dtype), np.dtype(d.dtype))
        if why:
            pair.status, pair.reason, pair.detail = "skipped", "dtype", why
    return pair


def _skip_message(p: Pair) -> str:
    if p.reason == "shape":
        return (f"{p.source} -> {p.target}: source shape {shape_text(p.source_shape)}, "
                f"target shape {shape_text(p.target_shape)}")
    if p.reason in ("dtype", "quantized"):
        return f"{p.source} -> {p.target}: {p.detail}"
    return f"{p.source} -> {p.target}: {p.detail}"


def _empty_message(plan: TransferPlan, src_layers: Sequence[str], dst_layers: Sequence[str]) -> str:
    if not plan.layer_pairs:
        what = (f"no layer names in common (source: {', '.join(src_layers[:4])}"
                f"{', ...' if len(src_layers) > 4 else ''}; target: {', '.join(dst_layers[:4])}"
                f"{', ...' if len(dst_layers) > 4 else ''})") if plan.by == "name" else "no weight-bearing layers"
    else:
        what = "every matched weight was filtered out or skipped"
    return f"nothing to transfer: {what}"


def transfer_hint(plan: TransferPlan) -> str | None:
    kinds = {p.kind for p in plan.problems}
    if kinds == {"empty"}:
        return ("match by position with --by order, or name pairs with --map SRC=DST; "
                "--allow-empty accepts an empty transfer")
    if kinds <= {"shape", "dtype", "count", "quantized"}:
        return "--skip-mismatch transfers the rest and reports these as skipped"
    return None


def apply_transfer(plan: TransferPlan) -> TransferPlan:
    """Write the plan; raises with every problem (and writes nothing) when there are any."""
    from wtool.store.preset_write import is_preset_output

    if plan.problems:
        raise problems_error(plan.problems, "nothing written", transfer_hint(plan))
    if plan.dry_run:
        return plan
    assert plan.output is not None
    with contextlib.ExitStack() as stack:
        if plan.source_format == "safetensors":  # not HDF5: values are read as the writer asks for them
            src = stack.enter_context(open_checked(plan.source))
            writes = [store_write.WeightWrite(p.target_h5, value=_LazyValue(src, p))  # type: ignore[arg-type]
                      for p in plan.transferred]
        else:  # HDF5: bytes copied file to file (a sharded source: from each weight's own shard)
            src = stack.enter_context(open_checked(plan.source))
            by_h5 = {w.h5_name: w for w in src.weights}
            writes = [_hdf5_write(src, by_h5[p.source_h5], p) for p in plan.transferred]
        plan.result = store_write.write_weights(plan.target, plan.target_format, plan.output, writes,
                                                reset_optimizer=plan.reset_optimizer, freeze=plan.freeze,
                                                rebuild=rebuild_with_keras(plan.unsafe),
                                                max_shard_bytes=plan.max_shard_bytes,
                                                preset_folder=is_preset_output(plan.target))
    return plan


def _hdf5_write(src: Any, w: Any, p: Pair) -> store_write.WeightWrite:
    """A byte copy; values rounded first when bfloat16 meets another dtype (h5py sees bfloat16 as bytes)."""
    if w.dtype != p.target_dtype and "bfloat16" in (w.dtype, p.target_dtype):
        return store_write.WeightWrite(p.target_h5, value=stored_value(src.read(w.path), p.target_dtype or w.dtype))
    return store_write.WeightWrite(p.target_h5, source=store_write.WeightSource(*src.weight_source(w.path)))


class _LazyValue:
    """A transferred value read from the opened SOURCE (converted for --layout torch) when the writer
    converts it to an array, one weight at a time, and dropped after."""

    def __init__(self, source: Any, pair: Pair) -> None:
        self.shape = tuple(pair.target_shape or ())
        self._source = source
        self._pair = pair

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        p, src = self._pair, self._source
        if p.convert is not None:
            value = p.convert.make([src.read(k) for k in p.convert.sources])
        else:
            value = src.read(p.source_h5)
        value = np.ascontiguousarray(value, dtype=np.dtype(dtype or p.target_dtype or value.dtype))
        if value.shape != self.shape:  # pragma: no cover - the plan checked the shapes
            raise IncompatibleError(f"{p.target}: converted to {value.shape}, expected {self.shape}")
        return value
