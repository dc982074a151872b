"""Where one generation ends: at a change of experience id, or every N batches."""

from __future__ import annotations

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
    batches: int = field(default=100, metadata={"help": "batches per generation"})

    def check(self) -> None:
        if self.batches < 1:
            raise ValueError(f"batches must be at least 1, got {self.batches}")


class Window:
    """A boundary every ``batches`` batches, whatever the stream says (task-free streams)."""

    def __init__(self, options: WindowOptions):
        self.batches = options.batches
        self._seen = 0

    def before_batch(self, batch: Batch) -> bool:
        boundary = self._seen > 0 and self._seen % self.batches == 0
        self._seen += 1
        return boundary

    def state_dict(self) -> dict:
        """Batches seen so far; JSON."""
        return {"seen": self._seen}

    def load_state_dict(self, state: dict) -> None:
        self._seen = int(state["seen"])
