"""The Prefetcher: a reader thread that refills in bursts, and in-memory readers read on the training thread."""

from __future__ import annotations

import threading
import time

import torch

from lifelong.readers import Prefetcher
from lifelong.types import Batch


class Source:
    """A reader that counts the batches asked of it and notes the thread that asked."""

    def __init__(self, batches: int, in_memory: bool = False):
        self.batches, self.asked, self.threads = batches, 0, set()
        if in_memory:
            self.in_memory = True

    def __iter__(self):
        for i in range(self.batches):
            self.asked += 1
            self.threads.add(threading.current_thread().name)
            yield Batch(x=torch.full((2, 1), float(i)), y=torch.zeros(2, dtype=torch.long))


def settled(source: Source, expected: int, seconds: float = 2.0) -> int:
    """``source.asked`` once it reached ``expected`` (or after ``seconds``), then a little longer to see that it stays."""
    deadline = time.monotonic() + seconds
    while source.asked < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    return source.asked


def test_the_reader_thread_sleeps_until_the_queue_is_half_empty_then_refills_it():
    source = Source(100)
    stream = Prefetcher(source, depth=8)
    batches = stream.fetched()
    try:
        assert settled(source, 9) == 9  # 8 queued, and the 9th in the reader's hand, waiting for room
        taken = [next(batches) for _ in range(3)]  # 5 left: above the refill mark, the reader sleeps on
        assert settled(source, 10, seconds=0.3) == 9
        taken.append(next(batches))  # 4 left: the reader wakes and fills the queue again
        assert settled(source, 13) == 13  # the 9th and 4 more queued (8), the 13th in hand
        assert [float(f.batch.x[0, 0]) for f in taken] == [0.0, 1.0, 2.0, 3.0]
        assert [float(f.batch.x[0, 0]) for f in (next(batches) for _ in range(96))] == [float(i) for i in range(4, 100)]
        assert next(batches, None) is None
        assert source.threads == {"lifelong-reader"}
    finally:
        stream.close()


def test_an_in_memory_reader_is_read_on_the_training_thread_one_batch_at_a_time():
    source = Source(20, in_memory=True)
    stream = Prefetcher(source)
    batches = stream.fetched()
    first = next(batches)
    assert source.asked == 1 and float(first.batch.x[0, 0]) == 0.0  # nothing read ahead
    assert [float(f.batch.x[0, 0]) for f in batches] == [float(i) for i in range(1, 20)]
    assert source.threads == {threading.current_thread().name}
    stream.close()


def test_an_in_memory_reader_with_host_work_per_batch_keeps_the_thread():
    source = Source(5, in_memory=True)
    stream = Prefetcher(source, transform=lambda x: x * 2)  # a tokenizer, say: off the training thread
    assert [float(f.batch.x[0, 0]) for f in stream.fetched()] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert source.threads == {"lifelong-reader"}
    stream.close()


def test_closing_wakes_a_reader_waiting_for_room():
    source = Source(1000)
    stream = Prefetcher(source, depth=4)
    settled(source, 5)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 1.0 and not stream._thread.is_alive()
