"""The stream since the last boundary: what the next generation will have been trained on."""

from __future__ import annotations

from typing import Any

from lifelong import checkpoint
from lifelong.types import Batch, Experience


class Span:
    """Counts, experience ids and source offsets of the batches since the last boundary.

    With ``keep`` (``learner.epochs > 1``) the batches themselves are kept for the extra epochs at
    the boundary, and a checkpoint carries them.
    """

    def __init__(self, keep: bool):
        self.keep = keep
        self.batches: list[Batch] = []
        self.experience_ids: list[int] = []
        self.count = 0
        self.samples = 0
        self.offsets: dict[str, list[int]] = {}

    def add(self, batch: Batch) -> None:
        if self.keep:
            self.batches.append(batch)
        if batch.experience not in self.experience_ids:
            self.experience_ids.append(batch.experience)
        self.count += 1
        self.samples += len(batch)
        first_last = self.offsets.setdefault(batch.source, [batch.start, batch.stop])
        first_last[0] = min(first_last[0], batch.start)
        first_last[1] = max(first_last[1], batch.stop)

    def experience(self, index: int) -> Experience:
        return Experience(
            index=index,
            experience_ids=list(self.experience_ids),
            batches=self.count,
            samples=self.samples,
            offsets=self.offsets,
        )

    def state(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "experience_ids": list(self.experience_ids),
            "count": self.count,
            "samples": self.samples,
            "offsets": {k: list(v) for k, v in self.offsets.items()},
            "batches": [
                {
                    "x": checkpoint.to_cpu(b.x),
                    "y": checkpoint.to_cpu(b.y),
                    "task": None if b.task is None else checkpoint.to_cpu(b.task),
                    "experience": b.experience,
                    "source": b.source,
                    "start": b.start,
                    "stop": b.stop,
                }
                for b in self.batches
            ],
        }

    @staticmethod
    def from_state(state: dict[str, Any]) -> Span:
        span = Span(keep=bool(state["keep"]))
        span.experience_ids = [int(e) for e in state["experience_ids"]]
        span.count, span.samples = int(state["count"]), int(state["samples"])
        span.offsets = {k: [int(a), int(b)] for k, (a, b) in state["offsets"].items()}
        span.batches = [
            Batch(x=b["x"], y=b["y"], task=b["task"], experience=int(b["experience"]), source=b["source"], start=int(b["start"]), stop=int(b["stop"]))
            for b in state["batches"]
        ]
        return span
