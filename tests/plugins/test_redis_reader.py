"""The ``redis`` reader against a real ``redis-server``: formats, dead letters, labels, held-out sets,
seek/resume with the pending list, claims from dead consumers, lost connections, user errors.

Records carry their number ``i`` as their first feature, so a test knows exactly which records a
batch trained. "Crashes" are readers dropped without ``commit`` (what a killed process leaves
behind: entries read, not acknowledged); the server is real and keeps the group's pending lists.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from lifelong.errors import ConfigError, UserError
from lifelong.options import validate
from lifelong.readers import DeadLetters, ReaderContext
from lifelong_brokers.redis_reader import RedisOptions, entry_id, redis_reader
from tests.fixtures.redis_server import pending_count, xadd

pytestmark = pytest.mark.slow  # every test starts a redis-server (~0.03 s each; the readers wait ~0.3 s to end)

# The reader's own logic is tested in this process (``acked`` counts its acknowledgements here); the reader run
# in a child process, as the pipeline runs it by default: test_reader_process.py and the pipeline tests.
FAST = {"idle_timeout": 0.3, "batch_timeout": 0.1, "block_ms": 50, "reader_process": False}


def context(tmp_path: Path, batch_size: int = 4, seed: int = 0, name: str = "dl.jsonl") -> ReaderContext:
    return ReaderContext(batch_size=batch_size, seed=seed, dead_letter=DeadLetters(tmp_path / name))


def options(url: str, **kw) -> RedisOptions:
    data = {"url": url, "stream": "s", "num_features": 2, "classes": ["a", "b"], **FAST, **kw}
    return validate(RedisOptions, data, "stream")


def reader(url: str, ctx: ReaderContext, **kw):
    return redis_reader(options(url, **kw), ctx)


def records(start: int, stop: int, labels: str = "ab") -> list[dict]:
    return [{"x": [i, -i], "label": labels[i % len(labels)]} for i in range(start, stop)]


def numbers(batches) -> list[int]:
    return [int(v) for b in batches for v in b.x[:, 0].tolist()]


def dead_letters(ctx: ReaderContext) -> list[dict]:
    ctx.dead_letter.close()
    path = ctx.dead_letter.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def take(stream, n: int) -> list:
    """The first ``n`` batches of a reader's iterator (the iterator stays suspended: a crash point)."""
    return [next(stream) for _ in range(n)]


# -- formats and dead letters ----------------------------------------------------------------------


def test_json_field_batches_positions_and_commit(redis_server, tmp_path):
    ids = xadd(redis_server, "s", records(0, 10))
    ctx = context(tmp_path)
    r = reader(redis_server, ctx)
    assert r.info().input_shape == (2,) and r.info().class_names == ["a", "b"] and r.info().experiences == [0]
    batches = list(r)
    assert numbers(batches) == list(range(10))
    assert [b.y.tolist() for b in batches] == [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1]]
    assert [(b.start, b.stop) for b in batches] == [(0, 4), (4, 8), (8, 10)]
    assert batches[1].x[0].tolist() == [4.0, -4.0]
    cursor = batches[1].position["cursor"]
    assert cursor == {"stream": "s", "group": "lifelong", "consumer": "trainer", "through": ids[7], "claimed": []}
    # Nothing is acknowledged when read; commit(position) acknowledges up to its watermark, cumulatively.
    assert pending_count(redis_server, "s", "lifelong") == 10
    r.commit(batches[1].position)
    assert pending_count(redis_server, "s", "lifelong") == 2
    r.commit(batches[0].position)  # an older position again: nothing more, no error
    r.commit(batches[1].position)
    assert pending_count(redis_server, "s", "lifelong") == 2 and r.acked == 8
    r.commit(batches[2].position)
    assert pending_count(redis_server, "s", "lifelong") == 0
    r.close()
    assert dead_letters(ctx) == []


