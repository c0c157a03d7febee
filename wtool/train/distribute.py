"""tf.distribute strategies for `wtool train`: data-parallel training on TensorFlow's own engine.

`make_strategy(name, workers, task_index)` picks and builds a `tf.distribute.Strategy`:

- ``one-device``: TensorFlow's default strategy (one device, no replication): the plain loop.
- ``mirrored``: `tf.distribute.MirroredStrategy` over this host's GPUs (or, with `replicas=N` on a host
  without GPUs, over N logical CPU devices: it checks the setup, it adds no compute).
- ``multi-worker``: `tf.distribute.MultiWorkerMirroredStrategy`, one process per host, configured from
  the standard ``TF_CONFIG`` environment variable or from `workers` (HOST:PORT list) and `task_index`.
- ``auto``: mirrored when more than one GPU is visible, else one-device.

The strategy must be built before TensorFlow runs anything (logical devices and collective ops are
fixed at start-up), so `train` builds it first and creates the model, optimizer and metrics inside
`strategy.scope()`.

Every multi-worker wait is bounded by a timeout: workers must all join within it at start-up, and a
collective (the gradient all-reduce) that does not finish within it stops the job. A worker that dies
or stops answering is also noticed by TensorFlow's coordination-service heartbeat within ~10 s. Either
way the remaining workers raise `ClusterError` (exit 7) naming the worker, instead of hanging.

Training math (the reason one and two workers give the same weights): the global batch is
`--batch-size`; step b takes the same rows of the same seeded permutation on every worker, and replica
r of R gets a contiguous slice of them (`replica_bounds`). Each replica's loss is its per-example loss
summed and divided by the *global* batch size (plus regularisation / R), so the all-reduced (summed)
gradient is exactly the single-process gradient of the whole batch, up to float summation order.

TensorFlow and Keras are imported inside functions only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wtool.errors import ClusterError, IncompatibleError, UsageError

STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")
DEFAULT_COLLECTIVE_TIMEOUT = 120.0
# TensorFlow's coordination service declares a silent worker dead after this many seconds.
HEARTBEAT_TIMEOUT = 10.0
_PEER = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


# --------------------------------------------------------------------------------------- cluster spec


@dataclass(frozen=True)
class ClusterSpec:
    """The multi-worker cluster as TF_CONFIG describes it: job name -> addresses, and this task."""

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int
    source: str  # "TF_CONFIG" or "--workers"

    @property
    def chief(self) -> tuple[str, int]:
        return ("chief", 0) if self.jobs.get("chief") else ("worker", 0)

    @property
    def is_chief(self) -> bool:
        return (self.task_type, self.task_index) == self.chief

    @property
    def num_workers(self) -> int:
        return len(self.jobs.get("chief", [])) + len(self.jobs.get("worker", []))

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    def name_of(self, job: str, index: int) -> str:
        try:
            return f"{job} {index} ({self.jobs[job][index]})"
        except (KeyError, IndexError):
            return f"{job} {index}"

    def tf_config(self) -> str:
        """The TF_CONFIG value for this task."""
        return json.dumps({"cluster": self.jobs, "task": {"type": self.task_type, "index": self.task_index}})


def _check_address(addr: Any, where: str) -> str:
    if not isinstance(addr, str) or ":" not in addr:
        raise UsageError(f"{where}: '{addr}' is not HOST:PORT", "e.g. --workers host1:2222,host2:2222")
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{where}: '{addr}' is not HOST:PORT with a port from 1 to 65535",
                         "e.g. --workers host1:2222,host2:2222")
    return addr


def parse_workers(text: str) -> list[str]:
    """`--workers host1:2222,host2:2222` -> the list of addresses (checked)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--workers is empty", "e.g. --workers host1:2222,host2:2222")
    for item in items:
        _check_address(item, "--workers")
    if len(set(items)) != len(items):
        raise UsageError(f"--workers lists an address twice ({text})")
    return items


