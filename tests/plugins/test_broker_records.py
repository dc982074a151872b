"""The broker readers' shared part without a broker: options, decoding, and the assembler (batches,
classes, unlabeled records, held-out sets, positions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.readers import DeadLetters, ReaderContext
from lifelong_brokers.assemble import Assembler, held_out
from lifelong_brokers.decode import BadRecord, Decoder, raw_record
from lifelong_brokers.options import BrokerOptions


def options(**kw) -> BrokerOptions:
    o = BrokerOptions(**{"features": ["a", "b"], "num_classes": 3, **kw})
    o.check()
    return o


def context(tmp_path, batch_size=4, seed=0) -> ReaderContext:
    return ReaderContext(batch_size=batch_size, seed=seed, dead_letter=DeadLetters(tmp_path / "dl.jsonl", run="r"))


def dead(tmp_path) -> list[dict]:
    path = tmp_path / "dl.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def msg(**fields) -> bytes:
    return json.dumps(fields).encode()


# -- options --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, words",
    [
        ({"features": [], "num_features": 0}, "features_field"),
        ({"classes": None, "num_classes": 0}, "num_classes"),
        ({"format": "csv"}, "columns"),
        ({"format": "csv", "columns": ["a", "label"], "experience": "e"}, "experience column 'e'"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"experience": "e", "experience_records": 10}, "not both"),
        ({"classes": ["a", " a"]}, "distinct"),
        ({"batch_timeout": 0.0}, "batch_timeout"),
        ({"features": ["a", "label"]}, "feature field is also"),
    ],
)
def test_options_refuse_what_cannot_work(kw, words):
    with pytest.raises(ValueError, match=words):
        BrokerOptions(**{"features": ["a", "b"], "num_classes": 3, **kw}).check()


# -- decoding -------------------------------------------------------------------------------------------
def test_json_features_by_name_and_by_array():
    named = Decoder(options(experience="e", key="id", timestamp="ts"))
    r = named.decode(msg(a=1, b="2.5", label=3.0, e=2.0, id=17, ts=1.5))
    assert r.x.dtype == np.float32 and r.x.tolist() == [1.0, 2.5]
    assert (r.label, r.experience, r.key, r.timestamp) == ("3", 2, "17", 1.5)
    assert named.decode(msg(a=1, b=2, label=3, e=0, id="k")).label == "3"  # 3 and 3.0: one class
    assert named.decode(msg(a=1, b=2, label=" cat ", e=0, id="k")).label == "cat"
    array = Decoder(options(features=[], features_field="x", num_features=3))
    assert array.decode(msg(x=[1, 2, 3], label="a")).x.tolist() == [1.0, 2.0, 3.0]
    assert array.feature_names is None and array.num_features == 3
    for unlabeled in (msg(x=[1, 2, 3]), msg(x=[1, 2, 3], label=None), msg(x=[1, 2, 3], label="  ")):
        assert array.decode(unlabeled).label is None


def test_csv_lines():
    d = Decoder(options(format="csv", columns=["a", "label", "b", "e"], experience="e"))
    assert d.feature_names == ["a", "b"]
    r = d.decode(b"1.5,cat,2,3\r\n")
    assert r.x.tolist() == [1.5, 2.0] and r.label == "cat" and r.experience == 3
    assert d.decode(b"1,,2,0").label is None  # an empty label: unlabeled
    assert d.decode(b'1,"a,b",2,0').label == "a,b"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xff{}", "not valid UTF-8: byte 0xff at position 0"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object (got a list)"),
        (msg(b=1, label="x"), "feature field 'a' is missing"),
        (msg(a="one", b=1, label="x"), "feature field 'a' is not a number: 'one'"),
        (msg(a=True, b=1, label="x"), "feature field 'a' is not a number: boolean"),
        (b'{"a": NaN, "b": 1, "label": "x"}', "feature field 'a' is nan (NaN or infinite)"),
        (b'{"a": 1e400, "b": 1, "label": "x"}', "feature field 'a' is inf (NaN or infinite)"),
        (msg(a=1, b=1e39, label="x"), "feature field 'b' is 1e+39, beyond float32's range"),
        (msg(a=1, b=2, label=[1]), "label field 'label' is not text or a number: list"),
        (msg(a=1, b=2, label="x", e=-1), "experience field 'e' is not a non-negative integer"),
        (msg(a=1, b=2, label="x", e=2.5), "experience field 'e' is not a non-negative integer"),
        (msg(a=1, b=2, label="x"), "experience field 'e' is missing"),
    ],
)
def test_json_failures_name_the_field(data, reason):
    with pytest.raises(BadRecord) as info:
        Decoder(options(experience="e")).decode(data)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"1,cat", "expected 3 columns, got 2"),
        (b"1,cat,x", "feature column 'b' is not a number: 'x'"),
        (b"1,cat,inf", "feature column 'b' is inf (NaN or infinite)"),
        (b"1,cat,3.5e38", "feature column 'b' is 3.5e+38, beyond float32's range"),
        (b"1,cat,2\n3,dog,4", "one line"),
    ],
)
def test_csv_failures_name_the_column(data, reason):
    with pytest.raises(BadRecord) as info:
        Decoder(options(format="csv", columns=["a", "label", "b"])).decode(data)
    assert reason in str(info.value)


def test_array_width_and_items():
    d = Decoder(options(features=[], features_field="x", num_features=2))
    with pytest.raises(BadRecord, match="has 3 values, expected num_features = 2"):
        d.decode(msg(x=[1, 2, 3], label="a"))
    with pytest.raises(BadRecord, match=r"features field 'x'\[1\] is not a number"):
        d.decode(msg(x=[1, "z"], label="a"))
    with pytest.raises(BadRecord, match=r"features field 'x'\[0\] is 1e\+39, beyond float32"):
        d.decode(msg(x=[1e39, 1], label="a"))


def test_raw_record_keeps_the_bytes():
    assert raw_record(b'{"a": 1}') == '{"a": 1}'
    assert raw_record(b"\xff\x00") == {"base64": "/wA="}


# -- the assembler --------------------------------------------------------------------------------------
def feed(asm: Assembler, messages, start=0, topic="t:0"):
    """Offer messages in order; the batches returned, as the reader would yield them."""
    out = []
    for i, m in enumerate(messages, start):
        batch = asm.offer(m, key=f"k{i}", source="kafka:t[0]", offset=i, cursor=(topic, i + 1))
        if batch is not None:
            out.append(batch)
    return out


def rows(n, label=lambda i: i % 3, exp=None):
    return [msg(a=i, b=-i, label=label(i), **({} if exp is None else {"e": exp(i)})) for i in range(n)]


def test_batches_cut_where_the_experience_changes(tmp_path):
    asm = Assembler(options(experience="e", classes=["0", "1", "2"], num_classes=0), context(tmp_path), "kafka:t")
    batches = feed(asm, rows(10, exp=lambda i: 0 if i < 6 else 1))
    assert asm.end() is None  # the last batch was full
    assert [(b.experience, len(b), b.start, b.stop) for b in batches] == [(0, 4, 0, 4), (0, 2, 4, 6), (1, 4, 6, 10)]
    assert batches[0].x[:, 0].tolist() == [0, 1, 2, 3] and batches[1].position["cursor"] == {"t:0": 6}
    assert asm.info().experiences is None and asm.info().feature_names == ["a", "b"]


def test_declared_classes_dead_letter_unknown_labels(tmp_path):
    asm = Assembler(options(classes=["b", "a"], num_classes=0), context(tmp_path), "kafka:t")
    batch = feed(asm, [msg(a=1, b=1, label="a"), msg(a=2, b=2, label="z"), msg(a=3, b=3, label="b")]) or [asm.flush()]
    assert batch[0].y.tolist() == [1, 0]
    [letter] = dead(tmp_path)
    assert letter["reason"] == "label 'z' in field 'label' is not one of the declared classes"
    assert (letter["source"], letter["offset"], json.loads(letter["record"])["a"]) == ("kafka:t[0]", 1, 2)


def test_open_classes_take_the_next_index_and_are_logged_once(tmp_path, capsys):
    asm = Assembler(options(num_classes=2), context(tmp_path, batch_size=100), "kafka:t")
    feed(asm, [msg(a=i, b=0, label=lab) for i, lab in enumerate(["cat", "dog", "cat", "eel", "dog"])])
    batch = asm.flush()
    assert batch.y.tolist() == [0, 1, 0, 1]
    err = capsys.readouterr().err
    assert err.count("new class 'cat' → index 0") == 1 and err.count("new class 'dog' → index 1") == 1
    assert [d["reason"] for d in dead(tmp_path)] == [
        "label 'eel' in field 'label' is a new class, but all num_classes = 2 head slots are taken"
    ]
    assert asm.info().class_names == ["cat", "dog"] and asm.counts(batch.position)["new_classes"] == 2


def test_unlabeled_records_are_counted_not_trained(tmp_path):
    asm = Assembler(options(), context(tmp_path, batch_size=100), "kafka:t")
    feed(asm, rows(9, label=lambda i: None if i % 3 == 0 else "x"))
    batch = asm.flush()
    assert batch.x[:, 0].tolist() == [1, 2, 4, 5, 7, 8]
    assert asm.counts(batch.position) == {"records": 9, "unlabeled": 3, "held_out": 0, "new_classes": 1}
    assert dead(tmp_path) == []


def test_held_out_is_a_hash_of_seed_and_key(tmp_path):
    def held(seed):
        asm = Assembler(options(test_fraction=0.3, test_size=1000), context(tmp_path, batch_size=1000, seed=seed), "kafka:t")
        feed(asm, rows(200))
        asm.end()
        return asm.test_set(0).x[:, 0].tolist()

    first = held(0)
    assert first == held(0) and first != held(1)
    assert 30 < len(first) < 90  # ~60 of 200
    assert first == [i for i in range(200) if held_out(0, f"k{i}", 0.3)]


def test_one_set_is_handed_out_once_full_and_bounded(tmp_path):
    asm = Assembler(options(test_fraction=0.5, test_size=5), context(tmp_path, batch_size=1000), "kafka:t")
    assert asm.info().experiences == [0]
    feed(asm, rows(12))
    assert asm.test_set(0) is None or len(asm.test_set(0)) == 5
    feed(asm, rows(100), start=12)
    assert len(asm.test_set(0)) == 5
    batch = asm.flush()
    assert len(batch) == 112 - 5 and asm.counts(batch.position)["held_out"] == 5


def test_windows_of_experience_records(tmp_path):
    asm = Assembler(options(experience_records=5, test_fraction=0.3), context(tmp_path, batch_size=100), "kafka:t")
    batches = feed(asm, rows(12)) + [asm.end()]
    assert [b.experience for b in batches] == [0, 1, 2]
    assert asm.test_set(0) is not None or asm.test_set(1) is not None


def test_batch_timeout_counts_from_the_oldest_pending_record(tmp_path):
    asm = Assembler(options(batch_timeout=2.0), context(tmp_path), "kafka:t")
    assert asm.wait_time() == float("inf") and not asm.due()
    feed(asm, rows(1))
    now = asm._since
    assert asm.wait_time(now + 0.5) == pytest.approx(1.5) and not asm.due(now + 1.9) and asm.due(now + 2.0)


def test_a_seek_gives_the_same_batches_and_test_sets(tmp_path):
    opts = options(experience="e", test_fraction=0.25, num_classes=3)
    data = rows(40, exp=lambda i: i // 15) + [b"bad"] + rows(40, exp=lambda i: 2 + i // 15)[5:]
    whole = Assembler(opts, context(tmp_path / "a"), "kafka:t")
    batches = feed(whole, data) + [whole.end()]
    for k in (2, 4, 7):
        resumed = Assembler(opts, context(tmp_path / f"b{k}"), "kafka:t")
        cursor = resumed.restore(json.loads(json.dumps(batches[k].position)))  # positions are plain JSON
        rest = feed(resumed, data[cursor["t:0"] :], start=cursor["t:0"]) + [resumed.end()]
        assert len(rest) == len(batches) - k - 1
        for a, b in zip(batches[k + 1 :], rest):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.position == b.position
        for exp in range(4):
            if whole.test_set(exp) is not None and exp >= batches[k].experience:
                assert torch.equal(whole.test_set(exp).x, resumed.test_set(exp).x)
        assert resumed.counts(rest[-1].position) == whole.counts(batches[-1].position)


def test_drop_forgets_pending_rows_of_revoked_partitions(tmp_path):
    asm = Assembler(options(), context(tmp_path, batch_size=10), "kafka:t")
    feed(asm, rows(3), topic="t:0")
    feed(asm, rows(2), start=3, topic="t:1")
    assert asm.drop({"t:1"}) == 2
    batch = asm.flush()
    assert batch.x[:, 0].tolist() == [0, 1, 2] and batch.position["cursor"] == {"t:0": 3}


def test_a_held_out_record_read_again_is_neither_trained_nor_held_twice(tmp_path):
    asm = Assembler(options(test_fraction=0.5, test_size=100), context(tmp_path, batch_size=100), "kafka:t")
    data = rows(20)
    feed(asm, data)
    feed(asm, data)  # the same offsets again, as after a rebalance
    batch = asm.end()
    trained = batch.x[:, 0].tolist()
    held = asm.test_set(0).x[:, 0].tolist()
    assert len(held) == len(set(held)) and not set(held) & set(trained)


# -- decoding a poll in bulk ------------------------------------------------------------------------------
def same_as_one_by_one(decoder: Decoder, messages: list) -> None:
    """decode_many gives, row by row, exactly what decode / decode_object gives each message alone."""
    records = decoder.decode_many(messages)
    assert len(records) == len(messages)
    for i, message in enumerate(messages):
        try:
            r = decoder.decode_object(message) if isinstance(message, dict) else decoder.decode(message)
        except BadRecord as bad:
            assert records.bad.get(i) == str(bad), (i, message)
            continue
        assert i not in records.bad, (i, message, records.bad.get(i))
        assert records.x[i].tobytes() == r.x.tobytes(), (i, message)
        got = (records.labels[i], records.experiences[i], records.keys[i], records.timestamps[i])
        assert got == (r.label, r.experience, r.key, r.timestamp), (i, message)
        assert [type(v) for v in got] == [type(v) for v in (r.label, r.experience, r.key, r.timestamp)], (i, message)


HOSTILE_ARRAYS = [
    msg(x=[1, 2.5, -3], label=3),
    msg(x=[1, 2.5, -3], label=3.0),  # the same class as 3
    msg(x=[0.1, 0.2, 0.3], label=" cat "),
    msg(x=[1, 2, 3], label="  "),  # unlabeled
    msg(x=[1, 2, 3]),
    msg(x=[1, True, 3], label="a"),  # a boolean is not a number, though numpy would read it as 1.0
    msg(x=[1, 2, 3], label=True),
    msg(x=[1, 2, 3], label="true story"),  # the word alone sends it one by one, and it is good
    msg(x=[1, "2", 3], label="a"),  # text spelling a number
    msg(x=[1, "two", 3], label="a"),
    msg(x=[1, None, 3], label="a"),
    msg(x=[1, 2], label="a"),
    msg(x=[1, 2, 3, 4], label="a"),
    msg(x=[[1], [2], [3]], label="a"),
    msg(x="[1, 2, 3]", label="a"),
    msg(x={"a": 1}, label="a"),
    msg(y=[1, 2, 3], label="a"),
    msg(x=[1, 2, 1e39], label="a"),  # beyond float32
    msg(x=[1, 2, 3.4e38], label="a"),
    msg(x=[1, 2, 10**30], label="a"),
    msg(x=[1, 2, 10**400], label="a"),
    msg(x=[1, 2, 3], label=[1]),
    msg(x=[1, 2, 3], label={"a": 1}),
    msg(x=[1, 2, 3], label=2**70),
    b'{"x": [1, 2, NaN], "label": "a"}',
    b'{"x": [1, 2, 1e400], "label": "a"}',
    b'{"x": [1, 2, 3], "label": NaN}',
    b"[1, 2, 3]",
    b"{not json",
    b"",
    b"\xff\xfe",
    '{"x": [1, 2, 3], "label": "text, not bytes"}',
]


def test_a_poll_decoded_in_bulk_reads_as_each_message_alone():
    decoder = Decoder(options(features=[], features_field="x", num_features=3))
    good = [msg(x=[i, -i, 0.5], label=i % 3) for i in range(4)]
    for message in HOSTILE_ARRAYS:  # each among good messages, where the bulk path reads the whole poll
        same_as_one_by_one(decoder, [*good[:2], message, *good[2:]])
    same_as_one_by_one(decoder, HOSTILE_ARRAYS)
    same_as_one_by_one(decoder, HOSTILE_ARRAYS[::-1])
    records = decoder.decode_many(good)
    assert records.x.tolist() == [[i, -i, 0.5] for i in range(4)] and records.labels == ["0", "1", "2", "0"]


# Each holds one "[" and one "x" key, so a poll of them is read by simdjson, not sent whole to orjson.
SIMD_HOSTILE = [
    b'{"x": [1, 2, 3], "label": "a", "label": "b"}',  # duplicate keys: orjson (and decode) keep the last
    b'{"x": [1, 2, 3], "label": {"a": 1}}',
    b'{"x": [1, "2", 3], "label": "a"}',
    b'{"x": [1, null, 3], "label": "a"}',
    b'{"x": [1, 2], "label": "a"}',
    b'{"x": [1, 2, 3, 4], "label": "a"}',
    b'{"x": [1, 2, 1e39], "label": "a"}',
    b'{"x": [1, 2, 1e400], "label": "a"}',
    b'{"x": [1, 2, 100000000000000000000000], "label": "a"}',
    b'{"x": [1, 2, 18446744073709551615], "label": 7}',
    b'{"x": [1, 2, NaN], "label": "a"}',
    b'{"x": [1, 2, 3], "label": NaN}',
    b'{"x": [1, true, 3], "label": "a"}',
    b'{"x": [1, 2, 3], "label": 3.0}',
    b'{"x": [-0.0, 2.5e-3, 3], "label": " cat "}',
    b'{"x": [0.1, 0.2, 0.3]}',
    b'{"x": [0.1, 0.2, 0.3], "label": null}',
    b'{"x": {"y": [1, 2, 3]}, "label": "a"}',
    b'{"x": [1, 2, 3], "label": "a"',
    b'{"x": [1, 2, 3], "label": "a"} trailing',
]


def test_a_poll_read_by_simdjson_reads_as_each_message_alone(monkeypatch):
    decoder = Decoder(options(features=[], features_field="x", num_features=3))
    assert decoder._simd is not None  # the kafka and redis extras bring pysimdjson
    good = [msg(x=[i, -i, 0.5], label=i % 3) for i in range(4)]
    whole = []
    monkeypatch.setattr(decoder, "_parse", lambda *a: whole.append(a) or Decoder._parse(decoder, *a))
    for message in SIMD_HOSTILE:
        same_as_one_by_one(decoder, [*good[:2], message, *good[2:]])
    same_as_one_by_one(decoder, SIMD_HOSTILE)
    assert whole == []  # no poll was sent whole to orjson
    same_as_one_by_one(decoder, [*good, b'{"x": [[1], 2, 3], "label": "a"}'])  # nested: flattened by simdjson
    same_as_one_by_one(decoder, [*good, b'{"x": [1, 2, 3], "x": [4, 5, 6], "label": "a"}'])
    same_as_one_by_one(decoder, [*good, b'{"label": "a", "x": [1, 2, 3], "\\u006cabel": "b"}'])  # a duplicate key, escaped
    assert len(whole) == 3  # those three polls went whole to orjson


def test_named_fields_experience_key_and_timestamp_in_bulk():
    decoder = Decoder(options(experience="e", key="id", timestamp="ts"))
    poll = [
        msg(a=1, b=2, label="x", e=0, id=1, ts=1.5),
        msg(a=1, b=2, label="x", e=2.0, id=" k ", ts="2026-11-30"),
        msg(a=1.5, b=-2, label=4, e=1, id=3.0, ts=None),
        msg(a=1, b=2, label="x", e=-1, id=1, ts=1),
        msg(a=1, b=2, label="x", e=2.5, id=1, ts=1),
        msg(a=1, b=2, label="x", id=1, ts=1),
        msg(a=1, b=2, label="x", e=0, ts=1),
        msg(a=1, b=2, label="x", e=0, id=[1], ts=1),
        msg(a=1, b=2, label="x", e=0, id=1, ts=[1]),
        msg(a=1, b="2", label="x", e=0, id=1, ts=1),
        msg(b=2, label="x", e=0, id=1, ts=1),
        msg(a=1, b=2, label="x", e=2**53, id=1, ts=1),
        msg(a=1, b=2, label="x", e="3", id=1, ts=1),
    ]
    for message in poll:
        same_as_one_by_one(decoder, [*poll[:3], message, *poll[:3]])
    same_as_one_by_one(decoder, poll)
    fields = {"a": b"1", "b": b"2.5", "label": b"x", "e": b"0", "id": b"k", "ts": b"1"}  # a Redis field map
    same_as_one_by_one(decoder, [poll[0], fields, poll[1]])


def test_csv_polls_decode_one_by_one():
    decoder = Decoder(options(format="csv", columns=["a", "label", "b"]))
    same_as_one_by_one(decoder, [b"1,cat,2", b"1,cat", b"1,cat,x", b"1.5,dog,3.5e38", b"2,,3"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(
    st.sampled_from(["x", "label", "other"]),
    st.one_of(
        st.lists(st.one_of(st.floats(allow_nan=False, width=64), st.integers(), st.booleans(), st.none(), st.text(max_size=3)),
                 min_size=2, max_size=4),
        st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6), min_size=3, max_size=3),
        st.integers(), st.floats(), st.text(max_size=4), st.booleans(), st.none(),
    ),
), min_size=1, max_size=12))
def test_any_poll_of_json_objects_reads_as_each_message_alone(objects):
    messages = [json.dumps(o).encode() for o in objects]  # json writes NaN and Infinity, which orjson refuses
    same_as_one_by_one(Decoder(options(features=[], features_field="x", num_features=3)), messages)


# -- accepting a poll in runs ------------------------------------------------------------------------------
def assembled(tmp_path, name, opts, batch_size, polls, in_runs):
    """Feed polls of messages to a fresh assembler, message by message (accept) or in runs (accept_all);
    what came out: the batches (with their positions), dead letters, test sets and the final position."""
    (tmp_path / name).mkdir()
    asm = Assembler(opts, context(tmp_path / name, batch_size=batch_size), "kafka:t")
    out, offset = [], 0
    for messages in polls:
        records = asm.decoder.decode_many(messages)
        cursors = [(f"t:{(offset + i) % 2}", offset + i + 1) for i in range(len(messages))]
        describe = lambda i, base=offset: (f"k{base + i}", "kafka:t[0]", base + i)  # noqa: E731
        if in_runs:
            out += list(asm.accept_all(records, messages, cursors, describe))
        else:
            for i, message in enumerate(messages):
                key, source, off = describe(i)
                batch = asm.accept(records, i, message, key=key, source=source, offset=off, cursor=cursors[i])
                out += [batch] if batch is not None else []
        offset += len(messages)
    out += [b for b in [asm.end()] if b is not None]
    batches = [(b.x.numpy().tobytes(), b.y.tolist(), b.experience, b.start, b.stop, b.position) for b in out]
    sets = {e: (s.x.numpy().tobytes(), s.y.tolist()) for e in range(8) if (s := asm.test_set(e)) is not None}
    return batches, dead(tmp_path / name), sets, asm.position()


def record_polls(draw_labels, sizes, experiences=None):
    labels = iter(draw_labels)
    polls, n = [], 0
    for size in sizes:
        poll = []
        for _ in range(size):
            label = next(labels)
            fields = {"a": n, "b": -n, **({} if label is None else {"label": label}), **({} if experiences is None else {"e": experiences(n)})}
            poll.append(b"{broken" if label == "BAD" else msg(**fields))
            n += 1
        polls.append(poll)
    return polls


LABELS = st.sampled_from(["0", "1", "2", 0, 1.0, None, "  ", "new", "other", "BAD"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    labels=st.lists(LABELS, min_size=120, max_size=120),
    sizes=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    batch_size=st.integers(1, 9),
    declared=st.booleans(),
    held=st.sampled_from([0.0, 0.3]),
    windows=st.sampled_from([0, 7]),
    experience_field=st.booleans(),
)
def test_accepting_a_poll_in_runs_gives_what_accepting_each_message_gives(tmp_path_factory, labels, sizes, batch_size, declared,
                                                                          held, windows, experience_field):
    tmp_path = tmp_path_factory.mktemp("runs")
    kw = {"classes": ["0", "1", "2"], "num_classes": 0} if declared else {"num_classes": 4}
    kw.update(test_fraction=held, test_size=5)
    if experience_field:
        kw["experience"] = "e"
    elif windows:
        kw["experience_records"] = windows
    polls = record_polls(labels, sizes, (lambda n: n // 11) if experience_field else None)
    one = assembled(tmp_path, "one", options(**kw), batch_size, polls, in_runs=False)
    runs = assembled(tmp_path, "runs", options(**kw), batch_size, polls, in_runs=True)
    assert runs == one


def test_runs_are_taken_in_bulk_where_nothing_but_the_batch_changes(tmp_path):
    """The common case does go through the bulk path (accept is not called for it), and cuts batches."""
    asm = Assembler(options(classes=["0", "1", "2"], num_classes=0), context(tmp_path, batch_size=4), "kafka:t")
    messages = rows(11)
    records = asm.decoder.decode_many(messages)
    accepted = []
    original = asm.accept
    asm.accept = lambda *a, **kw: accepted.append(a[1]) or original(*a, **kw)
    batches = list(asm.accept_all(records, messages, [("t:0", i + 1) for i in range(11)], lambda i: (f"k{i}", "kafka:t[0]", i)))
    assert accepted == [0]  # the first record sets the experience; the rest come in runs
    assert [(b.start, b.stop, b.x[:, 0].tolist(), b.position["cursor"]) for b in batches] == [
        (0, 4, [0, 1, 2, 3], {"t:0": 4}), (4, 8, [4, 5, 6, 7], {"t:0": 8})]
    assert asm.flush().x[:, 0].tolist() == [8, 9, 10]


def test_a_row_bad_in_a_later_field_is_dead_lettered_not_taken_in_a_run(tmp_path):
    """The bulk pass reads a row's label before finding its key bad: the row is still a dead letter."""
    asm = Assembler(options(classes=["0", "1", "2"], num_classes=0, key="id"), context(tmp_path, batch_size=100), "kafka:t")
    messages = [msg(a=i, b=0, label="1", id=[i] if i == 5 else i) for i in range(40)]
    records = asm.decoder.decode_many(messages)
    assert 5 in records.bad and records.labels[5] is None
    list(asm.accept_all(records, messages, [("t:0", i + 1) for i in range(40)], lambda i: (None, "kafka:t[0]", i)))
    assert asm.flush().x[:, 0].tolist() == [i for i in range(40) if i != 5]
    assert [d["offset"] for d in dead(tmp_path)] == [5]
