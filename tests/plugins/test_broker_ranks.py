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
import time
from collections import Counter
from pathlib import Path

import pytest

from lifelong import checkpoint
from tests.fixtures.broker_session import Trainer, as_messages, dead_letter_records, digits_stream, pipeline_toml
from tests.fixtures.kafka_broker import committed_offsets, create_topic, end_offsets, produce
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