def cluster_spec(workers: Sequence[str] | None, task_index: int | None,
                 environ: dict[str, str] | None = None) -> ClusterSpec:
    """The cluster from --workers/--task-index, else from TF_CONFIG. Raises UsageError when neither fits."""
    env = os.environ if environ is None else environ
    if workers:
        workers = [_check_address(w, "--workers") for w in workers]
        if task_index is None:
            raise UsageError("--workers needs --task-index I (this process's position in the list, from 0)")
        if not 0 <= task_index < len(workers):
            raise UsageError(f"--task-index {task_index} is out of range for {len(workers)} workers",
                             f"use 0 to {len(workers) - 1}; worker 0 is the chief")
        return ClusterSpec({"worker": list(workers)}, "worker", task_index, "--workers")
    if task_index is not None:
        raise UsageError("--task-index needs --workers HOST:PORT,... (or set TF_CONFIG instead of both)")
    raw = env.get("TF_CONFIG", "").strip()
    if not raw:
        raise UsageError("--strategy multi-worker needs the cluster: set TF_CONFIG or pass --workers and "
                         "--task-index", "e.g. --workers host1:2222,host2:2222 --task-index 0 (README 'cluster')")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"TF_CONFIG is not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cluster"), dict) or not isinstance(doc.get("task"), dict):
        raise UsageError("TF_CONFIG needs 'cluster' and 'task' objects",
                         '{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 0}}')
    jobs: dict[str, list[str]] = {}
    for job, addrs in doc["cluster"].items():
        if job not in ("chief", "worker"):
            raise UsageError(f"TF_CONFIG: job '{job}' is not supported by --strategy multi-worker",
                             "use 'worker' tasks (and optionally one 'chief'); parameter servers and evaluators "
                             "are not used")
        if isinstance(addrs, dict):  # sparse form {"0": "h:p"}
            addrs = [addrs[k] for k in sorted(addrs, key=lambda k: int(k))]
        if not isinstance(addrs, list) or not addrs:
            raise UsageError(f"TF_CONFIG: cluster.{job} must be a list of HOST:PORT")
        jobs[job] = [_check_address(a, f"TF_CONFIG cluster.{job}") for a in addrs]
    if len(jobs.get("chief", [])) > 1:
        raise UsageError("TF_CONFIG: there can be only one chief")
    task = doc["task"]
    ttype, tindex = task.get("type"), task.get("index", 0)
    if ttype not in jobs:
        raise UsageError(f"TF_CONFIG: task type '{ttype}' is not a job of the cluster ({', '.join(jobs)})")
    if not isinstance(tindex, int) or not 0 <= tindex < len(jobs[ttype]):
        raise UsageError(f"TF_CONFIG: task index {tindex!r} is out of range for {len(jobs[ttype])} {ttype} tasks")
    return ClusterSpec(jobs, ttype, tindex, "TF_CONFIG")


# ------------------------------------------------------------------------------------------ strategies


