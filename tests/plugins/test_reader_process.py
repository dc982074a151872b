"""A broker reader run in a forked child (lifelong_brokers.reader_process), against a real redis-server.

The same stream read in the child and in this process gives the same batches, positions, dead letters
(written here, before the batch that follows them), class names and test sets; the reader's failure,
the child's death and the trainer's death (kill -9) each end the other side cleanly.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from lifelong.options import validate
from lifelong.readers import DeadLetters, ReaderContext
from lifelong_brokers.reader_process import ReaderProcess
from lifelong_brokers.redis_reader import RedisOptions, redis_reader
from tests.fixtures.redis_server import pending_count, xadd

pytestmark = pytest.mark.slow  # a redis-server each, and forked readers

ROOT = Path(__file__).resolve().parents[2]


def read(url: str, tmp_path: Path, name: str, in_child: bool, **kw):
    """Every batch of stream ``s`` as group ``name`` reads it; the dead-letter count after each batch, the
    dead-letter lines, the class names and the test set of experience 0."""
    options = validate(RedisOptions, {"url": url, "stream": "s", "group": name, "num_features": 2, "num_classes": 3,
                                      "idle_timeout": 0.5, "batch_timeout": 0.2, "block_ms": 50, "test_fraction": 0.25,
                                      "reader_process": in_child, **kw}, "stream")
    letters = DeadLetters(tmp_path / f"{name}.jsonl", run="r")
    reader = redis_reader(options, ReaderContext(batch_size=4, seed=0, dead_letter=letters))
    assert isinstance(reader, ReaderProcess) == in_child
    batches, counts = [], []
    try:
        for batch in reader:
            batches.append(batch)
            counts.append(letters.mark())
    finally:
        reader.close()
    lines = [json.loads(line) for line in letters.path.read_text().splitlines()] if letters.path.exists() else []
    return batches, counts, [(d["reason"], d["offset"], d["record"]) for d in lines], reader.info().class_names, reader.test_set(0), reader


def entries(n: int) -> list:
    out = []
    for i in range(n):
        if i % 7 == 3:
            out.append('{"x": [1, "one"], "label": "a"}')  # a dead letter
        elif i % 11 == 5:
            out.append({"x": [i, -i]})  # unlabeled
        else:
            out.append({"x": [i, -i], "label": "abc"[i % 3] if i > 8 else "ab"[i % 2]})  # "c" is new at i = 11
    return out


def test_the_child_reads_what_this_process_reads(redis_server, tmp_path):
    xadd(redis_server, "s", entries(60))
    here = read(redis_server, tmp_path, "here", in_child=False)
    child = read(redis_server, tmp_path, "child", in_child=True)
    (b1, c1, d1, n1, t1, _), (b2, c2, d2, n2, t2, proxy) = here, child
    assert len(b2) == len(b1) > 5
    for a, b in zip(b1, b2):
        assert a.x.tolist() == b.x.tolist() and a.y.tolist() == b.y.tolist()
        assert (a.experience, a.source, a.start, a.stop) == (b.experience, b.source, b.start, b.stop)
        assert {**a.position, "cursor": None} == {**b.position, "cursor": None}  # the cursors name their group
    assert d2 == d1 and len(d1) == 9
    assert [m["count"] for m in c2] == [m["count"] for m in c1]  # each dead letter written before the next batch
    assert n2 == n1 == ["a", "b", "c"]
    assert t1 is not None and t2.x.tolist() == t1.x.tolist() and t2.y.tolist() == t1.y.tolist()  # after close, too
    assert proxy.counts(b2[-1].position) == here[5].counts(b1[-1].position)
    assert pending_count(redis_server, "s", "child") == 60  # nothing acknowledged without a commit


def records(n: int) -> list[dict]:
    return [{"x": [i, -i], "label": "a"} for i in range(n)]


def one_class_reader(url: str, tmp_path: Path, idle_timeout: float):
    """A reader of stream ``s`` with one class, batch 4, in its child process (the default)."""
    options = validate(RedisOptions, {"url": url, "stream": "s", "num_features": 2, "classes": ["a"],
                                      "idle_timeout": idle_timeout, "batch_timeout": 0.2, "block_ms": 50}, "stream")
    return redis_reader(options, ReaderContext(batch_size=4, seed=0, dead_letter=DeadLetters(tmp_path / "d.jsonl")))


def test_a_commit_goes_through_the_child(redis_server, tmp_path):
    xadd(redis_server, "s", records(12))
    reader = one_class_reader(redis_server, tmp_path, idle_timeout=0.5)
    stream = iter(reader)
    first, second = next(stream), next(stream)
    reader.commit(second.position)
    assert pending_count(redis_server, "s", "lifelong") == 4
    reader.commit(first.position)  # an older position: nothing moves back
    assert pending_count(redis_server, "s", "lifelong") == 4
    reader.close()
    reader.close()  # twice: nothing to do
    assert first.x[:, 0].tolist() == [0, 1, 2, 3]


def test_the_reader_s_error_is_raised_here_with_its_message(redis_server, tmp_path):
    xadd(redis_server, "s", records(8))
    reader = one_class_reader(redis_server, tmp_path, idle_timeout=30.0)
    stream = iter(reader)
    next(stream), next(stream)
    redis.Redis.from_url(redis_server, socket_timeout=10).delete("s")  # the stream and its group are gone
    with pytest.raises(RuntimeError, match="^redis:s: .*no longer exists"):
        next(stream)
    reader.close()


def test_a_dead_child_is_an_error_that_names_how_it_ended(redis_server, tmp_path):
    xadd(redis_server, "s", records(4))
    reader = one_class_reader(redis_server, tmp_path, idle_timeout=30.0)
    stream = iter(reader)
    assert len(next(stream)) == 4
    os.kill(reader.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"redis:s: the reader process ended unexpectedly \(killed by signal 9\)"):
        next(stream)
    assert time.monotonic() - started < 5
    with pytest.raises(RuntimeError, match="ended unexpectedly"):
        reader.commit({"cursor": {}})
    reader.close()  # the child is gone: nothing to wait for


TRAINER = textwrap.dedent(
    """
    import sys, time
    from lifelong.readers import DeadLetters, ReaderContext
    from lifelong_brokers.redis_reader import RedisOptions, redis_reader
    options = RedisOptions(url=sys.argv[1], stream="s", num_features=2, classes=["a"], idle_timeout=60.0, block_ms=50)
    reader = redis_reader(options, ReaderContext(batch_size=2, seed=0, dead_letter=DeadLetters(sys.argv[2])))
    stream = iter(reader)
    next(stream)
    print(reader.pid, flush=True)
    time.sleep(120)
    """
)


def test_the_child_dies_with_the_trainer(redis_server, tmp_path):
    xadd(redis_server, "s", records(4))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, redis_server, str(tmp_path / "d.jsonl")], env=env,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # the child's pid, printed once the first batch came through it (bounded: the test never hangs)
        ready, _, _ = select.select([trainer.stdout], [], [], 60)
        assert ready, "the trainer printed nothing within 60 s"
        child = int(trainer.stdout.readline())
        assert alive(child)
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(child):
            if time.monotonic() > deadline:
                pytest.fail(f"the reader process {child} outlived its trainer by 5 s")
            time.sleep(0.05)
    finally:
        try:
            os.killpg(trainer.pid, signal.SIGKILL)  # the trainer's session: the child too, if the test failed
        except ProcessLookupError:
            pass
        trainer.wait(timeout=10)


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie (an orphan waits for init to reap it, which a container may never do)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
