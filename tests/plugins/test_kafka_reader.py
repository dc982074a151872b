"""The ``kafka`` reader against a real Tansu broker (tests/fixtures/kafka_broker.py) on 127.0.0.1.

Direct tests drive the reader as the kernel does (iterate, commit, seek, close); the pipeline tests
run ``lifelong run`` in subprocesses: checkpoint then commit, and a rebalance while training where
every record is trained exactly once across the two group members.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import pytest
import torch

from lifelong import checkpoint
from lifelong.errors import ConfigError, UserError
from lifelong.readers import DeadLetters, ReaderContext
from lifelong_brokers.kafka import KafkaOptions, kafka_reader
from tests.fixtures.broker_session import Trainer, as_messages, digits_stream, pipeline_toml
from tests.fixtures.kafka_broker import committed_offsets, create_topic, produce, read_topic
from tests.fixtures.key_log import Follower, read_log

pytestmark = pytest.mark.slow


def make(bootstrap, tmp_path, batch_size=8, seed=0, **kw):
    options = KafkaOptions(**{"bootstrap": bootstrap, "idle_timeout": 2.0, "batch_timeout": 0.5, **kw})
    options.check()
    context = ReaderContext(batch_size=batch_size, seed=seed, dead_letter=DeadLetters(tmp_path / "dl.jsonl", run="r"))
    return kafka_reader(options, context)


def drain(reader, position=None):
    """Every batch until idle_timeout, as the kernel's reader thread would take them; the reader is closed."""
    if position is not None:
        reader.seek(position)
    try:
        return list(reader)
    finally:
        reader.close()


def letters(tmp_path):
    path = tmp_path / "dl.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_json_records_dead_letters_and_declared_classes(kafka_broker, tmp_path):
    create_topic(kafka_broker, "j")
    create_topic(kafka_broker, "dead")
    good = [{"a": i, "b": i / 2, "label": ["cat", "dog"][i % 2]} for i in range(30)]
    bad = {5: b"\xff\xfe not utf-8", 11: b'{"a": NaN, "b": 1, "label": "cat"}', 17: b'{"a": 1, "b": 1, "label": "eel"}'}
    unlabeled = {8: b'{"a": 8, "b": 4, "label": null}', 20: b'{"a": 20, "b": 10}'}
    messages = []
    for i, record in enumerate(good):
        messages.append((f"k{i}", bad.get(i) or unlabeled.get(i) or json.dumps(record).encode()))
    produce(kafka_broker, "j", messages, partition=0)
    reader = make(kafka_broker, tmp_path, topics=["j"], features=["a", "b"], classes=["cat", "dog"], dead_letter_topic="dead")
    batches = drain(reader)
    trained = torch.cat([b.x[:, 0] for b in batches]).tolist()
    assert trained == [i for i in range(30) if i not in bad and i not in unlabeled]  # the stream went on
    assert torch.cat([b.y for b in batches]).tolist() == [int(i % 2) for i in trained]
    found = letters(tmp_path)
    assert [(d["source"], d["offset"]) for d in found] == [("kafka:j[0]", 5), ("kafka:j[0]", 11), ("kafka:j[0]", 17)]
    assert found[0]["record"] == {"base64": "//4gbm90IHV0Zi04"} and found[0]["reason"].startswith("message is not valid UTF-8")
    assert found[1]["record"] == bad[11].decode() and found[1]["reason"] == "feature field 'a' is nan (NaN or infinite)"
    assert found[2]["reason"] == "label 'eel' in field 'label' is not one of the declared classes"
    assert reader.counts(batches[-1].position) == {"records": 30, "unlabeled": 2, "held_out": 0, "new_classes": 0}
    topic = read_topic(kafka_broker, "dead", idle=1.0)
    assert [(m.key(), m.value()) for m in topic] == [(f"k{i}".encode(), bad[i]) for i in (5, 11, 17)]
    headers = dict(topic[1].headers())
    assert headers == {"lifelong.reason": b"feature field 'a' is nan (NaN or infinite)", "lifelong.source": b"kafka:j[0]", "lifelong.offset": b"11"}


def test_csv_records_and_open_classes(kafka_broker, tmp_path, capfd):
    create_topic(kafka_broker, "c")
    lines = ["1,ant,2", "2,bee,3", "3,,4", "4,cow,5", "5,ant,x", "6,bee,7"]
    produce(kafka_broker, "c", [(str(i), line) for i, line in enumerate(lines)], partition=0)
    reader = make(kafka_broker, tmp_path, topics=["c"], format="csv", columns=["f", "label", "g"], num_classes=2)
    assert reader.info().class_names == ["", ""] and reader.info().feature_names == ["f", "g"]
    batches = drain(reader)
    assert torch.cat([b.x for b in batches]).tolist() == [[1, 2], [2, 3], [6, 7]]
    assert torch.cat([b.y for b in batches]).tolist() == [0, 1, 1]
    assert [(d["offset"], d["reason"]) for d in letters(tmp_path)] == [
        (3, "label 'cow' in field 'label' is a new class, but all num_classes = 2 head slots are taken"),
        (4, "feature column 'g' is not a number: 'x'"),
    ]
    assert reader.info().class_names == ["ant", "bee"]
    err = capfd.readouterr().err
    assert err.count("new class 'ant' → index 0") == 1 and err.count("new class 'bee' → index 1") == 1
    assert reader.counts(batches[-1].position)["unlabeled"] == 1