@dataclass
class Distribution:
    """The strategy of a run and what the loop needs to know about it."""

    strategy: Any
    kind: str  # one-device | mirrored | multi-worker
    cluster: ClusterSpec | None = None
    timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    _local_ids: list[int] | None = field(default=None, repr=False)
    _scratch: str | None = field(default=None, repr=False)
    _gather: Any = field(default=None, repr=False)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def workers(self) -> int:
        return self.cluster.num_workers if self.cluster else 1

    @property
    def distributed(self) -> bool:
        """True when steps go through strategy.run (any strategy but the default one, even with one replica)."""
        return self.kind != "one-device"

    @property
    def is_chief(self) -> bool:
        return self.cluster.is_chief if self.cluster else True

    @property
    def task_index(self) -> int:
        return self.cluster.task_index if self.cluster else 0

    def scope(self) -> Any:
        return self.strategy.scope()

    def scratch_dir(self, near: str | os.PathLike[str]) -> str:
        """A private directory for what a non-chief worker must write but nobody keeps (its checkpoints)."""
        if self._scratch is None:
            base = os.path.dirname(os.path.abspath(near))
            self._scratch = tempfile.mkdtemp(prefix=f".wtool-worker{self.task_index}-",
                                             dir=base if os.path.isdir(base) else None)
        return self._scratch

    def cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "replicas": self.replicas, "workers": self.workers,
                "task_index": self.task_index, "chief": self.is_chief, "description": self.describe()}

    def describe(self) -> str:
        if self.kind == "one-device":
            return "one device"
        if self.kind == "mirrored":
            devices = ", ".join(str(d).split("device:")[-1] for d in self.strategy.extended.worker_devices)
            return f"mirrored over {self.replicas} replica{'s' if self.replicas != 1 else ''} ({devices})"
        assert self.cluster is not None
        role = "chief" if self.is_chief else "worker"
        return (f"multi-worker: {self.workers} workers, {self.replicas} replicas; this is {role} "
                f"({self.cluster.task_type} {self.cluster.task_index}, {self.cluster.address}, from "
                f"{self.cluster.source})")

    def local_replica_ids(self) -> list[int]:
        """Global ids (replica_id_in_sync_group) of the replicas in this process."""
        if self._local_ids is None:
            ids: list[int] = []

            def record(ctx: Any) -> Any:
                import tensorflow as tf

                ids.append(int(ctx.replica_id_in_sync_group))
                return tf.constant(0)

            self.strategy.experimental_distribute_values_from_function(record)
            self._local_ids = sorted(ids)
        return self._local_ids

    def per_replica(self, make: Callable[[int], Any]) -> Any:
        """A per-replica value built from `make(global replica id)` for each local replica."""
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: make(int(ctx.replica_id_in_sync_group)))


def _gpus() -> list[Any]:
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def check_options(name: str = "auto", workers: Sequence[str] | None = None, task_index: int | None = None, *,
                  replicas: int | None = None, timeout: float = DEFAULT_COLLECTIVE_TIMEOUT) -> None:
    """Validate the strategy options without TensorFlow (UsageError, exit 2, on anything wrong)."""
    if name not in STRATEGIES:
        raise UsageError(f"--strategy '{name}' is unknown", f"expected one of {', '.join(STRATEGIES)}")
    if not (timeout > 0):
        raise UsageError(f"--collective-timeout must be a positive number of seconds (not {timeout})")
    if (workers or task_index is not None) and name != "multi-worker":
        raise UsageError("--workers and --task-index go with --strategy multi-worker")
    if replicas is not None and replicas < 1:
        raise UsageError(f"--replicas must be at least 1 (not {replicas})")
    if replicas is not None and name not in ("mirrored", "multi-worker"):
        raise UsageError("--replicas goes with --strategy mirrored (or multi-worker)")
    if name == "multi-worker":
        cluster_spec(workers, task_index)


def make_strategy(name: str = "auto", workers: Sequence[str] | None = None, task_index: int | None = None, *,
                  replicas: int | None = None, timeout: float = DEFAULT_COLLECTIVE_TIMEOUT) -> Distribution:
    """Build the strategy `name` (auto|one-device|mirrored|multi-worker). Call before TensorFlow runs anything."""
    check_options(name, workers, task_index, replicas=replicas, timeout=timeout)
    from wtool.graph.model import import_keras

    import_keras()  # TensorFlow's own start-up lines stay quiet (the strategy is the first thing to load it)
    if name == "auto":
        name = "mirrored" if len(_gpus()) > 1 else "one-device"
    if name == "one-device":
        import tensorflow as tf

        return Distribution(tf.distribute.get_strategy(), "one-device", timeout=timeout)
    if name == "mirrored":
        return Distribution(_mirrored(replicas), "mirrored", timeout=timeout)
    spec = cluster_spec(workers, task_index)
    return Distribution(_multi_worker(spec, replicas, timeout), "multi-worker", spec, timeout)