def test_bad_entries_are_dead_letters_with_original_bytes_and_the_entry_id(redis_server, tmp_path):
    c = client(redis_server)
    good = xadd(redis_server, "s", records(0, 2))
    bad = [
        c.xadd("s", {"data": b"not json"}),
        c.xadd("s", {"data": b'{"x": [1, 2], "label": "\xff"}'}),  # not UTF-8
        c.xadd("s", {"other": b"1"}),  # no payload field
        c.xadd("s", {"data": json.dumps({"x": [1, "nan"], "label": "a"})}),
        c.xadd("s", {"data": json.dumps({"x": [1, 2, 3], "label": "a"})}),
        c.xadd("s", {"data": json.dumps({"x": [1, 2], "label": "zebra"})}),  # not a declared class
    ]
    more = xadd(redis_server, "s", records(2, 4))
    ctx = context(tmp_path)
    r = reader(redis_server, ctx, dead_letter_stream="s-dead")
    batches = list(r)
    assert numbers(batches) == [0, 1, 2, 3]
    letters = dead_letters(ctx)
    assert [d["offset"] for d in letters] == [b.decode() for b in bad]
    assert {d["source"] for d in letters} == {"redis:s"}
    assert letters[0]["record"] == "not json" and "not valid JSON" in letters[0]["reason"]
    assert letters[1]["record"] == {"base64": "eyJ4IjogWzEsIDJdLCAibGFiZWwiOiAi/yJ9"} and "UTF-8" in letters[1]["reason"]
    assert letters[2]["record"] == {"other": "1"} and "no field 'data'" in letters[2]["reason"]
    assert "NaN" in letters[3]["reason"] and "3 values" in letters[4]["reason"] and "declared" in letters[5]["reason"]
    # The dead letters count as records: the watermark of the last batch covers them, so they are acknowledged.
    assert batches[-1].position["cursor"]["through"] == more[-1] and r.counts(batches[-1].position)["records"] == 10
    r.commit(batches[-1].position)
    assert pending_count(redis_server, "s", "lifelong") == 0
    sent = c.xrange("s-dead")
    assert [e[1][b"offset"].decode() for e in sent] == [b.decode() for b in bad]
    assert sent[0][1][b"record"] == b"not json" and sent[1][1][b"record"] == b'{"x": [1, 2], "label": "\xff"}'
    assert sent[0][1][b"source"] == b"redis:s" and b"not valid JSON" in sent[0][1][b"reason"]
    assert good[0] < more[0]
    r.close()


def test_the_entrys_own_fields_as_the_record(redis_server, tmp_path):
    """field = "": the entry's field-value pairs are the JSON object, values as text."""
    c = client(redis_server)
    c.xadd("s", {"a": "1.5", "b": "2", "label": "3", "exp": "0"})
    c.xadd("s", {"a": "x", "b": "2", "label": "3", "exp": "0"})
    c.xadd("s", {"a": "-1", "b": "0.25", "label": "7", "exp": "1"})
    c.xadd("s", {"a": "0", "b": "0", "exp": "1"})  # unlabeled
    ctx = context(tmp_path)
    r = reader(redis_server, ctx, field="", features=["a", "b"], num_features=0, classes=None, num_classes=4, experience="exp")
    batches = list(r)
    assert [b.x.tolist() for b in batches] == [[[1.5, 2.0]], [[-1.0, 0.25]]]
    assert [(b.experience, b.y.tolist()) for b in batches] == [(0, [0]), (1, [1])]
    assert r.info().class_names == ["3", "7", "", ""]
    assert r.counts(batches[-1].position)["unlabeled"] == 1  # read in the same reply: flushed after it
    (letter,) = dead_letters(ctx)
    assert letter["record"] == {"a": "x", "b": "2", "label": "3", "exp": "0"} and "'a'" in letter["reason"]
    # The features_field array as JSON text in a field.
    c.xadd("t", {"x": "[0.5, 1]", "label": "b"})
    r2 = reader(redis_server, context(tmp_path, name="dl2.jsonl"), stream="t", field="")
    assert [b.x.tolist() for b in r2] == [[[0.5, 1.0]]]
    r.close()
    r2.close()


def test_csv_lines(redis_server, tmp_path):
    c = client(redis_server)
    for line in ["1,2,a,k1", "3,4,b,k2", "5,x,a,k3", "7,8,b"]:
        c.xadd("s", {"data": line})
    ctx = context(tmp_path)
    r = reader(redis_server, ctx, format="csv", columns=["f1", "f2", "label", "key"], key="key", num_features=0)
    assert r.info().feature_names == ["f1", "f2"]
    batches = list(r)
    assert [b.x.tolist() for b in batches] == [[[1.0, 2.0], [3.0, 4.0]]] and batches[0].y.tolist() == [0, 1]
    assert [d["record"] for d in dead_letters(ctx)] == ["5,x,a,k3", "7,8,b"]
    r.close()
    with pytest.raises(ConfigError, match="needs format json"):
        options(redis_server, format="csv", columns=["f1", "label"], field="")


