"""Dynamic micro-batching: concurrent requests scored together in one forward pass.

Requests arrive on the event loop already checked against the contract (a bad request is refused
before it gets here, so it can never fail a batch). :meth:`MicroBatcher.submit` queues their rows;
one collector task takes what is queued, up to ``max_batch`` rows, and runs the forward pass on a
single worker thread (torch releases the GIL, so the loop keeps parsing requests meanwhile); each
request gets its own slice of the answer.

When to cut a batch (Triton's and BentoML's bounded queue delay, made adaptive):

- while the worker runs a batch, new requests simply queue; they form the next batch as soon as
  the worker is free, with no added wait;
- when the worker is free, the collector waits for more rows only while requests are still being
  read and checked (:meth:`MicroBatcher.arriving`), and never longer than ``max_wait`` after the
  oldest queued request arrived. A lone client therefore pays no batching delay at all.

A request is scored by the version it was checked against (``loaded``): a batch only holds rows of
one version, so a swap never hands a model rows shaped for another, and batches already running
finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong_mlflow.contract import Rows


@dataclass
class _Queued:
    rows: Rows
    loaded: Any  # the Loaded version the rows were checked against
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Gathers queued rows into forward passes; ``metrics`` (optional) observes batch sizes."""

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.002, metrics: Any = None):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch} and {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self._queue: deque[_Queued] = deque()
        self._queued_rows = 0
        self._arriving = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifelong-forward")

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="lifelong-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queued in self._queue:
            if not queued.future.done():
                queued.future.set_exception(RuntimeError("the server is stopping"))
        self._worker.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request being read and checked: the collector may wait (bounded) for its rows."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._wakeup.set()

    def submit(self, rows: Rows, loaded: Any) -> asyncio.Future:
        """Queue checked rows for ``loaded``'s model; the future gets their (N, classes) probabilities
        (a detector's: their (N,) scores)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Queued(rows, loaded, future, loop.time()))
        self._queued_rows += len(rows)
        self._wakeup.set()
        return future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._queue[0].arrived + self.max_wait_s
            while self._arriving > 0 and self._queued_rows < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            try:
                probabilities = await loop.run_in_executor(self._worker, _forward, batch)
            except Exception as exc:  # the forward pass failed: every request of the batch gets the error
                for queued in batch:
                    if not queued.future.done():
                        queued.future.set_exception(exc)
                continue
            start = 0
            for queued in batch:
                stop = start + len(queued.rows)
                if not queued.future.done():  # a client that went away cancelled its future
                    queued.future.set_result(probabilities[start:stop])
                start = stop
            if self.metrics is not None:
                self.metrics.batch_rows.observe(start)
                self.metrics.batch_requests.observe(len(batch))

    def _take(self) -> list[_Queued]:
        """The oldest request and, in arrival order, the others checked against the same version that
        fit in ``max_batch`` rows (a single request larger than that is scored alone, never split)."""
        first = self._queue.popleft()
        batch, rows, kept = [first], len(first.rows), deque()
        while self._queue:
            queued = self._queue.popleft()
            if queued.loaded is first.loaded and rows + len(queued.rows) <= self.max_batch:
                batch.append(queued)
                rows += len(queued.rows)
            else:
                kept.append(queued)
                if rows >= self.max_batch:
                    break
        kept.extend(self._queue)
        self._queue = kept
        self._queued_rows -= rows
        return batch


def _forward(batch: list[_Queued]) -> np.ndarray:
    """On the worker thread: one forward pass over the batch's rows, in order."""
    scorer = batch[0].loaded.scorer
    if len(batch) == 1:
        return scorer.outputs(batch[0].rows)
    x = np.concatenate([q.rows.x for q in batch])
    task = None if batch[0].rows.task is None else np.concatenate([q.rows.task for q in batch])
    return scorer.outputs(Rows(x, task))