def _split_cpu(n: int) -> list[str]:
    """N logical CPU devices (must happen before TensorFlow initialises its runtime)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if not current or len(current) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError:
            raise UsageError(f"--replicas {n}: TensorFlow is already running in this process, the CPU cannot be "
                             "split any more", "run wtool train in a fresh process") from None
    return [f"/cpu:{i}" for i in range(n)]


def _mirrored(replicas: int | None) -> Any:
    import tensorflow as tf

    gpus = _gpus()
    if gpus:
        if replicas is not None and replicas > len(gpus):
            raise UsageError(f"--replicas {replicas}: only {len(gpus)} GPUs are visible")
        devices = [f"/gpu:{i}" for i in range(replicas or len(gpus))]
        return tf.distribute.MirroredStrategy(devices)
    devices = _split_cpu(replicas) if replicas and replicas > 1 else ["/cpu:0"]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def _configure_coordination(spec: ClusterSpec, timeout: float) -> None:
    """Bound the start-up wait: every task must register within `timeout` (TensorFlow waits forever).

    Uses TensorFlow's internal coordination-service configuration, which MultiWorkerMirroredStrategy
    then keeps (it only configures the service when nobody did). If the internals moved, the strategy
    falls back to TensorFlow's defaults: collectives are still bounded, only the start-up is not.
    """
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
        from tensorflow.python.eager import context
    except ImportError:  # pragma: no cover - TensorFlow moved its internals
        return
    ctx = context.context()
    if ctx.coordination_service is not None:
        return
    leader_job, _ = spec.chief
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(spec.jobs[job]))
            for job in ("chief", "worker") if spec.jobs.get(job)]
    ms = int(timeout * 1000)
    ctx.configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader_job}/replica:0/task:0",
        cluster_register_timeout_in_ms=ms, heartbeat_timeout_in_ms=int(min(timeout, HEARTBEAT_TIMEOUT) * 1000),
        coordinated_jobs=jobs)
    config = ctx.coordination_service
    if config is not None and hasattr(config, "cluster_register_with_barrier"):
        config.cluster_register_with_barrier = True


def _multi_worker(spec: ClusterSpec, replicas: int | None, timeout: float) -> Any:
    import tensorflow as tf

    if replicas and replicas > 1 and not _gpus():
        _split_cpu(replicas)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(spec.jobs), task_type=spec.task_type, task_id=spec.task_index, rpc_layer="grpc")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    _configure_coordination(spec, timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    except tf.errors.OpError as exc:
        raise cluster_error(exc, spec, timeout, starting=True) from None
    except RuntimeError as exc:
        raise UsageError(f"--strategy multi-worker: {str(exc).splitlines()[0][:200]}",
                         "multi-worker training must be set up before TensorFlow runs; use a fresh process") from None


# ---------------------------------------------------------------------------------------------- errors


def cluster_error(exc: BaseException, spec: ClusterSpec | None, timeout: float, *, starting: bool = False,
                  checkpoint: str | None = None, resume: str | None = None) -> ClusterError:
    """Turn TensorFlow's collective / coordination errors into one clear ClusterError."""
    text = str(exc)
    peers = sorted({(m.group(1), int(m.group(2))) for m in _PEER.finditer(text)})
    me = (spec.task_type, spec.task_index) if spec else None
    others = [p for p in peers if p != me]

    def name(p: tuple[str, int]) -> str:
        return spec.name_of(*p) if spec else f"{p[0]} {p[1]}"

    low = text.lower()
    if starting:
        if "address already in use" in low or "failed to add port" in low or "could not start" in low:
            addr = spec.address if spec else "its port"
            return ClusterError(f"this worker cannot listen on {addr} (port in use?)",
                                "pick a free port in --workers / TF_CONFIG")
        missing = [p for p in others] if others else []
        who = ", ".join(name(p) for p in missing) or "some workers"
        return ClusterError(f"the cluster did not form within {timeout:g} s: {who} did not join",
                            "start every worker (same --workers, its own --task-index) within --collective-timeout "
                            "of each other, and check the addresses and firewalls")
    what = (f"{', '.join(name(p) for p in others)} failed or stopped answering" if others
            else "another worker failed or stopped answering")
    if "deadline" in low and not others:
        what = f"a collective operation did not finish within {timeout:g} s (another worker is stuck or gone)"
    detail = text.strip().splitlines()
    first = next((line for line in detail if "aborted" in line.lower() or "unavailable" in line.lower()
                  or "heartbeat" in line.lower()), detail[0] if detail else type(exc).__name__)
    first = re.sub(r"\{\{[^}]*\}\}\s*", "", first).strip()  # TensorFlow's {{function_node ...}} prefix
    message = f"multi-worker training stopped: {what} ({first[:160]})"
    hint_parts = []
    if checkpoint:
        hint_parts.append(f"the last checkpoint is kept: {checkpoint}")
    if resume:
        hint_parts.append(f"restart every worker with --resume: {resume}")
    else:
        hint_parts.append("restart every worker; with --checkpoint-dir and --resume the run continues")
    return ClusterError(message, "; ".join(hint_parts))


