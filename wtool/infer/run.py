"""One `wtool infer` run from its options to its report, with no click and no printing.

The command layer hands in where stdout predictions go (a table collector or JSON lines,
decided once the row count is known) and a progress callback; everything else (options
checked before the model loads, the atomic output file, sources closed, the weights proven
unchanged) happens here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from wtool.data.labels import load_labels
from wtool.data.rows import OUTPUT_FORMATS, CollectWriter, Column, RowWriter, format_of, open_writer
from wtool.errors import UsageError
from wtool.fileio import atomic_output
from wtool.graph.folders import ImageOptions
from wtool.graph.model import saved_inputs
from wtool.infer import predict as infer

SinkFactory = Callable[[list[Column], int], RowWriter]
# Given the row count, a context that yields a progress callback (or None for no progress).
ProgressFactory = Callable[[int], AbstractContextManager[Callable[[int], None] | None]]


@dataclass(frozen=True)
class InferOptions:
    """The command line of one run, as parsed by click."""

    model: str
    input_path: str | None = None
    out_path: str | None = None
    named_inputs: tuple[str, ...] = ()
    input_key: str | None = None
    input_format: str | None = None
    columns: str | None = None
    header: bool | None = None
    batch_size: int | None = None
    shard: str | None = None
    argmax: bool = False
    top_k: int | None = None
    threshold: float | None = None
    labels_path: str | None = None
    arch: str | None = None
    unsafe: bool = False
    drop: tuple[str, ...] = ()  # CSV columns left out (as train's --drop)
    target: str | None = None  # train's label column, left out when the CSV has it
    image_size: str | None = None  # a folder of images: HxW (default: the model's input)
    color_mode: str | None = None
    max_length: int | None = None  # a folder of text files: characters kept per file (Keras's max_length)


@dataclass
class InferOutcome:
    """The report, and the rows collected for a table when stdout asked for one."""

    report: infer.Report
    columns: list[Column]
    table: CollectWriter | None
    first_row: int
    notes: list[str] = field(default_factory=list)


def _output_format(out_path: str | None) -> str | None:
    if out_path is None:
        return None
    out_fmt = format_of(out_path, OUTPUT_FORMATS)
    if out_fmt is None:
        raise UsageError(f"{out_path}: unsupported output format", "use -o with .npy, .npz, .csv, .tsv or .jsonl")
    parent = Path(out_path).parent
    if not parent.is_dir():
        raise UsageError(f"{out_path}: output directory {parent} does not exist")
    return out_fmt


def _no_progress(_total: int) -> AbstractContextManager[None]:
    return nullcontext()


def _labels(opts: InferOptions) -> tuple[str, ...] | None:
    """--labels FILE; else the class names saved with the model (train on string labels or a folder),
    used by --argmax/--top-k, and by a bare --labels."""
    if opts.labels_path:
        return load_labels(opts.labels_path)
    if opts.labels_path is None and (not (opts.argmax or opts.top_k)
                                     or str(opts.out_path or "").lower().endswith(".npy")):
        return None  # an .npy holds the one array asked for: the class indices
    from wtool.store import open_model

    names = None
    for path in (opts.model, opts.arch):
        if path is not None and names is None:
            with open_model(path) as mf:
                names = mf.class_names
    if names is None and opts.labels_path == "":
        raise UsageError(f"{opts.model}: no class names are saved with the model",
                         "give them with --labels FILE (one per line, or a JSON list)")
    return tuple(names) if names else None


def run_infer(opts: InferOptions, to_stdout: SinkFactory, progress: ProgressFactory = _no_progress) -> InferOutcome:
    """Check the options, load the model frozen, stream every row and report what happened."""
    t0 = time.perf_counter()
    labels = _labels(opts)
    post = infer.Postprocess.from_options(opts.argmax, opts.top_k, opts.threshold, labels)
    shard_k_n = infer.parse_shard(opts.shard)
    named = infer.parse_input_pairs(opts.named_inputs)
    out_fmt = _output_format(opts.out_path)
    if opts.input_path is None and not named:
        raise UsageError("no input: give INPUT (a file, or - for stdin)", "e.g. wtool infer MODEL rows.npy")

    saved = saved_inputs(opts.model) if opts.arch is None else None
    if saved is not None:  # a bad input fails in a fraction of a second, TensorFlow never loaded
        infer.precheck_inputs(saved, opts.input_path, named, key=opts.input_key, fmt=opts.input_format,
                              columns=opts.columns, header=opts.header, drop=opts.drop, target=opts.target)
    frozen = infer.load_frozen(opts.model, unsafe=opts.unsafe, arch=opts.arch)
    before = frozen.fingerprint()
    sources = infer.open_inputs(frozen.inputs, opts.input_path, named, key=opts.input_key, columns=opts.columns,
                                fmt=opts.input_format, header=opts.header, drop=opts.drop, target=opts.target,
                                images=ImageOptions(opts.image_size, opts.color_mode, opts.max_length))
    made: list[RowWriter] = []

    def stdout_sink(cols: list[Column], n: int) -> RowWriter:
        made.append(to_stdout(cols, n))
        return made[-1]

    try:
        plan = infer.InferPlan(frozen, sources, post, opts.batch_size, shard_k_n, file_column=out_fmt != "npy")
        if out_fmt == "npy" and len(plan.column_names) != 1:
            raise UsageError(f"{opts.out_path}: an .npy file holds one array; this run gives "
                             f"{len(plan.column_names)} ({', '.join(plan.column_names)})",
                             "use -o with .npz, .csv or .jsonl")
        load_time = time.perf_counter() - t0
        with progress(plan.rows) as update:
            if opts.out_path is not None:
                assert out_fmt is not None
                with atomic_output(opts.out_path) as tmp:
                    stats = plan.run(lambda cols, n: open_writer(tmp, cols, n, out_fmt), update)
            else:
                stats = plan.run(stdout_sink, update)  # a reader that stops early (`| head`): see cli.invoke
    finally:
        for s in sources:
            s.close()
    unchanged = infer.check_unchanged(frozen, before)
    table = next((w for w in made if isinstance(w, CollectWriter)), None)
    report = infer.Report(
        model=opts.model,
        inputs=[{"name": spec.name, **src.describe()} for spec, src in zip(frozen.inputs, sources, strict=True)],
        output=opts.out_path or "stdout", format=out_fmt or ("table" if table is not None else "jsonl"),
        rows=stats.rows, batches=stats.batches, batch_size=int(plan.batch_size or 0),
        shard=f"{shard_k_n[0]}/{shard_k_n[1]}" if shard_k_n else None, row_range=(plan.start, plan.stop),
        columns=infer.describe_columns(plan.columns), load_time_s=load_time, predict_time_s=stats.seconds,
        wall_time_s=time.perf_counter() - t0, weights_unchanged=unchanged)
    return InferOutcome(report, plan.columns, table, plan.start, plan.notes)

