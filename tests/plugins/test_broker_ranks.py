"""Data-parallel ranks on one consumer group (``lifelong run --nproc 2``), Redis Streams and Kafka: every
valid record trained exactly once across the ranks, every invalid one dead-lettered once, everything
acknowledged (Redis) or committed (Kafka).

Judged on the final checkpoint, as the single-process exactly-once tests are
(:mod:`tests.fixtures.broker_session`): each rank's ``key-log`` state is in the checkpoint's ``ranks``;
the union over ranks must hold every valid key once and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from lifelong import checkpoint
from tests.fixtures.broker_session import Trainer, as_messages, dead_letter_records, digits_stream, pipeline_toml
from tests.fixtures.kafka_broker import committed_offsets, create_topic, end_offsets, produce
from tests.fixtures.key_log import read_log
from tests.fixtures.redis_server import pending_count, xadd

pytestmark = pytest.mark.slow


def rank_keys(directory: Path) -> list[Counter]:
    ranks = checkpoint.latest(directory).state["ranks"]
    return [Counter(entry["strategies"]["key-log"]["keys"].tolist()) for entry in ranks]


def dead_letters(tmp_path: Path) -> Counter:
    return Counter(r for path in sorted(tmp_path.glob("dead_letters*.jsonl")) for r in dead_letter_records(path))


def start(tmp_path: Path, redis_server: str, name: str, *extra: str) -> Trainer:
    return Trainer(["run", "--nproc", "2", str(tmp_path / "pipeline.toml"), "--summary", str(tmp_path / f"{name}.json"), *extra], tmp_path, name)


def prepare(tmp_path: Path, redis_server: str, seed: int):
    data = digits_stream(records=1797, invalid=20, unlabeled=10, seed=seed)
    xadd(redis_server, "digits", data.messages)
    directory = tmp_path / "checkpoints"
    (tmp_path / "pipeline.toml").write_text(
        pipeline_toml("redis", redis_server, "digits", directory, batch_size=16, every_batches=5, idle_timeout=4.0)
    )
    return data, directory


def assert_exactly_once(data, directory: Path, tmp_path: Path, redis_server: str | None = None) -> list[Counter]:
    per_rank = rank_keys(directory)
    trained = sum(per_rank, Counter())
    assert sorted(trained) == sorted(data.valid), "lost or unexpected keys"
    assert not [k for k, n in trained.items() if n > 1], "keys trained twice"
    dead = dead_letters(tmp_path)
    assert sorted(dead) == sorted(data.invalid) and max(dead.values()) == 1
    if redis_server is not None:
        assert pending_count(redis_server, "digits", "lifelong-test") == 0  # every entry acknowledged
    return per_rank


def test_two_ranks_share_one_group_and_train_every_entry_exactly_once(tmp_path, redis_server):
    data, directory = prepare(tmp_path, redis_server, seed=3)
    trainer = start(tmp_path, redis_server, "ranks")
    assert trainer.wait(timeout=300) == 0, trainer.stderr()
    per_rank = assert_exactly_once(data, directory, tmp_path, redis_server)
    # both ranks consumed: the group handed each its own entries
    assert all(sum(keys.values()) > len(data.valid) // 5 for keys in per_rank), [sum(k.values()) for k in per_rank]
    summary = json.loads((tmp_path / "ranks.json").read_text())
    assert summary["ranks"] == 2
    assert summary["samples_seen"] == len(data.valid)


def kill_rank_1_after(trainer: Trainer, directory: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while not any(c.name > checkpoint.step_name(step) for c in directory.glob("ckpt-*")):
        assert trainer.popen.poll() is None and time.monotonic() < deadline, trainer.stderr()
        time.sleep(0.05)
    children = Path(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read_text().split()
    ranks = {int(e.split(b"=", 1)[1]): int(pid) for pid in children
             for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e.startswith(b"RANK=")}
    os.kill(ranks[1], signal.SIGKILL)
    assert trainer.wait(timeout=120) != 0


def test_a_rank_killed_mid_stream_then_resumed_trains_every_entry_exactly_once(tmp_path, redis_server):
    data, directory = prepare(tmp_path, redis_server, seed=4)
    kill_rank_1_after(start(tmp_path, redis_server, "killed"), directory, step=15)
    resumed = start(tmp_path, redis_server, "resumed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr()
    assert_exactly_once(data, directory, tmp_path, redis_server)


def kafka_session(tmp_path: Path, kafka_broker: str, seed: int):
    # 4 partitions for 2 members of the group
    create_topic(kafka_broker, "digits", partitions=4)
    data = digits_stream(records=1797, invalid=20, unlabeled=10, seed=seed)
    produce(kafka_broker, "digits", as_messages(data))
    directory = tmp_path / "checkpoints"
    (tmp_path / "pipeline.toml").write_text(
        pipeline_toml("kafka", kafka_broker, "digits", directory, batch_size=16, every_batches=5, idle_timeout=10.0)
    )
    return data, directory


def test_two_ranks_share_one_kafka_group_and_train_every_record_exactly_once(tmp_path, kafka_broker):
    data, directory = kafka_session(tmp_path, kafka_broker, seed=5)
    trainer = start(tmp_path, kafka_broker, "kafka")
    assert trainer.wait(timeout=300) == 0, trainer.stderr()
    per_rank = assert_exactly_once(data, directory, tmp_path)
    assert all(sum(keys.values()) > 0 for keys in per_rank), [sum(k.values()) for k in per_rank]
    assert committed_offsets(kafka_broker, "lifelong-test", "digits") == end_offsets(kafka_broker, "digits")


def test_a_kafka_rank_killed_then_resumed_trains_every_record_exactly_once(tmp_path, kafka_broker):
    # the resumed members may be assigned partitions the other rank trained: each starts them at the
    # furthest offset any rank's checkpointed position holds (seek_ranks)
    data, directory = kafka_session(tmp_path, kafka_broker, seed=6)
    kill_rank_1_after(start(tmp_path, kafka_broker, "killed"), directory, step=15)
    resumed = start(tmp_path, kafka_broker, "resumed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr()
    assert_exactly_once(data, directory, tmp_path)
    assert committed_offsets(kafka_broker, "lifelong-test", "digits") == end_offsets(kafka_broker, "digits")


def rank_pids(trainer: Trainer) -> list[int]:
    """The pids of the ranks a running ``lifelong run --nproc`` supervisor started."""
    try:
        return [int(p) for p in Path(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read_text().split()]
    except OSError:  # the supervisor has exited
        return []


def kill_job(trainer: Trainer, ranks: list[int]) -> None:
    """SIGKILL a job's ranks (each in a session of its own, so killpg on the supervisor does not reach them;
    ``ranks`` were read while the supervisor ran), then the supervisor."""
    for pid in ranks:
        try:
            if b"lifelong" in Path(f"/proc/{pid}/cmdline").read_bytes():  # still that rank, not a reused pid
                os.kill(pid, signal.SIGKILL)
        except OSError:  # gone
            pass
    if trainer.popen.poll() is None:
        trainer.signal(signal.SIGKILL)
        trainer.popen.wait(timeout=30)


def logged_keys(log_dir: Path) -> dict[str, list[int]]:
    """Per process log of the key-log strategy (one per rank): the keys it trained, in order."""
    return {p.name: [k for batch in read_log(p)[1] for k in batch] for p in sorted(log_dir.glob("*.log"))}


@pytest.mark.parametrize("assignment", ["range", "cooperative-sticky"])
def test_a_rebalance_while_ranks_train_trains_every_record_once(tmp_path, kafka_broker, assignment):
    """A 2-rank job (A) trains a 4-partition topic while records trickle in; a single-process trainer B
    joins the group, trains 4 batches and leaves. Each rebalance revokes partitions from ranks in the
    middle of training: a rank's reader asks for a checkpoint, the ranks agree on it at their next step,
    rank 0 makes it durable, each rank commits its own offsets, and only then does the partition move.

    Every valid record is trained exactly once across rank 0, rank 1 and B, and the group's committed
    offsets end at the end of every partition. Eager ("range", the default: both ranks lose every
    partition at each rebalance) and cooperative ("cooperative-sticky": only the partitions that move)."""
    create_topic(kafka_broker, "digits", partitions=4)
    data = digits_stream(records=1400, invalid=0, unlabeled=6, seed=8)
    messages = as_messages(data)
    produce(kafka_broker, "digits", messages[:300])
    b_left, stop = threading.Event(), threading.Event()

    def trickle():  # 30 records a second until B has left (A keeps training meanwhile), then the rest at once
        at = 300
        while at < len(messages) and not stop.is_set():
            size = 30 if not b_left.wait(1.0) else len(messages)
            produce(kafka_broker, "digits", messages[at : at + size])
            at += size

    def pipeline(name: str, idle_timeout: float, every_batches: int) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(pipeline_toml(
            "kafka", kafka_broker, "digits", tmp_path / f"ckpt-{name}", log_dir=tmp_path / f"log-{name}", batch_size=16,
            every_batches=every_batches, idle_timeout=idle_timeout, stream={"consumer": {"partition.assignment.strategy": assignment}},
        ))
        return path

    producer = threading.Thread(target=trickle, daemon=True)
    # cooperative: a partition B gives back reaches a rank in two rebalance rounds (~11 s with Tansu), after
    # the last records came; range (eager): one round
    a_idle, b_idle = (10.0, 5.0) if assignment == "range" else (15.0, 25.0)
    a = Trainer(["run", "--nproc", "2", str(pipeline("a", idle_timeout=a_idle, every_batches=10))], tmp_path, "a")
    b, ranks = None, []
    try:
        producer.start()
        deadline = time.monotonic() + 90
        while a.popen.poll() is None and time.monotonic() < deadline:  # both ranks are training
            trained = [len(keys) for keys in logged_keys(tmp_path / "log-a").values()]
            if len(trained) == 2 and min(trained) >= 32 and sum(trained) >= 200:
                break
            time.sleep(0.2)
        assert a.popen.poll() is None and time.monotonic() < deadline, a.stderr()
        ranks = rank_pids(a)
        b = Trainer(["run", str(pipeline("b", idle_timeout=b_idle, every_batches=3)), "--set", "learner.max_batches=4"], tmp_path, "b")
        assert b.wait(120) == 0, b.stderr()
        b_left.set()
        producer.join(60)
        assert not producer.is_alive()
        assert a.wait(180) == 0, a.stderr()
    finally:
        stop.set()
        b_left.set()
        kill_job(a, ranks)
        if b is not None and b.popen.poll() is None:
            b.signal(signal.SIGKILL)
    for trainer in (a, b):  # no revocation gave up waiting for its commit, no member was dropped from the group
        err = trainer.err.read_text()
        assert "gave up partitions" not in err and "lost partitions" not in err, trainer.stderr()
    per_rank = rank_keys(tmp_path / "ckpt-a")
    b_keys = Counter(checkpoint.latest(tmp_path / "ckpt-b").state["strategies"]["key-log"]["keys"].tolist())
    trained = sum(per_rank, Counter()) + b_keys
    assert not [k for k, n in trained.items() if n > 1], "keys trained twice"
    assert sorted(trained) == sorted(data.valid), "lost or unexpected keys"
    assert all(sum(keys.values()) > 0 for keys in per_rank), [sum(k.values()) for k in per_rank]
    assert 0 < sum(b_keys.values()) <= 4 * 16  # B took partitions from the ranks and trained them
    # the ranks trained nothing the final checkpoint lacks (no work done twice, once forgotten)
    assert sum(len(keys) for keys in logged_keys(tmp_path / "log-a").values()) == len(data.valid) - sum(b_keys.values())
    assert committed_offsets(kafka_broker, "lifelong-test", "digits") == end_offsets(kafka_broker, "digits")