def is_cluster_failure(exc: BaseException) -> bool:
    """A TensorFlow error that means a collective / peer failed (not a bug in the model or data)."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                        tf.errors.AbortedError)):
        return True
    if isinstance(exc, tf.errors.OpError):
        low = str(exc).lower()
        return "collective ops is aborted" in low or "heartbeat" in low or "coordination service" in low
    return False


# ------------------------------------------------------------------------------------------ data & loss


def replica_bounds(rows: int, replicas: int, replica: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of `rows` that replica `replica` of `replicas` takes (contiguous)."""
    base, extra = divmod(rows, replicas)
    lo = replica * base + min(replica, extra)
    return lo, lo + base + (1 if replica < extra else 0)


def scaled_loss(tf: Any, loss_none: Any, y: Any, pred: Any, global_batch: Any, extra_losses: Sequence[Any],
                replicas: int) -> tuple[Any, Any]:
    """(loss to differentiate on this replica, sum of per-example losses of this replica's rows).

    `loss_none` is the run's Keras loss with reduction "none". Dividing the summed per-example loss by the
    global batch size (as tf.nn.compute_average_loss does), and the regularisation losses by the number of
    replicas, makes the summed gradient of all replicas the gradient of the global-batch mean loss.
    """
    values = tf.cast(loss_none(y, pred), tf.float32)
    per_row = tf.reduce_prod(tf.shape(values)[1:])  # Keras's sum_over_batch_size averages every element
    local_sum = tf.reduce_sum(values) / tf.cast(per_row, tf.float32)
    loss = local_sum / tf.cast(global_batch, tf.float32)
    if extra_losses:
        reg = tf.add_n([tf.cast(e, tf.float32) for e in extra_losses])
        loss += tf.nn.scale_regularization_loss(reg) if replicas > 1 else reg
        local_sum += reg * tf.cast(tf.shape(values)[0], tf.float32)  # as the plain loop reports it
    return loss, local_sum


def unreduced_loss(loss_obj: Any) -> Any:
    """A copy of a Keras loss that returns per-example values (reduction "none")."""
    import copy

    twin = copy.copy(loss_obj)
    twin.reduction = "none"
    return twin


# ------------------------------------------------------------------------------------- sharded batches


class Shard:
    """One chunk of a global batch plan, held as this worker's per-replica slices.

    `shape` is the global (steps, batch, ...) shape, so the loop's bookkeeping does not change;
    `parts[r]` is replica r's (steps, rows_r, ...) array.
    """

    def __init__(self, shape: tuple[int, ...], parts: dict[int, np.ndarray]) -> None:
        self.shape = shape
        self.parts = parts


