"""What PathNet keeps of the stream: the current task's recent samples, and a few of every finished task.

:class:`TaskMemory` holds the last ``capacity`` first-pass samples of the task in training, on the
device, written with one ``index_copy_`` per batch (a ring: no host read). The winning path
settles on it at the boundary. :class:`Exemplars` holds ``per_task`` samples of each finished task
with the task's index, for the task classifier; it grows once per boundary.
"""

from __future__ import annotations

from typing import Any

import torch


class TaskMemory:
    def __init__(self, capacity: int, device: torch.device):
        self.capacity = capacity
        self.device = device
        self.x: torch.Tensor | None = None  # allocated at the first write, in the shape of what arrives
        self.y = torch.zeros(capacity, dtype=torch.long, device=device)
        self.seen = 0  # samples offered in this task (a host int: batch sizes are known on the host)

    @property
    def filled(self) -> int:
        return min(self.seen, self.capacity)

    def offer(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        if n > self.capacity:  # only the batch's last samples can stay
            x, y, self.seen = x[-self.capacity :], y[-self.capacity :], self.seen + n - self.capacity
            n = self.capacity
        if self.x is None:
            self.x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype, device=self.device)
        slots = torch.arange(self.seen, self.seen + n, device=self.device) % self.capacity
        self.x.index_copy_(0, slots, x.detach().to(self.x.dtype))
        self.y.index_copy_(0, slots, y)
        self.seen += n

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x.index_select(0, index), self.y.index_select(0, index)

    def clear(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict[str, Any]:
        n = self.filled
        # in ring order from the oldest, so a reload continues the ring from 0 with the same content
        order = (torch.arange(n, device=self.device) + (self.seen - n)) % self.capacity
        x = self.x.index_select(0, order) if self.x is not None else torch.zeros(0)
        return {"x": x, "y": self.y.index_select(0, order), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = 0
        n = len(state["y"])
        if n:
            self.offer(state["x"].to(self.device), state["y"].to(self.device))
        self.seen = int(state["seen"])
        if self.seen > n:  # full: the ring's next write goes where the oldest sample is
            self.x, self.y = self.x.roll(self.seen % self.capacity, 0), self.y.roll(self.seen % self.capacity, 0)


class Exemplars:
    """``per_task`` samples of every finished task, with the task's index."""

    def __init__(self, per_task: int, device: torch.device):
        self.per_task = per_task
        self.device = device
        self.x: torch.Tensor | None = None
        self.task = torch.zeros(0, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.task)

    def add(self, task: int, memory: TaskMemory, generator: torch.Generator) -> None:
        """Keep a uniform choice of ``per_task`` of ``memory``'s samples as ``task``'s."""
        n = memory.filled
        if n == 0:
            return
        pick = torch.randperm(n, generator=generator, device=self.device)[: self.per_task]
        x, _ = memory.gather(pick)
        self.x = x if self.x is None else torch.cat([self.x, x])
        self.task = torch.cat([self.task, torch.full((len(pick),), task, dtype=torch.long, device=self.device)])

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x if self.x is not None else torch.zeros(0), "task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task = state["task"].to(self.device)
        self.x = state["x"].to(self.device) if len(self.task) else None
