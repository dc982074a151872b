"""A single worker thread for slow work (MLflow calls, checkpoint writes) off the training thread."""

from __future__ import annotations

import queue
import threading
import traceback
from typing import Any, Callable


class BackgroundWriter:
    """Runs submitted calls in order on one daemon thread; ``drain`` waits for all of them.

    Errors do not stop the worker: each is kept with its traceback and ``drain`` returns them, so
    a failed upload never kills training and is still reported at the end.
    """

    def __init__(self, name: str):
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple, dict] | None] = queue.Queue()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._queue.put((fn, args, kwargs))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args, kwargs = item
                try:
                    fn(*args, **kwargs)
                except Exception:  # noqa: BLE001 - reported by drain()
                    self.errors.append(traceback.format_exc())
            finally:
                self._queue.task_done()

    def busy(self) -> bool:
        """Whether a submitted call has not finished yet."""
        return self._queue.unfinished_tasks > 0

    def drain(self) -> list[str]:
        """Wait until every submitted call has run; return the errors so far."""
        self._queue.join()
        return list(self.errors)

    def close(self) -> list[str]:
        errors = self.drain()
        self._queue.put(None)
        self._thread.join()
        return errors