class ShardedBatches:
    """Wraps the loop's `Batches`: the same global batches, each worker taking only its replicas' rows.

    Needs from `inner`: `x`, `y`, `n`, `b`, `k`, `full`, `rem`, `steps`, `x_dtype`, `y_dtype`, and
    `order(epoch)` (the permutation, or None without shuffling).
    """

    def __init__(self, inner: Any, dist: Distribution) -> None:
        self.inner = inner
        self.replicas = dist.replicas
        self.local = dist.local_replica_ids()
        self.x, self.y = inner.x, inner.y
        self.n: int = inner.n
        self.b: int = inner.b
        self.k: int = inner.k
        self.full: int = inner.full
        self.rem: int = inner.rem
        self.steps: int = inner.steps
        # A last batch smaller than the replica count would leave a replica without rows (BatchNormalization
        # then averages nothing); it is skipped, and the run says so.
        self.skips_last = 0 < self.rem < self.replicas

    def _part(self, arr: np.ndarray, order: np.ndarray | None, lo: int, steps: int, rows: int, replica: int,
              dtype: np.dtype) -> np.ndarray:
        a, b = replica_bounds(rows, self.replicas, replica)
        idx = np.concatenate([np.arange(lo + s * rows + a, lo + s * rows + b) for s in range(steps)]) \
            if steps else np.zeros(0, dtype=np.int64)
        if order is not None:
            idx = order[idx]
        block = np.asarray(arr[idx], dtype=dtype)
        return block.reshape(steps, b - a, *arr.shape[1:])

    def _chunk(self, order: np.ndarray | None, lo: int, steps: int, rows: int) -> tuple[int, Shard, Shard]:
        inner = self.inner
        xs = {r: self._part(inner.x, order, lo, steps, rows, r, inner.x_dtype) for r in self.local}
        ys = {r: self._part(inner.y, order, lo, steps, rows, r, inner.y_dtype) for r in self.local}
        return (steps, Shard((steps, rows, *inner.x.shape[1:]), xs),
                Shard((steps, rows, *inner.y.shape[1:]), ys))

    def chunks(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, Shard, Shard]]:
        order = self.inner.order(epoch)
        step = start_step
        while step < self.full:
            k = min(self.k, self.full - step)
            yield self._chunk(order, step * self.b, k, self.b)
            step += k
        if self.rem and step <= self.full and not self.skips_last:
            yield self._chunk(order, self.full * self.b, 1, self.rem)


# -------------------------------------------------------------------------------------- step functions


@dataclass
class DistributedFunctions:
    """Same calling convention as the plain loop's: train(xs, ys) -> tensor [ok, steps done, loss sum];
    eval(xs, ys) -> the summed loss of the rows."""

    train: Callable[[Shard, Shard], Any]
    eval: Callable[[Shard, Shard], Any]


def make_functions(dist: Distribution, model: Any, loss_obj: Any, train_metrics: list[Any],
                   val_metrics: list[Any], optimizer: Any, trainable: list[Any],
                   jit: bool = False) -> DistributedFunctions:
    """tf.functions running each step through strategy.run.

    Per step: (1) every replica computes its loss and gradients and one small all-reduce agrees on the
    loss sum and on whether anything is NaN/Inf; (2) unless something is, every replica applies its
    gradients with the Keras optimizer (which all-reduces them) and updates the metrics. Deciding before
    applying keeps all replicas in step (a conditional all-reduce would deadlock) and leaves the weights
    and optimizer state untouched at a divergence, as in the plain loop. With `jit`, each replica's
    forward and backward pass (no collectives in it) is compiled with XLA.
    """
    import tensorflow as tf

    replica = _ReplicaSteps(dist, model, loss_obj, train_metrics, val_metrics, optimizer, trainable, jit)
    train_fn = tf.function(_train_chunk(dist.strategy, replica), reduce_retracing=True)
    eval_fn = tf.function(_eval_chunk(dist.strategy, replica), reduce_retracing=True)

    def to_replicas(shard: Shard) -> Any:
        return dist.per_replica(lambda r: tf.constant(shard.parts[r]))

    def train(xs: Shard, ys: Shard) -> Any:
        return train_fn(to_replicas(xs), to_replicas(ys), tf.constant(xs.shape[1], tf.int32))

    def evaluate(xs: Shard, ys: Shard) -> Any:
        return eval_fn(to_replicas(xs), to_replicas(ys), tf.constant(xs.shape[1], tf.int32))

    return DistributedFunctions(train, evaluate)