def test_a_seek_resumes_with_the_same_batches_and_held_out_sets(kafka_broker, tmp_path):
    create_topic(kafka_broker, "s")
    produce(kafka_broker, "s", [{"key": i, "x": [i, -i], "label": i % 3} for i in range(120)], partition=0)
    opts = {"topics": ["s"], "features_field": "x", "num_features": 2, "num_classes": 3, "test_fraction": 0.2, "test_size": 500}
    whole_reader = make(kafka_broker, tmp_path / "a", group="whole", **opts)
    whole = drain(whole_reader)
    assert sum(len(b) for b in whole) + len(whole_reader.test_set(0)) == 120
    k = 4
    resumed_reader = make(kafka_broker, tmp_path / "b", group="resumed", **opts)
    rest = drain(resumed_reader, json.loads(json.dumps(whole[k].position)))
    assert len(rest) == len(whole) - k - 1
    for a, b in zip(whole[k + 1 :], rest):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.position == b.position
    assert torch.equal(whole_reader.test_set(0).x, resumed_reader.test_set(0).x)  # rebuilt from the position

    # Another member of the group committed past the checkpoint: start there, not at the checkpoint.
    ahead = make(kafka_broker, tmp_path / "c", group="resumed2", **opts)
    ahead.seek(whole[k].position)
    it = iter(ahead)
    next(it)  # joined the group and owns the partition
    ahead.commit(whole[k + 3].position)
    ahead.close()
    assert committed_offsets(kafka_broker, "resumed2", "s") == {0: whole[k + 3].position["cursor"]["s:0"]}
    later = drain(make(kafka_broker, tmp_path / "d", group="resumed2", **opts), whole[k].position)
    assert torch.equal(later[0].x, whole[k + 4].x)


def test_commit_commits_the_position_and_never_moves_back(kafka_broker, tmp_path):
    create_topic(kafka_broker, "m", partitions=3)
    produce(kafka_broker, "m", [{"key": i, "x": [i], "label": "a"} for i in range(90)])
    reader = make(kafka_broker, tmp_path, topics=["m"], group="g", features_field="x", num_features=1, num_classes=1)
    it = iter(reader)
    batches = [next(it) for _ in range(6)]
    try:
        reader.commit(batches[4].position)
        expected = {int(name.split(":")[1]): offset for name, offset in batches[4].position["cursor"].items()}
        assert committed_offsets(kafka_broker, "g", "m") == {p: expected.get(p, -1001) for p in range(3)}
        reader.commit(batches[1].position)  # a late commit of an older position
        assert committed_offsets(kafka_broker, "g", "m") == {p: expected.get(p, -1001) for p in range(3)}
        assert not reader.checkpoint_wanted()
    finally:
        reader.close()


def test_start_errors_are_user_errors(kafka_broker, tmp_path, monkeypatch):
    create_topic(kafka_broker, "here")
    with pytest.raises(ConfigError, match=r"stream.topics: topic 'gone' does not exist .* \(topics there: here\)"):
        make(kafka_broker, tmp_path, topics=["here", "gone"], features=["a"], num_classes=2)
    closed = kafka_broker.rsplit(":", 1)[0] + ":1"
    started = time.monotonic()
    with pytest.raises(UserError, match=r"stream.bootstrap: the Kafka servers '127.0.0.1:1' did not answer within 10 s"):
        make(closed, tmp_path, topics=["here"], features=["a"], num_classes=2)
    assert time.monotonic() - started < 20
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install 'lifelong\[kafka\]'"):
        make(kafka_broker, tmp_path, topics=["here"], features=["a"], num_classes=2)


# -- whole pipelines --------------------------------------------------------------------------------------
def write_pipeline(tmp_path, bootstrap, topic, name, **kw):
    path = tmp_path / f"{name}.toml"
    path.write_text(pipeline_toml("kafka", bootstrap, topic, tmp_path / f"ckpt-{name}", log_dir=tmp_path / f"log-{name}", **kw))
    return path


def test_the_pipeline_commits_what_its_checkpoint_holds(kafka_broker, tmp_path):
    create_topic(kafka_broker, "p", partitions=2)
    stream = digits_stream(records=300, invalid=4, unlabeled=6)
    produce(kafka_broker, "p", as_messages(stream))
    no_dir = tmp_path / "nodir.toml"
    no_dir.write_text(write_pipeline(tmp_path, kafka_broker, "p", "x").read_text().split("[checkpoint]")[0])
    refused = Trainer(["run", str(no_dir)], tmp_path, "refused")
    assert refused.wait(120) == 2 and "checkpoint.dir" in refused.stderr()

    pipeline = write_pipeline(tmp_path, kafka_broker, "p", "run", group="committer", idle_timeout=3.0)
    trainer = Trainer(["run", str(pipeline), "--summary", str(tmp_path / "summary.json"), "--dead-letters", str(tmp_path / "dl.jsonl")], tmp_path, "run")
    assert trainer.wait(240) == 0, trainer.stderr()
    final = checkpoint.latest(tmp_path / "ckpt-run")
    cursor = final.state["reader"]["cursor"]
    assert committed_offsets(kafka_broker, "committer", "p") == {int(k.split(":")[1]): v for k, v in cursor.items()}
    assert sum(cursor.values()) == len(stream.messages)  # every message accounted for
    keys = final.state["strategies"]["key-log"]["keys"].tolist()
    assert sorted(keys) == sorted(stream.valid)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reader"] == {"records": len(stream.messages), "unlabeled": 6, "held_out": 0, "new_classes": 0}
    assert summary["dead_letters"]["count"] == 4


