"""Batches for the loop: numpy slices through a per-epoch permutation seeded by (seed, epoch), so a
resumed run sees the same batches, gathered several steps per tf.function call (as Keras's
`steps_per_execution`) and prefetched on a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from wtool.train.data import LabelledData

# Rows gathered per tf.function call are capped at this many bytes (steps_per_execution "auto").
CHUNK_BYTES = 64 * 1024 * 1024
MAX_STEPS_PER_CALL = 64


class Batches:
    """Epoch plans as numpy slices through an index permutation seeded by (seed, epoch)."""

    def __init__(self, data: LabelledData, batch_size: int, steps_per_call: int, x_dtype: str, y_dtype: str,
                 shuffle: bool, seed: int) -> None:
        self.x = data.x
        self.y = data.y
        self.n = len(data)
        self.b = batch_size
        self.k = steps_per_call
        self.x_dtype = np.dtype(object) if x_dtype == "string" else np.dtype(x_dtype)  # texts: Python bytes
        self.y_dtype = np.dtype(y_dtype)
        self.shuffle = shuffle
        self.seed = seed
        self.full = self.n // self.b
        self.rem = self.n % self.b
        self.steps = self.full + (1 if self.rem else 0)

    def _take(self, arr: np.ndarray, order: np.ndarray | None, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
        block = arr[lo:hi] if order is None else arr[order[lo:hi]]
        return np.asarray(block, dtype=dtype)

    def order(self, epoch: int) -> np.ndarray | None:
        """The epoch's row permutation (None: rows in file order)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else None

    def chunks(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (steps, xs, ys) with xs shaped (steps, batch, ...), starting after `start_step` batches."""
        order = self.order(epoch)
        step = start_step
        while step < self.full:
            k = min(self.k, self.full - step)
            lo, hi = step * self.b, (step + k) * self.b
            xs = self._take(self.x, order, lo, hi, self.x_dtype)
            ys = self._take(self.y, order, lo, hi, self.y_dtype)
            yield k, xs.reshape(k, self.b, *xs.shape[1:]), ys.reshape(k, self.b, *ys.shape[1:])
            step += k
        if self.rem and step <= self.full:
            lo = self.full * self.b
            xs = self._take(self.x, order, lo, self.n, self.x_dtype)
            ys = self._take(self.y, order, lo, self.n, self.y_dtype)
            yield 1, xs[None], ys[None]


def prefetch(it: Iterator[Any]) -> Iterator[Any]:
    """Gather the next chunk on a thread while TensorFlow runs the current one (TF releases the GIL)."""
    box: dict[str, Any] = {}
    sentinel = object()

    def fetch() -> None:
        try:
            box["item"] = next(it, sentinel)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    while True:
        worker.join()
        if "error" in box:
            raise box["error"]
        item = box.pop("item")
        if item is sentinel:
            return
        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        yield item


# ----------------------------------------------------------------------------------------- checkpoints