class _ReplicaSteps:
    """What one replica does for step i of a chunk: compute (loss, gradients, the agreed sums), apply, evaluate."""

    def __init__(self, dist: Distribution, model: Any, loss_obj: Any, train_metrics: list[Any],
                 val_metrics: list[Any], optimizer: Any, trainable: list[Any], jit: bool) -> None:
        import tensorflow as tf

        self.model, self.train_metrics, self.val_metrics = model, train_metrics, val_metrics
        self.optimizer, self.trainable, self.replicas = optimizer, trainable, dist.replicas
        self.loss_none = unreduced_loss(loss_obj)
        self.clip = getattr(optimizer, "global_clipnorm", None)
        self.sum_op = tf.distribute.ReduceOp.SUM
        self.local_step = tf.function(self._local_step, jit_compile=True) if jit else self._local_step

    def _local_step(self, x: Any, y: Any, gb: Any) -> Any:
        import tensorflow as tf

        trainable = self.trainable
        with tf.GradientTape() as tape:
            pred = self.model(x, training=True)
            loss, local_sum = scaled_loss(tf, self.loss_none, y, pred, gb, self.model.losses, self.replicas)
        grads = tape.gradient(loss, trainable) if trainable else []
        grads = [g if g is not None else tf.zeros_like(v) for g, v in zip(grads, trainable, strict=False)]
        bad = tf.cast(tf.logical_not(tf.math.is_finite(loss)), tf.float32)
        if grads:
            bad += tf.cast(tf.logical_not(tf.math.is_finite(tf.linalg.global_norm(grads))), tf.float32)
        return grads, pred, local_sum, bad

    def compute(self, xs: Any, ys: Any, gb: Any, i: Any) -> Any:
        import tensorflow as tf

        grads, pred, local_sum, bad = self.local_step(xs[i], ys[i], gb)
        ctx = tf.distribute.get_replica_context()
        agreed = ctx.all_reduce(self.sum_op, tf.stack([local_sum, bad]))
        if self.clip and grads:
            # Keras clips each replica's part before it all-reduces; clip the global gradient instead. Each
            # replica then hands Keras 1/R of it: its norm is below the limit, so Keras's clip does nothing.
            grads = ctx.all_reduce(self.sum_op, grads)
            grads, _ = tf.clip_by_global_norm(grads, self.clip)
            grads = [g / self.replicas for g in grads]
        return grads, pred, agreed

    def apply(self, grads: Any, ys: Any, pred: Any, i: Any) -> Any:
        import tensorflow as tf

        if grads:
            self.optimizer.apply(grads, self.trainable)
        for m in self.train_metrics:
            m.update_state(ys[i], pred)
        return tf.constant(0)

    def evaluate(self, xs: Any, ys: Any, gb: Any, i: Any) -> Any:
        import tensorflow as tf

        x, y = xs[i], ys[i]
        pred = self.model(x, training=False)
        _, local_sum = scaled_loss(tf, self.loss_none, y, pred, gb, self.model.losses, self.replicas)
        for m in self.val_metrics:
            m.update_state(y, pred)
        return tf.distribute.get_replica_context().all_reduce(self.sum_op, local_sum)


def _train_chunk(strategy: Any, replica: _ReplicaSteps) -> Callable[[Any, Any, Any], Any]:
    import tensorflow as tf

    def train_chunk(xs: Any, ys: Any, gb: Any) -> Any:
        k = tf.shape(strategy.experimental_local_results(xs)[0])[0]
        ok = tf.constant(True)
        done = tf.constant(0)
        loss_sum = tf.constant(0.0)
        for i in tf.range(k):
            grads, pred, agreed = strategy.run(replica.compute, args=(xs, ys, gb, i))
            agreed = strategy.experimental_local_results(agreed)[0]
            if agreed[1] > 0:
                ok = tf.constant(False)
                break
            strategy.run(replica.apply, args=(grads, ys, pred, i))
            done += 1
            loss_sum += agreed[0]
        # As the plain loop: one small tensor back, [ok, steps done, loss sum].
        return tf.stack([tf.cast(ok, tf.float64), tf.cast(done, tf.float64), tf.cast(loss_sum, tf.float64)])

    return train_chunk


