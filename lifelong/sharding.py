"""Each rank's share of an ordered stream: of every ``size`` consecutive batches, the rank's own.

A file or benchmark reader is deterministic: every rank can read the same stream in the same order
(same seed) and keep one batch of each group of ``size``, so N ranks of batch B train, step for
step, on exactly the samples one process of batch N × B would (see :mod:`lifelong.distributed`).
Every rank decodes the whole stream and keeps its share; that costs nothing for arrays (npz, the
benchmarks) and N times the parsing for csv, which :mod:`lifelong.readers`' prefetch thread does
beside training.

A group never spans two experiences (a batch never does): the group an experience ends on may be
short, and a rank without a batch in it receives an *empty* batch of the experience, so every rank
takes a step, and sees every boundary, at the same time. Every batch of a group carries the
position of the group's last batch: resuming there starts every rank at the next group.
"""

from __future__ import annotations

from typing import Any, Iterator

from lifelong.types import Batch, StreamInfo


class Sharded:
    """Rank ``rank`` of ``size``'s share of ``reader``; every other member (``seek``, ``x_dtype``…) is the reader's own."""

    def __init__(self, reader: Any, rank: int, size: int):
        self.reader = reader
        self.rank = rank
        self.size = size

    def info(self) -> StreamInfo:
        info = self.reader.info()
        if info.num_batches:
            info.num_batches = -(-info.num_batches // self.size)  # at least: short groups add steps
        return info

    def test_set(self, experience: int) -> Batch | None:
        return self.reader.test_set(experience)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)

    def __iter__(self) -> Iterator[Batch]:
        group: list[Batch] = []
        for batch in self.reader:
            if group and batch.experience != group[0].experience:
                yield self._take(group)
                group = []
            group.append(batch)
            if len(group) == self.size:
                yield self._take(group)
                group = []
        if group:
            yield self._take(group)

    def _take(self, group: list[Batch]) -> Batch:
        end = group[-1].position
        if self.rank < len(group):
            mine = group[self.rank]
        else:
            last = group[-1]
            mine = Batch(
                x=last.x[:0], y=last.y[:0], experience=last.experience, task=None if last.task is None else last.task[:0],
                source=last.source, start=last.stop, stop=last.stop,
            )
        mine.position = end
        return mine
