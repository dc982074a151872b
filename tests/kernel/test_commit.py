"""Checkpoint, then commit: the kernel side of readers that acknowledge records to their source."""

from __future__ import annotations

import time

import pytest

from lifelong import checkpoint, config, pipeline
from lifelong.errors import ConfigError
from lifelong.host import PluginHost
from tests.conftest import QUIET
from tests.fixtures import committing_reader

PLUGIN = "tests.fixtures.committing_reader"


def runner(tmp_path, overrides, checkpoints=True) -> pipeline.Runner:
    directory = tmp_path / "ckpt"
    stream = ["stream.reader='committing'", f"stream.checkpoint_dir='{directory}'"]
    ckpt = [f"checkpoint.dir='{directory}'"] if checkpoints else []
    raw = config.load(None, [*QUIET, "tracking.trackers=[]", "model.hidden=[8]", *stream, *ckpt, *overrides])
    return pipeline.Runner(pipeline.build(PluginHost(plugins=[PLUGIN]), raw, tmp_path / "dead_letters.jsonl"))


@pytest.fixture(autouse=True)
def events():
    committing_reader.EVENTS.clear()
    yield committing_reader.EVENTS


def commits(events):
    return [e for e in events if e[0] == "commit"]


def test_every_commit_follows_the_durable_checkpoint_of_its_position(tmp_path, events):
    summary = runner(tmp_path, ["checkpoint.every_batches=2", "learner.batch_size=16"]).execute()
    done = commits(events)
    assert done, "a committing reader was never told to commit"
    for _, position, on_disk in done:
        assert on_disk == position  # the newest checkpoint on disk already holds what is committed
    assert done[-1][1] == {"next": 256}  # the end of the stream is committed, after the last checkpoint
    assert events[-1] == ("close",) and events.count(("close",)) == 1
    assert summary["samples_seen"] == 256


def test_a_committing_reader_needs_a_checkpoint_directory(tmp_path, events):
    with pytest.raises(ConfigError) as error:
        runner(tmp_path, [], checkpoints=False)
    assert "checkpoint.dir" in str(error.value) and "commit" in str(error.value)


def test_the_reader_is_closed_when_the_run_fails(tmp_path, events):
    raw = config.load(None, [*QUIET, "tracking.trackers=[]", "model.hidden=[8]", "stream.reader='committing'",
                             f"checkpoint.dir='{tmp_path / 'c'}'", "learner.strategies=['recorder']", "strategy.recorder.fail_after=3"])
    plan = pipeline.build(PluginHost(plugins=[PLUGIN, "tests.fixtures.recorder"]), raw, tmp_path / "dead_letters.jsonl")
    with pytest.raises(RuntimeError, match="failing as configured"):
        pipeline.Runner(plan).execute()
    assert events.count(("close",)) == 1


def test_max_seconds_ends_a_run_whose_stream_went_quiet_and_commits_what_it_trained(tmp_path, events):
    started = time.monotonic()
    summary = runner(tmp_path, ["stream.stall_after=64", "learner.batch_size=16", "learner.max_seconds=1.5"]).execute()
    assert time.monotonic() - started < 60
    assert summary["samples_seen"] == 64 and len(summary["generations"]) == 1
    assert commits(events)[-1][1] == {"next": 64} and events[-1] == ("close",)


def test_max_records_stops_after_the_batch_that_reaches_it(tmp_path, events):
    summary = runner(tmp_path, ["learner.batch_size=16", "learner.max_records=40"]).execute()
    assert summary["samples_seen"] == 48
    assert commits(events)[-1][1] == {"next": 48}


def test_a_checkpoint_the_reader_asks_for_is_written_while_the_stream_is_quiet(tmp_path, events):
    # The reader stalls after 64 records and asks for a checkpoint of them (as a Kafka consumer does
    # when it loses partitions): nothing else would checkpoint before max_seconds ends the run.
    summary = runner(tmp_path, ["stream.stall_after=64", "stream.want_checkpoint_after=64", "learner.batch_size=16",
                                "learner.max_seconds=3"]).execute()
    asked = [e for e in commits(events) if e[1] == {"next": 64}]
    assert len(asked) >= 2  # the asked-for one while waiting, and the final one at the end
    steps = [checkpoint.read(p).step for p in checkpoint.checkpoints(tmp_path / "ckpt")]
    assert summary["samples_seen"] == 64 and steps


def test_reader_counts_are_those_of_the_last_trained_batch(tmp_path, events):
    summary = runner(tmp_path, ["learner.batch_size=16", "learner.max_records=100", "stream.unlabeled_every=10"]).execute()
    assert summary["reader"] == {"unlabeled": 11}  # 112 records trained, not the ones read ahead


def test_waits_for_a_quiet_source_are_not_training_time(tmp_path, events):
    summary = runner(tmp_path, ["stream.stall_after=64", "learner.batch_size=16", "learner.max_seconds=2"]).execute()
    assert summary["quiet_seconds"] > 1.0  # the stalled stream's wait until max_seconds
    assert summary["training_seconds"] < summary["wall_seconds"] - 1.0
