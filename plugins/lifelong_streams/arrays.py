"""A reader over in-memory arrays grouped by experience: the base of benchmarks, the npz reader and the anomaly readers."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lifelong.types import Batch, StreamInfo


CHUNK = 64  # batches made at a time (views of the arrays: no data is copied)


class ArrayStream:
    """Streams each experience's training arrays in order, in minibatches; holds their test sets.

    ``train`` and ``test`` map experience id to ``(x, y, task)`` with ``task`` None or an int
    array; ``offsets`` maps experience id to each training sample's offset in its source (so a
    batch can name the records it came from).

    Resumable: a batch's ``position`` is ``{"record": n}``, the number of training records streamed
    up to and including it, and ``seek`` restarts the stream right after it.

    ``in_memory``: a batch is a slice of tensors loaded before the run, with no I/O and a few
    microseconds of Python, so the kernel reads it on the training thread when training on the CPU
    (:class:`lifelong.readers.Prefetcher`).
    """

    in_memory = True

    def __init__(
        self,
        info: StreamInfo,
        train: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
        test: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
        batch_size: int,
        source: str,
        offsets: dict[int, np.ndarray] | None = None,
    ):
        self._info = info
        self._train = {e: _tensors(*arrays) for e, arrays in train.items()}
        self._test = {e: _tensors(*arrays) for e, arrays in test.items()}
        self._offsets = offsets
        self.batch_size = batch_size
        self.source = source
        self._skip = 0
        if info.num_batches is None:
            info.num_batches = sum(-(-len(y) // batch_size) for _, y, _ in self._train.values())

    def info(self) -> StreamInfo:
        return self._info

    def seek(self, position: dict) -> None:
        record = position.get("record") if isinstance(position, dict) else None
        if not isinstance(record, int) or record < 0:
            raise ValueError(f"not a position of this stream: {position!r}")
        self._skip = record

    def __iter__(self) -> Iterator[Batch]:
        bs = self.batch_size
        skip, self._skip = self._skip, 0
        streamed = 0
        for exp, (x, y, task) in self._train.items():
            offsets = self._offsets[exp] if self._offsets is not None else None
            first = 0
            if skip:
                first = min(skip, len(y))
                skip -= first
                streamed += first
                if first < len(y) and first % bs:
                    raise ValueError(f"record {streamed} is not a batch boundary of this stream (batch size {bs})")
            # Batches are made CHUNK at a time: one batch between two training steps took 4x as long as
            # in a row (the step leaves the caches cold), 30 µs of a small model's 700 µs step.
            for chunk in range(first, len(y), bs * CHUNK):
                batches = []
                for start in range(chunk, min(chunk + bs * CHUNK, len(y)), bs):
                    stop = min(start + bs, len(y))
                    streamed += stop - start
                    batches.append(
                        Batch(
                            x=x[start:stop],
                            y=y[start:stop],
                            experience=exp,
                            task=None if task is None else task[start:stop],
                            source=self.source,
                            start=int(offsets[start:stop].min()) if offsets is not None else start,
                            stop=int(offsets[start:stop].max()) + 1 if offsets is not None else stop,
                            position={"record": streamed},
                        )
                    )
                yield from batches

    def test_set(self, experience: int) -> Batch | None:
        data = self._test.get(experience)
        if data is None:
            return None
        x, y, task = data
        return Batch(x=x, y=y, experience=experience, task=task, source=self.source)


def _tensors(x: np.ndarray, y: np.ndarray, task: np.ndarray | None):
    return (
        torch.as_tensor(_canonical(x), dtype=torch.float32),
        torch.as_tensor(np.asarray(y), dtype=torch.long),
        None if task is None else torch.as_tensor(np.asarray(task), dtype=torch.long),
    )


def _canonical(x: np.ndarray) -> np.ndarray:
    """``x`` in C order with the usual strides, copied only when it has other ones.

    np.ascontiguousarray is not enough: numpy counts an array as contiguous whatever the stride of
    a size-1 axis (a transposed window of one channel has shape (N, 128, 1) and strides
    (512, 4, 512)), torch keeps such a stride, and a byte view of the tensor then fails.
    """
    x = np.ascontiguousarray(x)
    expected, step = [], x.itemsize
    for size in reversed(x.shape):
        expected.append(step)
        step *= size
    return x if x.strides == tuple(reversed(expected)) else x.copy()
