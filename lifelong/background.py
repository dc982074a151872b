"""A single worker thread for slow work (MLflow calls, checkpoint writes) off the training thread."""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    """Runs submitted calls in order on one daemon thread; ``drain`` waits for all of them.

    Errors do not stop the worker: each is kept with its traceback and ``drain`` returns them, so
    a failed upload never kills training and is still reported at the end.

    A caller that must not wait forever (a store that stopped answering) closes it with a
    ``timeout``: past it the writer is **abandoned**: the calls not started yet are dropped (counted
    in ``dropped``, with those submitted later, which are ignored), and the call in progress is left
    to end on the daemon thread, which never keeps the process alive.
    """

    def __init__(self, name: str):
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple, dict] | None] = queue.Queue()
        self.errors: list[str] = []
        self.abandoned = False
        self.dropped = 0
        self._running = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self.abandoned:
            self.dropped += 1
            return
        self._queue.put((fn, args, kwargs))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.abandoned:
                    continue  # counted in dropped by abandon()
                fn, args, kwargs = item
                self._running = True
                try:
                    fn(*args, **kwargs)
                except Exception:  # noqa: BLE001 - reported by drain()
                    self.errors.append(traceback.format_exc())
                finally:
                    self._running = False
            finally:
                self._queue.task_done()

    def busy(self) -> bool:
        """Whether a submitted call has not finished yet."""
        return self._queue.unfinished_tasks > 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted call has run, for at most ``timeout`` seconds; whether they all have."""
        if timeout is None:
            self._queue.join()
            return True
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def drain(self) -> list[str]:
        """Wait until every submitted call has run; return the errors so far."""
        self._queue.join()
        return list(self.errors)

    def abandon(self) -> None:
        """Stop waiting for this writer: drop what is queued, ignore what comes; the running call ends on its own."""
        if not self.abandoned:
            with self._queue.mutex:
                self.dropped += max(self._queue.unfinished_tasks - self._running, 0)
                self.abandoned = True
            self._queue.put(None)

    def close(self, timeout: float | None = None) -> list[str]:
        """Run every submitted call, stop the thread and return the errors.

        With ``timeout``: once it has passed the writer is abandoned (see the class docstring) and
        the errors so far are returned; ``abandoned`` tells which happened.
        """
        if self.abandoned or not self.wait(timeout):
            self.abandon()
            return list(self.errors)
        self._queue.put(None)
        self._thread.join()
        return list(self.errors)
