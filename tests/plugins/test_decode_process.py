"""The broker readers' decoding child (lifelong_brokers.decode_process): the same records as decoding in
the reader thread, a real forked process that holds nothing of the parent's, and what happens when it
or its parent is killed with a real signal."""

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

from lifelong_brokers.decode import Decoder
from lifelong_brokers.decode_process import MIN_FORKED, DecodeProcess
from lifelong_brokers.options import BrokerOptions

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
ROOT = Path(__file__).resolve().parents[2]


def decoder() -> Decoder:
    options = BrokerOptions(features=[], features_field="x", num_features=3, num_classes=3)
    options.check()
    return Decoder(options)


def poll(n: int = 100) -> list[bytes]:
    """Good records with a few bad ones among them."""
    out = [json.dumps({"x": [i, -i, 0.5], "label": i % 3}).encode() for i in range(n)]
    bad = [b"{broken", json.dumps({"x": [1, True, 2], "label": 1}).encode(), json.dumps({"x": [1, 2], "label": 1}).encode()]
    for i, message in zip(range(7, n, 13), bad):
        out[i] = message
    return out


def same(a, b) -> bool:
    return a.x.tobytes() == b.x.tobytes() and (a.labels, a.experiences, a.keys, a.timestamps, a.bad) == (b.labels, b.experiences, b.keys, b.timestamps, b.bad)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): it has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_poll_decodes_in_a_child_with_the_same_records():
    local, forked = decoder(), DecodeProcess(decoder(), "test")
    try:
        messages = poll()
        assert same(forked.decode_many(messages), local.decode_many(messages))
        [pid] = forked.pids
        assert pid != os.getpid() and alive(pid)
        assert same(forked.decode_many(messages[::-1]), local.decode_many(messages[::-1]))  # the same child again
        assert forked.pids == [pid]
        small = messages[: MIN_FORKED - 1]
        assert same(forked.decode_many(small), local.decode_many(small))
    finally:
        forked.close()
    assert not alive(pid)  # closing the pipe ends the child, and close reaps it


def test_small_polls_and_disabled_decode_in_the_reader_thread():
    small, off = DecodeProcess(decoder(), "test"), DecodeProcess(decoder(), "test", processes=0)
    small.decode_many(poll(MIN_FORKED - 1))
    off.decode_many(poll())
    assert small.pids == [] and off.pids == []


def test_the_child_holds_no_descriptor_of_the_parent(tmp_path):
    held = open(tmp_path / "held", "w")  # noqa: SIM115 - open across the fork on purpose
    forked = DecodeProcess(decoder(), "test")
    try:
        forked.decode_many(poll())
        [pid] = forked.pids
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        assert fds[:3] == [0, 1, 2] and len(fds) == 4, fds  # stdin, stdout, stderr and its pipe
        assert os.readlink(f"/proc/{pid}/fd/{fds[3]}").startswith("socket:")
    finally:
        forked.close()
        held.close()


def test_a_killed_child_is_said_once_and_decoding_goes_on_here(capsys):
    local, forked = decoder(), DecodeProcess(decoder(), "kafka:t")
    try:
        forked.decode_many(poll())
        [pid] = forked.pids
        os.kill(pid, signal.SIGKILL)
        messages = poll()
        assert same(forked.decode_many(messages), local.decode_many(messages))
        assert same(forked.decode_many(messages), local.decode_many(messages))
        assert forked.pids == [] and not alive(pid)
        said = capsys.readouterr().err
        assert said.count("kafka:t: the decoding process failed") == 1 and "decoding in the reader thread" in said
    finally:
        forked.close()


def test_the_child_ignores_sigterm_and_sigint():
    forked = DecodeProcess(decoder(), "test")
    try:
        forked.decode_many(poll())
        [pid] = forked.pids
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(pid, sig)
        time.sleep(0.2)
        assert alive(pid)
        forked.decode_many(poll())
        assert forked.pids == [pid]  # still the same child: it answered
    finally:
        forked.close()


def test_the_child_exits_when_the_training_process_is_killed(tmp_path):
    """kill -9 of the parent: the pipe closes, and the child exits on its own."""
    script = textwrap.dedent(
        f"""
        import json, os, sys, time
        sys.path[:0] = {[str(ROOT), str(ROOT / "plugins")]!r}
        from tests.plugins.test_decode_process import decoder, poll
        from lifelong_brokers.decode_process import DecodeProcess
        forked = DecodeProcess(decoder(), "test")
        forked.decode_many(poll())
        print(forked.pids[0], flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = None
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 60)  # a bounded wait for its first line
        assert ready, "the training process did not start its decoding child within 60 s"
        child = int(parent.stdout.readline())
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("processes", [1, 3])
def test_a_poll_in_parts_is_the_poll_decoded_whole(processes):
    local, forked = decoder(), DecodeProcess(decoder(), "test", processes=processes)
    try:
        messages = poll(300)
        parts = list(forked.decode_parts(messages, part=64))
        assert [start for start, _ in parts] == [0, 64, 128, 192, 256]
        for start, records in parts:
            assert same(records, local.decode_many(messages[start : start + 64]))
        assert len(forked.pids) == processes and len(set(forked.pids)) == processes  # the parts went round robin
        abandoned = forked.decode_parts(messages, part=64)
        next(abandoned)  # a caller that stops reading leaves parts asked for
        abandoned.close()
        whole = local.decode_many(messages)
        assert same(forked.decode_many(messages), whole)  # their stale answers are not taken for this one
        assert all(same(r, local.decode_many(messages[s : s + 64])) for s, r in forked.decode_parts(messages, part=64))
    finally:
        forked.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_killed_child_leaves_its_parts_and_the_rest_to_the_reader_thread(capsys, processes):
    local, forked = decoder(), DecodeProcess(decoder(), "test", processes=processes)
    try:
        messages = poll(300)
        list(forked.decode_parts(messages, part=100))
        children = forked.pids
        os.kill(children[-1], signal.SIGKILL)  # the last child dies between two polls
        got = list(forked.decode_parts(messages, part=100))
        assert [s for s, _ in got] == [0, 100, 200]
        for start, records in got:
            assert same(records, local.decode_many(messages[start : start + 100]))
        assert capsys.readouterr().err.count("the decoding process failed") == 1
        assert forked.pids == [] and not any(alive(pid) for pid in children)  # the others are stopped too
    finally:
        forked.close()


def test_auto_is_one_child_per_four_cpus(monkeypatch):
    from lifelong_brokers import decode_process

    for cpus, on_thread, in_process in [(1, 1, 0), (2, 1, 0), (4, 1, 1), (8, 2, 2), (16, 4, 4), (64, 4, 4)]:
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert decode_process.auto_processes() == on_thread
        assert decode_process.auto_processes(reader_process=True) == in_process