# -- labels and held-out sets -----------------------------------------------------------------------


def test_open_classes_take_free_slots_and_unlabeled_records_are_counted(redis_server, tmp_path):
    c = client(redis_server)
    for i, label in enumerate(["cat", "dog", None, "cat", "emu", 3.0, "fox", ""]):
        record = {"x": [i, i]} if label is None else {"x": [i, i], "label": label}
        c.xadd("s", {"data": json.dumps(record)})
    ctx = context(tmp_path, batch_size=100)
    r = reader(redis_server, ctx, classes=None, num_classes=4)
    batches = list(r)
    assert numbers(batches) == [0, 1, 3, 4, 5] and batches[0].y.tolist() == [0, 1, 0, 2, 3]
    assert r.info().class_names == ["cat", "dog", "emu", "3"]
    counts = r.counts(batches[-1].position)
    assert counts["unlabeled"] == 2 and counts["new_classes"] == 4 and counts["records"] == 8
    (letter,) = dead_letters(ctx)
    assert "'fox'" in letter["reason"] and "num_classes = 4" in letter["reason"]
    assert batches[-1].position["classes"] == ["cat", "dog", "emu", "3"]
    r.close()


def test_held_out_records_are_chosen_by_seed_and_entry_id(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 200))
    kept = {}
    for group in ("g1", "g2", "g3"):
        seed = 1 if group == "g3" else 0
        r = reader(redis_server, context(tmp_path, seed=seed, name=f"{group}.jsonl"), group=group, test_fraction=0.25)
        trained = numbers(list(r))
        test = r.test_set(0)
        held = sorted(int(v) for v in test.x[:, 0].tolist())
        assert sorted(trained + held) == list(range(200))  # every record trained or held out, once
        assert 25 < len(held) < 75
        kept[group] = held
        r.close()
    assert kept["g1"] == kept["g2"]  # same seed, same entry ids: the same records
    assert kept["g1"] != kept["g3"]


def test_the_one_test_set_is_handed_out_once_full(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 100))
    r = reader(redis_server, context(tmp_path, batch_size=2), test_fraction=0.5, test_size=5, idle_timeout=5.0)
    stream = iter(r)
    seen = []
    while r.test_set(0) is None:
        seen += numbers([next(stream)])
    assert len(r.test_set(0)) == 5 and len(seen) < 20  # long before the stream ends
    r.close()


# -- resume: seek, the pending list, commits --------------------------------------------------------


def test_seek_resumes_exactly_where_the_checkpoint_stood(redis_server, tmp_path):
    """Checkpoint after batch 2; the process dies later without acknowledging anything. The resumed
    reader acknowledges what the checkpoint covers (not trained again) and trains the rest once,
    producing the batches an uninterrupted run produces."""
    xadd(redis_server, "s", records(0, 30))
    reference = reader(redis_server, context(tmp_path, name="ref.jsonl"), group="ref", test_fraction=0.2)
    expected = list(reference)
    reference.close()

    first = reader(redis_server, context(tmp_path), test_fraction=0.2, idle_timeout=5.0)
    stream = iter(first)
    before = take(stream, 4)  # read (and pending) further than the checkpoint
    checkpoint = json.loads(json.dumps(before[1].position))  # what a checkpoint file holds
    first.close()  # crash: nothing acknowledged
    assert pending_count(redis_server, "s", "lifelong") >= 16

    resumed = reader(redis_server, context(tmp_path, name="dl2.jsonl"), test_fraction=0.2)
    resumed.seek(checkpoint)
    after = list(resumed)
    assert numbers(before[:2]) + numbers(after) == numbers(expected)
    assert [b.y.tolist() for b in after] == [b.y.tolist() for b in expected[2:]]
    assert [(b.start, b.stop) for b in after] == [(b.start, b.stop) for b in expected[2:]]
    assert sorted(resumed.test_set(0).x[:, 0].tolist()) == sorted(reference.test_set(0).x[:, 0].tolist())
    through = entry_id(checkpoint["cursor"]["through"])
    assert resumed.acked == sum(1 for e in client(redis_server).xrange("s") if entry_id(e[0]) <= through)
    resumed.commit(after[-1].position)
    # Everything up to the last batch is acknowledged; entries after it (held out or unlabeled at the
    # very end; held-out picks hash the entry ids, which differ run to run) are in no position yet.
    last = entry_id(after[-1].position["cursor"]["through"])
    beyond = sum(1 for e in client(redis_server).xrange("s") if entry_id(e[0]) > last)
    assert pending_count(redis_server, "s", "lifelong") == beyond
    resumed.close()