def _eval_chunk(strategy: Any, replica: _ReplicaSteps) -> Callable[[Any, Any, Any], Any]:
    import tensorflow as tf

    def eval_chunk(xs: Any, ys: Any, gb: Any) -> Any:
        k = tf.shape(strategy.experimental_local_results(xs)[0])[0]
        total = tf.constant(0.0)
        for i in tf.range(k):
            total += strategy.experimental_local_results(strategy.run(replica.evaluate, args=(xs, ys, gb, i)))[0]
        return total

    return eval_chunk


# ------------------------------------------------------------------------------------- checkpoint state


def host_string(value: str = "") -> Any:
    """A checkpointable string kept on this host, saved under the same key as a string tf.Variable.

    MultiWorkerMirroredStrategy broadcasts every new variable's initial value from the chief with a
    collective, which cannot carry strings; the run metadata lives here instead in multi-worker runs.
    """
    import tensorflow as tf

    class HostString(tf.__internal__.tracking.Trackable):  # type: ignore[misc, name-defined]
        def __init__(self, text: str) -> None:
            self.value = text

        def assign(self, text: str) -> None:
            self.value = str(text)

        def numpy(self) -> bytes:
            return self.value.encode("utf-8")

        def _serialize_to_tensors(self) -> dict[str, Any]:
            return {"VARIABLE_VALUE": tf.constant(self.value, dtype=tf.string)}

        def _restore_from_tensors(self, restored_tensors: dict[str, Any]) -> Any:
            self.value = restored_tensors["VARIABLE_VALUE"].numpy().decode("utf-8")
            return tf.no_op()

    return HostString(value)


# ------------------------------------------------------------------------------------ worker agreement


def agree(dist: Distribution, **values: float) -> dict[str, tuple[float, float]]:
    """(min, max) of each value over all workers, in one all-gather. Every worker must call it alike."""
    if dist.workers <= 1:
        return {k: (float(v), float(v)) for k, v in values.items()}
    import tensorflow as tf

    keys = sorted(values)
    row = np.array([[float(values[k]) for k in keys]], dtype=np.float64)
    first = dist.local_replica_ids()[0]  # one row per worker; its other replicas send NaN rows

    def make(r: int) -> Any:
        return tf.constant(row if r == first else np.full_like(row, np.nan))

    if dist._gather is None:  # one tf.function, not a new trace per call
        dist._gather = tf.function(lambda value: dist.strategy.gather(value, axis=0), reduce_retracing=True)
    rows = dist._gather(dist.per_replica(make)).numpy()
    rows = rows[~np.isnan(rows).all(axis=1)]
    return {k: (float(rows[:, i].min()), float(rows[:, i].max())) for i, k in enumerate(keys)}


def agree_on_run(dist: Distribution, seed: int, seed_is_random: bool, **sizes: int) -> int:
    """Check that every worker trains the same run (data sizes, batch); return the seed they all use.

    Without --seed each worker drew its own; the smallest is taken, so all shuffle alike.
    """
    found = agree(dist, seed=seed, **sizes)
    for key, (lo, hi) in found.items():
        if key != "seed" and lo != hi:
            raise IncompatibleError(f"the workers disagree on {key.replace('_', ' ')}: from {lo:g} to {hi:g}",
                                    "give every worker the same data files and options")
    lo, hi = found["seed"]
    if lo != hi and not seed_is_random:
        raise IncompatibleError(f"the workers were given different seeds ({lo:g} to {hi:g})",
                                "pass the same --seed to every worker")
    return int(lo)


def any_worker(dist: Distribution, flag: bool) -> bool:
    """True when `flag` is true on any worker (e.g. a signal arrived somewhere). Every worker must call it."""
    if dist.workers <= 1:
        return flag
    return agree(dist, flag=1.0 if flag else 0.0)["flag"][1] > 0
