"""Where one generation ends: at a change of experience id, or every N batches or seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lifelong.types import Batch


class ExperienceChange:
    """A boundary wherever the reader's experience id changes (the benchmark setting)."""

    def __init__(self, options=None):
        self._last: int | None = None

    def before_batch(self, batch: Batch) -> bool:
        changed = self._last is not None and batch.experience != self._last
        self._last = batch.experience
        return changed

    def state_dict(self) -> dict:
        """The last batch's experience id (None before the first batch); JSON."""
        return {"last": self._last}

    def load_state_dict(self, state: dict) -> None:
        last = state["last"]
        self._last = None if last is None else int(last)


@dataclass
class WindowOptions:
    batches: int = field(default=100, metadata={"help": "batches per generation; 0: no batch limit (set seconds)"})
    seconds: float = field(
        default=0.0,
        metadata={"help": "seconds per generation (monotonic clock), checked as each batch arrives; 0: no time limit"},
    )

    def check(self) -> None:
        # seconds is finite already (lifelong.options refuses NaN and infinity)
        if self.batches < 0 or self.seconds < 0:
            raise ValueError(f"batches and seconds must be 0 or more, got {self.batches} and {self.seconds}")
        if not self.batches and not self.seconds:
            raise ValueError("set batches or seconds (or both: whichever comes first ends the window)")


class Window:
    """A boundary every ``batches`` batches or ``seconds`` seconds, whichever comes first (task-free streams).

    A window starts with its first batch. Time is read from the monotonic clock when a batch
    arrives (``before_batch``), so the boundary falls before the first batch that arrives at least
    ``seconds`` after the window started: a stream that goes quiet ends its window when it
    resumes, not while nothing arrives (a generation needs a batch to be trained on anyway). A
    time boundary restarts the batch count too.

    ``state_dict`` carries the current window's batch count and the seconds it has lasted (never a
    clock reading, which means nothing in another process). ``load_state_dict`` starts the window
    that many seconds before the moment it is called (right before the resumed run streams), so
    the window goes on counting the time the run is up, and the time it was down does not count.
    Batch windows resume exactly; time windows as exactly as a clock allows.

    >>> window = Window(WindowOptions(batches=0, seconds=60.0))
    >>> now = [0.0]
    >>> window.clock = lambda: now[0]
    >>> [window.before_batch(None) for now[0] in (0.0, 30.0, 59.9, 60.0, 61.0)]
    [False, False, False, True, False]
    """

    def __init__(self, options: WindowOptions):
        self.batches = options.batches
        self.seconds = options.seconds
        self.clock = time.monotonic  # swapped in tests
        self._in_window = 0  # batches in the current window
        self._started = 0.0  # clock reading at the window's start (meaningful in this process only)

    def before_batch(self, batch: Batch) -> bool:
        now = self.clock() if self.seconds else 0.0
        boundary = self._in_window > 0 and (
            (self.batches > 0 and self._in_window >= self.batches)
            or (self.seconds > 0 and now - self._started >= self.seconds)
        )
        if boundary or not self._in_window:
            self._in_window, self._started = 0, now
        self._in_window += 1
        return boundary

    def state_dict(self) -> dict:
        """The current window's batches and the seconds it has lasted so far; JSON."""
        elapsed = max(self.clock() - self._started, 0.0) if self.seconds and self._in_window else 0.0
        return {"in_window": self._in_window, "elapsed": elapsed}

    def load_state_dict(self, state: dict) -> None:
        if "in_window" in state:
            self._in_window = int(state["in_window"])
            elapsed = float(state.get("elapsed", 0.0))
        else:  # a checkpoint from before time windows: {"seen": batches since the start}
            seen = int(state["seen"])
            self._in_window = (seen - 1) % self.batches + 1 if seen and self.batches else seen
            elapsed = 0.0
        self._started = (self.clock() if self.seconds else 0.0) - elapsed