def test_entries_read_but_never_checkpointed_are_trained_once_after_a_restart(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 12))
    first = reader(redis_server, context(tmp_path), idle_timeout=5.0)
    stream = iter(first)
    trained = numbers(take(stream, 3))  # everything read and trained, nothing checkpointed
    first.close()
    xadd(redis_server, "s", records(12, 16))
    again = reader(redis_server, context(tmp_path, name="dl2.jsonl"))  # no checkpoint: no seek
    batches = list(again)
    assert trained == list(range(12)) and numbers(batches) == list(range(16))  # the model trained none of it
    again.commit(batches[-1].position)
    assert pending_count(redis_server, "s", "lifelong") == 0
    again.close()


def test_a_crash_between_checkpoint_and_xack_trains_nothing_twice(redis_server, tmp_path):
    """Deliver, checkpoint, die before the XACK: the restart acknowledges the checkpoint's entries
    and trains only what came after it."""
    xadd(redis_server, "s", records(0, 8))
    first = reader(redis_server, context(tmp_path), idle_timeout=5.0)
    stream = iter(first)
    batches = take(stream, 2)
    checkpoint = json.loads(json.dumps(batches[-1].position))  # durable; commit() never ran
    first.close()
    assert pending_count(redis_server, "s", "lifelong") == 8
    xadd(redis_server, "s", records(8, 10))
    resumed = reader(redis_server, context(tmp_path, name="dl2.jsonl"))
    resumed.seek(checkpoint)
    stream = iter(resumed)
    rest = [next(stream)]
    assert numbers(rest) == [8, 9] and resumed.acked == 8
    assert pending_count(redis_server, "s", "lifelong") == 2
    resumed.close()


def test_commit_from_another_thread_while_the_reader_reads(redis_server, tmp_path):
    """The kernel commits on the checkpoint writer's thread while the reader thread keeps reading."""
    xadd(redis_server, "s", records(0, 400))
    r = reader(redis_server, context(tmp_path, batch_size=8), read_count=7)
    got: list = []
    done = threading.Event()

    def read():
        got.extend(r)  # batch by batch, as the reader yields them
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    committed, commits = 0, 0
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        if len(got) > committed:
            committed, commits = len(got), commits + 1
            r.commit(got[committed - 1].position)
        time.sleep(0.001)
    assert done.wait(10) and commits >= 2
    r.commit(got[-1].position)
    assert numbers(got) == list(range(400)) and r.acked == 400
    assert pending_count(redis_server, "s", "lifelong") == 0
    r.close()


def test_seek_refuses_another_streams_position(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 4))
    r = reader(redis_server, context(tmp_path))
    position = next(iter(r)).position
    r.close()
    other = reader(redis_server, context(tmp_path, name="dl2.jsonl"), consumer="other")
    with pytest.raises(UserError, match="consumer 'trainer'"):
        other.seek(position)
    other.close()


# -- dead consumers ---------------------------------------------------------------------------------


def test_a_dead_consumers_entries_are_claimed_trained_once_and_acknowledged(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 12))
    dead = reader(redis_server, context(tmp_path, name="dead.jsonl"), consumer="a", idle_timeout=5.0, claim_idle_ms=0)
    stream = iter(dead)
    lost = numbers(take(stream, 2))  # a read 0..11 in one reply, trained 0..7, never checkpointed, and died
    dead.close()
    xadd(redis_server, "s", records(12, 16))
    time.sleep(0.25)
    ctx = context(tmp_path)
    b = reader(redis_server, ctx, consumer="b", claim_idle_ms=200)
    batches = list(b)
    assert lost == list(range(8))
    assert sorted(numbers(batches)) == list(range(16))  # a's 12 entries claimed and trained once, with b's own
    claimed = [eid for batch in batches for eid in batch.position["cursor"]["claimed"]]
    assert len(set(claimed)) == 12
    consumers = {c["name"].decode(): c["pending"] for c in client(redis_server).xinfo_consumers("s", "lifelong")}
    assert consumers == {"a": 0, "b": 4, "b.claimed": 12}
    b.commit(batches[-1].position)
    assert pending_count(redis_server, "s", "lifelong") == 0
    b.close()


