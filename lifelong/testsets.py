"""The held-out sets of a run: asked of the reader once, prepared once, kept on the device, evaluated.

Each set is also known by its identity, the SHA-256 of its tensors, so a checkpoint refers to it
instead of copying it: the checkpoint writer stores every set once, content-addressed, and a
resumed run reads them back from there (a streamed reader does not hand out again the test sets of
experiences it passed before the seek).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from lifelong.checkpoint import identity
from lifelong.learner import prepare
from lifelong.objective import objective_of
from lifelong.readers import Reader
from lifelong.types import Batch


def as_tensors(data: Batch) -> dict[str, torch.Tensor]:
    tensors = {"x": data.x, "y": data.y}
    if data.task is not None:
        tensors["task"] = data.task
    return tensors


class TestSets(Mapping):
    """Held-out data per experience id, prepared with the model's ``prepare`` and kept on the device.

    A read-only mapping of experience id to its held-out Batch.
    """

    __test__ = False  # not a pytest test class

    def __getitem__(self, exp: int) -> Batch:
        return self.sets[exp]

    def __iter__(self) -> Iterator[int]:
        return iter(self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def __init__(
        self, reader: Reader, model: torch.nn.Module, device: torch.device, eval_batch_size: int, listed: list[int], keep: int = 0
    ):
        self.reader = reader
        self.model = model
        self.device = device
        self.eval_batch_size = eval_batch_size
        self.listed = list(listed)  # experiences the reader listed upfront: their sets exist from the start
        self.sets: dict[int, Batch] = {}
        self.ids: dict[int, str] = {}
        self._unsaved: set[int] = set()
        self.keep = keep  # evaluate the newest ``keep`` sets only (0: all), so an unbounded stream's evaluation stays bounded
        self.dropped: set[int] = set()  # experiences whose sets were dropped for ``keep``: never asked again
        self.objective = objective_of(model)  # accuracy, or a detector's ROC-AUC and PR-AUC

    def refresh(self, columns: list[int], streaming: int | None) -> None:
        """Ask the reader for the sets of ``columns`` not known yet.

        A streamed reader's test set appears when its thread passes the experience, which may be
        ahead of training; asking for the experience still in hand would make the matrix depend on
        thread timing, so only experiences the reader listed upfront are asked that early.
        """
        for exp in list(columns):
            if exp in self.sets or exp in self.dropped or (exp == streaming and exp not in self.listed):
                continue
            data = self.reader.test_set(exp)
            if data is not None:
                self._add(exp, self._prepared(data))

    def _add(self, exp: int, data: Batch) -> None:
        self.sets[exp] = data
        self.ids[exp] = identity(as_tensors(data))
        self._unsaved.add(exp)
        while self.keep and len(self.sets) > self.keep:
            oldest = next(iter(self.sets))  # dicts keep insertion order: the set known first goes first
            del self.sets[oldest], self.ids[oldest]
            self._unsaved.discard(oldest)
            self.dropped.add(oldest)

    def _prepared(self, data: Batch) -> Batch:
        """A test set through the model's ``prepare_host`` (on the CPU) and ``prepare`` (on the device)
        once, kept on the device for every evaluation: the same two steps as the training stream's
        batches (``prepare_host`` runs on the reader thread there; see ``register_models``)."""
        host = getattr(self.model, "prepare_host", None)
        if host is not None and len(data) > 0:
            bs = self.eval_batch_size
            with torch.no_grad():
                x = torch.cat([host(data.x[i : i + bs]) for i in range(0, len(data), bs)])
            data = Batch(x=x, y=data.y, task=data.task)
        if getattr(self.model, "prepare", None) is None or len(data) == 0:
            return data
        bs = self.eval_batch_size
        chunks = [
            Batch(x=prepare(self.model, data.x[i : i + bs].to(self.device)), y=data.y[i : i + bs].to(self.device))
            for i in range(0, len(data), bs)
        ]
        task = None if data.task is None else data.task.to(self.device)
        return Batch(x=torch.cat([c.x for c in chunks]), y=torch.cat([c.y for c in chunks]), task=task)

    def evaluate(self, columns: list[int], streaming: int | None) -> dict[str, dict[int, float]]:
        """Every metric of the objective on every known set: ``{metric: {experience: value}}``."""
        self.refresh(columns, streaming)
        return self.measure(list(self.sets))

    def measure(self, experiences: list[int]) -> dict[str, dict[int, float]]:
        """Every metric on the known sets among ``experiences``, without asking the reader; a value
        that is undefined (a detector's set holding one class only) is left out."""
        rows: dict[str, dict[int, float]] = {name: {} for name in self.objective.metrics}
        for exp in experiences:
            if exp in self.sets:
                for name, value in self.objective.measure(self.model, self.sets[exp], self.device, self.eval_batch_size).items():
                    if value is not None:
                        rows[name][exp] = value
        return rows

    def score(self, experiences: list[int]) -> dict[int, float]:
        """The objective's headline metric (accuracy, ROC-AUC) on the known sets among ``experiences``."""
        return self.measure(experiences)[self.objective.metric]

    # -- checkpoints ----------------------------------------------------------------------------------
    def state(self) -> dict[str, str | None]:
        """Each set's identity by experience id; None for a set dropped for ``keep``."""
        return {**{str(exp): None for exp in self.dropped}, **{str(exp): digest for exp, digest in self.ids.items()}}

    def unsaved(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPU copies of the sets no checkpoint has stored yet, by identity; they count as stored now."""
        out = {self.ids[exp]: {k: v.detach().to("cpu", copy=True) for k, v in as_tensors(self.sets[exp]).items()} for exp in self._unsaved}
        self._unsaved.clear()
        return out

    def restore(self, state: dict[str, str], load: Any) -> None:
        """The sets a checkpoint refers to; ``load(digest)`` reads one from the checkpoint's store."""
        for exp, digest in state.items():
            if digest is None:
                self.dropped.add(int(exp))
                continue
            tensors = load(digest)
            self.sets[int(exp)] = Batch(x=tensors["x"], y=tensors["y"], task=tensors.get("task"))
            self.ids[int(exp)] = digest
