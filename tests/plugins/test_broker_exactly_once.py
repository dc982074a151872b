"""Exactly once over real brokers: ``lifelong run`` consuming Kafka (Tansu) or Redis Streams is killed with
``kill -9`` at random points and resumed with ``--resume`` until the stream is drained.

What is judged (see :mod:`tests.fixtures.broker_session`): the ``key-log`` test strategy keeps the
key of every record it trained in its ``state_dict``, so the final checkpoint carries the training
history of the final model's lineage. Keys a killed process trained after its last checkpoint are
trained again after the resume (their state was lost with the process): they are not in the lineage
twice. So exactly once = every valid key once in the final state, no unlabeled or invalid key in it,
and every invalid record once in the dead-letter file (which the kernel cuts back to the
checkpoint's mark on resume). The broker side is checked independently: at the end every offset is
committed (Kafka: the group's committed offset = the partition's end) / every entry acknowledged
(Redis: nothing pending in the group).
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.broker_session import (
    as_messages,
    digits_stream,
    pipeline_toml,
    run_with_kills,
    verdict,
)
from tests.fixtures.kafka_broker import committed_offsets, create_topic, end_offsets, produce, record
from tests.fixtures.redis_server import pending_count, xadd

pytestmark = pytest.mark.slow

BATCH = 16
EVERY = 5  # checkpoint.every_batches
KILLS = 4


def assert_exactly_once(result: dict, processes: list[dict]) -> None:
    landed = [p for p in processes if p["landed"]]
    assert len(landed) >= 3, f"only {len(landed)} kills landed before the stream was drained: {processes}"
    assert processes[-1]["rc"] == 0
    summary = {k: (v[:10] if isinstance(v, list) else v) for k, v in result.items()}
    assert result["trained_in_lineage"] == result["valid"], summary
    assert not result["lost"], summary
    assert not result["duplicated"], summary
    assert not result["unexpected"], summary
    assert not result["dead_missing"], summary
    assert not result["dead_duplicated"], summary
    assert not result["dead_unexpected"], summary
    assert result["exactly_once"]


# -- the fixtures themselves -----------------------------------------------------------------------------
def test_kafka_fixture_topics_produce_and_stop(kafka_broker_server):
    bootstrap = kafka_broker_server.bootstrap
    create_topic(bootstrap, "t", partitions=3)
    assert produce(bootstrap, "t", [record(i, [i, 0.5], i % 2) for i in range(30)] + [("k", b"junk")]) == 31
    assert sum(end_offsets(bootstrap, "t").values()) == 31
    assert committed_offsets(bootstrap, "nobody", "t") == {0: -1001, 1: -1001, 2: -1001}
    kafka_broker_server.stop()
    assert kafka_broker_server.process.poll() is not None


def test_redis_fixture_xadd_pending_and_stop(redis_server_process_fixture):
    import redis

    url = redis_server_process_fixture.url
    ids = xadd(url, "s", [record(i, [i, 0.5], i % 2) for i in range(10)] + ["junk"])
    assert len(ids) == 11
    client = redis.Redis.from_url(url, socket_timeout=5)
    client.xgroup_create("s", "g", id="0")
    client.xreadgroup("g", "c", {"s": ">"}, count=4)
    assert pending_count(url, "s", "g") == 4
    client.close()
    redis_server_process_fixture.stop()
    assert redis_server_process_fixture.process.poll() is not None


# -- kill -9 and resume ------------------------------------------------------------------------------
def session(tmp_path, kind: str, address: str, name: str, seed: int, **stream):
    data = digits_stream(records=1797, invalid=20, unlabeled=10, seed=seed)
    directory, logs = tmp_path / "checkpoints", tmp_path / "keys"
    pipeline = tmp_path / "pipeline.toml"
    # Kafka: a resumed consumer may wait up to the session timeout (6 s) for the killed member's
    # partitions, so the stream must not end by idle_timeout before that.
    idle = 10.0 if kind == "kafka" else 4.0
    pipeline.write_text(
        pipeline_toml(
            kind,
            address,
            name,
            directory,
            logs,
            batch_size=BATCH,
            every_batches=EVERY,
            idle_timeout=idle,
            stream=stream,
        )
    )
    return data, directory, logs, pipeline


def test_kafka_kill_9_and_resume_trains_every_record_exactly_once(tmp_path, kafka_broker):
    create_topic(kafka_broker, "digits", partitions=3)
    data, directory, logs, pipeline = session(tmp_path, "kafka", kafka_broker, "digits", seed=1)
    produce(kafka_broker, "digits", as_messages(data))
    processes = run_with_kills(
        pipeline, tmp_path, logs, directory, kills=KILLS, total=len(data.valid), first=EVERY * BATCH + 1, seed=1
    )
    result = verdict(data, directory, tmp_path / "dead_letters.jsonl", logs)
    print(json.dumps({"processes": processes, **{k: v for k, v in result.items() if not isinstance(v, list)}}))
    assert_exactly_once(result, processes)
    # the broker side: everything consumed was committed after the final checkpoint
    assert committed_offsets(kafka_broker, "lifelong-test", "digits") == end_offsets(kafka_broker, "digits")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dead_letters"]["count"] == len(data.invalid)


def test_redis_kill_9_and_resume_trains_every_record_exactly_once(tmp_path, redis_server):
    data, directory, logs, pipeline = session(tmp_path, "redis", redis_server, "digits", seed=2)
    xadd(redis_server, "digits", data.messages)
    processes = run_with_kills(
        pipeline, tmp_path, logs, directory, kills=KILLS, total=len(data.valid), first=EVERY * BATCH + 1, seed=2
    )
    result = verdict(data, directory, tmp_path / "dead_letters.jsonl", logs)
    print(json.dumps({"processes": processes, **{k: v for k, v in result.items() if not isinstance(v, list)}}))
    assert_exactly_once(result, processes)
    assert pending_count(redis_server, "digits", "lifelong-test") == 0  # every entry acknowledged
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dead_letters"]["count"] == len(data.invalid)