def test_claims_after_the_checkpoint_are_trained_again_on_resume_listed_ones_are_not(redis_server, tmp_path):
    """A claimed id may lie below the watermark: only the checkpoint's explicit list tells which
    claimed entries it covers."""
    xadd(redis_server, "s", records(0, 4))
    dead = reader(redis_server, context(tmp_path, name="dead.jsonl"), consumer="a", idle_timeout=5.0, claim_idle_ms=0)
    take(iter(dead), 1)  # a holds 0..3 pending
    dead.close()
    xadd(redis_server, "s", records(4, 12))
    time.sleep(0.25)
    b = reader(redis_server, context(tmp_path, batch_size=2), consumer="b", claim_idle_ms=200, idle_timeout=5.0)
    stream = iter(b)
    first = next(stream)  # the claim scan runs first: claimed 0, 1
    checkpoint = json.loads(json.dumps(first.position))
    assert numbers([first]) == [0, 1] and len(checkpoint["cursor"]["claimed"]) == 2
    assert checkpoint["cursor"]["through"] is None
    more = take(stream, 3)  # claimed 2, 3 and own 4..7: trained, not checkpointed
    assert sorted(numbers(more)) == [2, 3, 4, 5, 6, 7]
    b.close()  # crash
    resumed = reader(redis_server, context(tmp_path, batch_size=2, name="dl2.jsonl"), consumer="b", claim_idle_ms=200)
    resumed.seek(checkpoint)
    after = list(resumed)
    assert sorted(numbers(after)) == list(range(2, 12))  # 0 and 1 were in the checkpoint: acknowledged, not trained
    assert resumed.acked == 2
    resumed.commit(after[-1].position)
    # Everything up to the last batch is acknowledged; entries after it (held out or unlabeled at the
    # very end; held-out picks hash the entry ids, which differ run to run) are in no position yet.
    last = entry_id(after[-1].position["cursor"]["through"])
    beyond = sum(1 for e in client(redis_server).xrange("s") if entry_id(e[0]) > last)
    assert pending_count(redis_server, "s", "lifelong") == beyond
    resumed.close()


def test_own_entries_are_never_claimed_even_when_idle(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 8))
    r = reader(redis_server, context(tmp_path), claim_idle_ms=50, idle_timeout=0.6)
    batches = list(r)  # its own pending entries idle > 50 ms while it waits for more
    assert numbers(batches) == list(range(8))
    names = {c["name"].decode() for c in client(redis_server).xinfo_consumers("s", "lifelong")}
    assert names == {"trainer"}
    r.close()


# -- connections ------------------------------------------------------------------------------------


def test_a_stalled_server_and_a_lost_reply_are_caught_up(redis_server_process_fixture, tmp_path):
    """Entries are delivered to this consumer in a reply the reader never sees (another connection
    reads them under its name, in the transaction that adds them), then the server stops answering
    (SIGSTOP) while the reader waits. Once it answers again, the reader first reads its own pending
    entries after the last one it saw: nothing is lost, nothing is read twice."""
    server = redis_server_process_fixture
    url = server.url
    xadd(url, "s", records(0, 4))
    r = reader(url, context(tmp_path), timeout=0.3, idle_timeout=3.0, retry_seconds=10)
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(r), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert numbers(got) == [0, 1, 2, 3]
    pipe = client(url).pipeline(transaction=True)
    for record in records(4, 8):
        pipe.xadd("s", {"data": json.dumps(record)})
    pipe.xreadgroup("lifelong", "trainer", {"s": ">"})  # delivered to "trainer"; the reply is not the reader's
    assert len(pipe.execute()[-1][0][1]) == 4
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        time.sleep(1.0)  # the reader's read times out; it retries every 0.5 s
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
    xadd(url, "s", records(8, 12))
    thread.join(15)
    assert not thread.is_alive()
    assert numbers(got) == list(range(12))
    r.commit(got[-1].position)
    assert pending_count(url, "s", "lifelong") == 0
    r.close()


def test_a_server_that_stays_away_fails_the_stream_after_retry_seconds(redis_server_process_fixture, tmp_path):
    server = redis_server_process_fixture
    xadd(server.url, "s", records(0, 4))
    r = reader(server.url, context(tmp_path), timeout=0.3, idle_timeout=30.0, retry_seconds=1.0)
    stream = iter(r)
    next(stream)
    server.kill()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="has not answered"):
        next(stream)
    assert time.monotonic() - started < 5
    r.close()