@pytest.mark.parametrize("assignment", ["range", "cooperative-sticky"])
def test_a_rebalance_while_training_trains_every_record_once(kafka_broker, tmp_path, assignment):
    """A trains a 3-partition topic while records arrive; B joins the group, trains 4 batches and leaves.

    Both assignment protocols: eager ("range", the default: every partition is revoked and assigned
    again) and cooperative ("cooperative-sticky": only the partitions that move, with
    incremental_assign / incremental_unassign)."""
    create_topic(kafka_broker, "r", partitions=3)
    stream = digits_stream(records=1500, invalid=0, unlabeled=0)
    messages = as_messages(stream)
    produce(kafka_broker, "r", messages[:300])
    done = threading.Event()

    def trickle():  # the rest over ~18 s, so A is still training when B comes and goes
        try:
            for i in range(300, len(messages), 100):
                time.sleep(1.5)
                produce(kafka_broker, "r", messages[i : i + 100])
        finally:
            done.set()

    producer = threading.Thread(target=trickle, daemon=True)
    consumer = {"stream": {"consumer": {"partition.assignment.strategy": assignment}}}
    a = Trainer(["run", str(write_pipeline(tmp_path, kafka_broker, "r", "a", idle_timeout=15.0, every_batches=10, **consumer))], tmp_path, "a")
    b = None
    try:
        producer.start()
        follower = Follower(tmp_path / "log-a" / f"{a.pid}.log")
        deadline = time.monotonic() + 90
        while (follower.poll() or 0) < 200 and time.monotonic() < deadline and a.popen.poll() is None:
            time.sleep(0.05)
        assert a.popen.poll() is None, a.stderr()
        # cooperative: two rebalance rounds (A gives the partition up, then B gets it); with Tansu a partition
        # reached B 11 s after it joined (raw confluent-kafka consumers), past an idle_timeout of 5 s
        idle = 5.0 if assignment == "range" else 25.0
        b_pipeline = write_pipeline(tmp_path, kafka_broker, "r", "b", idle_timeout=idle, every_batches=3, **consumer)
        b = Trainer(["run", str(b_pipeline), "--set", "learner.max_batches=4"], tmp_path, "b")
        assert b.wait(120) == 0, b.stderr()
        assert done.wait(60)
        assert a.wait(180) == 0, a.stderr()
    finally:
        for t in (a, b):
            if t is not None and t.popen.poll() is None:
                t.signal(9)
    keys = []
    for name in ("a", "b"):
        keys += checkpoint.latest(tmp_path / f"ckpt-{name}").state["strategies"]["key-log"]["keys"].tolist()
    counts = Counter(keys)
    assert not [k for k, n in counts.items() if n > 1], "trained twice"
    assert sorted(counts) == sorted(stream.valid), "lost"
    b_trained = sum(len(batch) for batch in read_log(next((tmp_path / "log-b").glob("*.log")))[1])
    assert 0 < b_trained <= 4 * 32  # B did take partitions and train
    a_header, a_batches, _ = read_log(tmp_path / "log-a" / f"{a.pid}.log")
    assert sum(len(x) for x in a_batches) == len(stream.valid) - b_trained


def test_seek_ranks_starts_a_partition_at_the_furthest_offset_any_rank_checkpointed(kafka_broker, tmp_path):
    # Data-parallel ranks: rank 1 trained partition 0 up to batch k and checkpointed it, but died before
    # committing it. Resumed, the group assigns partition 0 to rank 0, which has no position of its own.
    create_topic(kafka_broker, "r")
    produce(kafka_broker, "r", [{"key": i, "x": [i, -i], "label": i % 3} for i in range(120)], partition=0)
    opts = {"topics": ["r"], "features_field": "x", "num_features": 2, "num_classes": 3}
    whole = drain(make(kafka_broker, tmp_path / "a", group="whole", **opts))
    k = 4
    rank0 = make(kafka_broker, tmp_path / "b", group="ranks", **opts)
    rank0.seek_ranks(None, [None, json.loads(json.dumps(whole[k].position))])
    rest = drain(rank0)
    trained = {int(v) for b in whole[: k + 1] for v in b.x[:, 0].tolist()}
    resumed = [int(v) for b in rest for v in b.x[:, 0].tolist()]
    assert resumed == [int(v) for b in whole[k + 1 :] for v in b.x[:, 0].tolist()]
    assert not trained & set(resumed)