def test_close_returns_while_the_reader_thread_waits(redis_server, tmp_path):
    r = reader(redis_server, context(tmp_path), idle_timeout=0, block_ms=1000)
    thread = threading.Thread(target=lambda: list(r), daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    r.close()
    thread.join(3)
    assert not thread.is_alive() and time.monotonic() - started < 2.5


# -- user errors ------------------------------------------------------------------------------------


def test_an_unreachable_server_is_a_user_error_within_the_timeout(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UserError, match=r"stream.url: the Redis server redis://127.0.0.1:\d+/0 did not answer"):
        reader(f"redis://127.0.0.1:{port}/0", context(tmp_path), timeout=1.0)
    assert time.monotonic() - started < 3
    with pytest.raises(UserError, match=r"redis://:\*\*\*@127"):  # the password is not shown
        reader(f"redis://:secret@127.0.0.1:{port}/0", context(tmp_path), timeout=1.0)


def test_a_key_that_is_not_a_stream_and_bad_options(redis_server, tmp_path):
    client(redis_server).set("s", "text")
    with pytest.raises(UserError, match="holds a string, not a stream"):
        reader(redis_server, context(tmp_path))
    with pytest.raises(ConfigError, match="url"):
        reader("http://127.0.0.1:1/0", context(tmp_path))
    for bad, match in [
        ({"stream": ""}, "stream must name"),
        ({"block_ms": 5000}, "block_ms"),
        ({"consumer": "x.claimed"}, "must not end"),
        ({"dead_letter_stream": "s"}, "must differ"),
        ({"start": "5"}, "start"),
    ]:
        with pytest.raises(ConfigError, match=match):
            options(redis_server, **bad)


def test_the_group_starts_at_the_end_with_start_dollar(redis_server, tmp_path):
    xadd(redis_server, "s", records(0, 4))
    r = reader(redis_server, context(tmp_path), start="$", idle_timeout=1.0)
    stream = iter(r)
    time.sleep(0.2)
    xadd(redis_server, "s", records(4, 6))
    assert numbers(list(stream)) == [4, 5]
    r.close()


def test_a_missing_redis_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` meets without the extra
    with pytest.raises(UserError, match=r"pip install 'lifelong\[redis\]'"):
        redis_reader(RedisOptions(stream="s", num_features=2, classes=["a"]), context(tmp_path))


# -- a real pipeline: checkpoint, then XACK ---------------------------------------------------------


def test_a_pipeline_acknowledges_exactly_what_its_checkpoints_hold(redis_server, tmp_path):
    """``lifelong run`` stops after 6 batches (the reader has read further: one reply holds every
    entry): the acknowledged entries are exactly those up to the final checkpoint's watermark, the
    rest stay pending. ``--resume`` trains the rest and leaves nothing pending."""
    from lifelong import checkpoint
    from tests.conftest import cli
    from tests.fixtures.broker_session import digits_stream, pipeline_toml

    stream = digits_stream(records=300, invalid=8, unlabeled=4)
    ids = xadd(redis_server, "digits", stream.messages)
    directory = tmp_path / "ckpt"
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(pipeline_toml("redis", redis_server, "digits", directory, every_batches=2, idle_timeout=1.0, strategies=()))
    args = ["run", str(pipeline), "--dead-letters", str(tmp_path / "dl.jsonl"), "--summary", str(tmp_path / "summary.json")]
    first = cli(*args, "--set", "learner.max_batches=6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    position = checkpoint.latest(directory).state["reader"]
    through = entry_id(position["cursor"]["through"])
    c = client(redis_server)
    pending = {p["message_id"].decode() for p in c.xpending_range("digits", "lifelong-test", "-", "+", 10_000)}
    delivered = entry_id(c.xinfo_groups("digits")[0]["last-delivered-id"])
    assert through < delivered  # read further than checkpointed
    assert pending == {i for i in ids if through < entry_id(i) <= delivered}  # XACKed = checkpointed, no more, no less
    assert json.loads((tmp_path / "summary.json").read_text())["samples_seen"] == 6 * 32

    second = cli(*args, "--resume", "--set", "learner.max_batches=0", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples_seen"] == 300
    assert summary["reader"]["unlabeled"] == 4 and summary["reader"]["records"] == len(ids)
    assert summary["dead_letters"]["count"] == 8
    assert pending_count(redis_server, "digits", "lifelong-test") == 0
