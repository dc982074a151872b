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


def job_then_joiner(tmp_path: Path, kafka_broker: str, trickle, a_ready, a_idle: float, b_idle: float,
                    events: dict[str, threading.Event], stream: dict | None = None) -> tuple[list[Counter], Counter]:
    """A 2-rank job A trains topic ``digits`` while ``trickle`` produces; once ``a_ready(a)``, a single-process
    trainer B joins the group (``events["b_joined"]``), trains 4 batches and leaves (``events["b_left"]``), and A
    runs to its end. Both exit 0; no revocation gave up waiting for its commit, no member was dropped from
    the group, no hold or leave ran out of time. Returns A's keys per rank and B's, from their checkpoints."""
    def pipeline(name: str, idle_timeout: float, every_batches: int) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(pipeline_toml(
            "kafka", kafka_broker, "digits", tmp_path / f"ckpt-{name}", log_dir=tmp_path / f"log-{name}", batch_size=16,
            every_batches=every_batches, idle_timeout=idle_timeout, stream=stream,
        ))
        return path

    producer = threading.Thread(target=trickle, daemon=True)
    a = Trainer(["run", "--nproc", "2", str(pipeline("a", idle_timeout=a_idle, every_batches=10))], tmp_path, "a")
    b, ranks = None, []
    try:
        producer.start()
        deadline = time.monotonic() + 90
        while not a_ready(a):
            assert a.popen.poll() is None and time.monotonic() < deadline, a.stderr()
            time.sleep(0.2)
        ranks = rank_pids(a)
        b = Trainer(["run", str(pipeline("b", idle_timeout=b_idle, every_batches=3)), "--set", "learner.max_batches=4"], tmp_path, "b")
        events["b_joined"].set()
        assert b.wait(120) == 0, b.stderr()
        events["b_left"].set()
        producer.join(60)
        assert not producer.is_alive()
        assert a.wait(180) == 0, a.stderr()
    finally:
        events["stop"].set()
        events["b_left"].set()
        kill_job(a, ranks)
        if b is not None and b.popen.poll() is None:
            b.signal(signal.SIGKILL)
    for trainer in (a, b):
        err = trainer.err.read_text()
        given_up = ("gave up partitions", "lost partitions", "stopped waiting", "leaves the group after")
        assert not any(s in err for s in given_up), trainer.stderr()
    b_keys = Counter(checkpoint.latest(tmp_path / "ckpt-b").state["strategies"]["key-log"]["keys"].tolist())
    return rank_keys(tmp_path / "ckpt-a"), b_keys


def scenario_events() -> dict[str, threading.Event]:
    return {name: threading.Event() for name in ("b_joined", "b_left", "stop")}


@pytest.mark.parametrize("assignment", ["range", "cooperative-sticky"])
def test_a_rebalance_while_ranks_train_trains_every_record_once(tmp_path, kafka_broker, assignment):
    """A 2-rank job (A) trains a 4-partition topic while records trickle in; a single-process trainer B
    joins the group, trains 4 batches and leaves. Each rebalance revokes partitions from ranks in the
    middle of training: a rank's reader asks for a checkpoint, the ranks agree on it at their next step,
    rank 0 makes it durable, each rank commits its own offsets, and only then does the partition move
    (eager: once every rank has committed, the kernel relaying the ranks' holds; a hold never runs out).

    Every valid record is trained exactly once across rank 0, rank 1 and B, and the group's committed
    offsets end at the end of every partition. Eager ("range", the default: both ranks lose every
    partition at each rebalance) and cooperative ("cooperative-sticky": only the partitions that move)."""
    create_topic(kafka_broker, "digits", partitions=4)
    data = digits_stream(records=1400, invalid=0, unlabeled=6, seed=8)
    messages = as_messages(data)
    produce(kafka_broker, "digits", messages[:300])
    told = scenario_events()

    def trickle():  # 30 records a second until B has left (A keeps training meanwhile), then the rest at once
        at = 300
        while at < len(messages) and not told["stop"].is_set():
            size = 30 if not told["b_left"].wait(1.0) else len(messages)
            produce(kafka_broker, "digits", messages[at : at + size])
            at += size

    def both_ranks_train(_a: Trainer) -> bool:
        trained = [len(keys) for keys in logged_keys(tmp_path / "log-a").values()]
        return len(trained) == 2 and min(trained) >= 32 and sum(trained) >= 200

    # cooperative: a partition B gives back reaches a rank in two rebalance rounds (~11 s with Tansu), after
    # the last records came; range (eager): one round
    a_idle, b_idle = (10.0, 5.0) if assignment == "range" else (15.0, 25.0)
    per_rank, b_keys = job_then_joiner(tmp_path, kafka_broker, trickle, both_ranks_train, a_idle, b_idle, told,
                                       stream={"consumer": {"partition.assignment.strategy": assignment}})
    trained = sum(per_rank, Counter()) + b_keys
    assert not [k for k, n in trained.items() if n > 1], "keys trained twice"
    assert sorted(trained) == sorted(data.valid), "lost or unexpected keys"
    assert all(sum(keys.values()) > 0 for keys in per_rank), [sum(k.values()) for k in per_rank]
    assert 0 < sum(b_keys.values()) <= 4 * 16  # B took partitions from the ranks and trained them
    # the ranks trained nothing the final checkpoint lacks (no work done twice, once forgotten)
    assert sum(len(keys) for keys in logged_keys(tmp_path / "log-a").values()) == len(data.valid) - sum(b_keys.values())
    assert committed_offsets(kafka_broker, "lifelong-test", "digits") == end_offsets(kafka_broker, "digits")


def test_a_member_joining_after_a_rank_s_stream_ended_trains_every_record_once(tmp_path, kafka_broker):
    """A 2-rank job (A) on a 2-partition topic whose records all go to partition 0 at first: rank 1,
    assigned partition 1 (range: members sorted by id), has nothing to read and its stream ends on
    ``idle_timeout`` while rank 0 trains on. Rank 1 then leaves the group once what it trained is
    committed, and rank 0 takes partition 1 over. A single-process trainer B then joins (range gives it
    partition 1 once the group has rebalanced), is sent records on partition 1 too, trains 4 batches and
    leaves. Had rank 1 stayed a member
    without polling, the group would have assigned it partition 1 and nobody would have read it.

    Every valid record is trained exactly once across rank 0, rank 1 and B, and the group's committed
    offsets end at the end of both partitions."""
    create_topic(kafka_broker, "digits", partitions=2)
    data = digits_stream(records=900, invalid=0, unlabeled=4, seed=9)
    messages = as_messages(data)
    produce(kafka_broker, "digits", messages[:200], partition=0)
    told = scenario_events()

    def trickle():  # 20 records a second to partition 0, and 10 to partition 1 once B joined; after B left, the rest
        at = 200
        while at < len(messages) and not told["stop"].is_set():
            if told["b_left"].wait(1.0):
                produce(kafka_broker, "digits", messages[at:])
                return
            if told["b_joined"].is_set():
                produce(kafka_broker, "digits", messages[at : at + 10], partition=1)
                at += 10
            produce(kafka_broker, "digits", messages[at : at + 20], partition=0)
            at += 20

    left_at: list[float] = []

    def rank_1_left(a: Trainer) -> bool:  # its stream ended, then 3 s to commit and leave (or, unfixed, sit silent)
        if not left_at and "the stream ends" in a.err.read_text():
            left_at.append(time.monotonic())
        return bool(left_at) and time.monotonic() > left_at[0] + 3.0

    per_rank, b_keys = job_then_joiner(tmp_path, kafka_broker, trickle, rank_1_left, 8.0, 20.0, told)
    trained = sum(per_rank, Counter()) + b_keys
    assert not [k for k, n in trained.items() if n > 1], "keys trained twice"
    assert sorted(trained) == sorted(data.valid), "lost or unexpected keys"
    assert 0 < sum(b_keys.values()) <= 4 * 16  # B was assigned partition 1 and trained its records
    assert "rank 1 left the group" in (tmp_path / "a.err").read_text()
    assert committed_offsets(kafka_broker, "lifelong-test", "digits") == end_offsets(kafka_broker, "digits")


class RankRelay:
    """Two ranks' kafka readers (each in its reader process, as in a run) driven as the kernel drives them,
    without the kernel: each iterates on its own thread; a revocation's commit (``checkpoint_wanted``) is made ``commit_delay[rank]`` seconds after it
    is asked for (a rank's checkpoint may come late); the ranks' ``rebalance_hold`` states are relayed as
    the kernel's step does (release once one holds and none is busy)."""

    def __init__(self, bootstrap: str, tmp_path: Path, commit_delay: tuple[float, float], assignment: str):
        from lifelong.readers import DeadLetters, ReaderContext
        from lifelong_brokers.kafka import KafkaOptions, kafka_reader

        options = KafkaOptions(bootstrap=bootstrap, topics=["held"], group="held", features_field="x", num_features=1,
                               num_classes=1, idle_timeout=0.0, batch_timeout=0.2,
                               consumer={"partition.assignment.strategy": assignment})
        options.check()
        self.readers = [
            kafka_reader(options, ReaderContext(batch_size=8, seed=0, rank=rank, ranks=2,
                                                dead_letter=DeadLetters(tmp_path / f"dl{rank}.jsonl", run="r")))
            for rank in (0, 1)
        ]
        self.delay = commit_delay
        self.last: list[dict | None] = [None, None]
        self.errors: list[str] = []
        self.commits = [0, 0]
        self._asked = [False, False]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, rank: int) -> None:
        def iterate():
            for batch in self.readers[rank]:
                self.last[rank] = batch.position
        thread = threading.Thread(target=iterate, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _commit(self, rank: int) -> None:
        time.sleep(self.delay[rank])
        try:
            self.readers[rank].commit(self.last[rank])
            self.commits[rank] += 1
        except Exception as exc:  # noqa: BLE001 - what the test checks
            self.errors.append(f"rank {rank}: {exc}")
        self._asked[rank] = False

    def step(self) -> list[str]:
        for rank, reader in enumerate(self.readers):
            if reader.checkpoint_wanted() and not self._asked[rank] and self.last[rank] is not None:
                self._asked[rank] = True
                threading.Thread(target=self._commit, args=(rank,), daemon=True).start()
        states = [reader.rebalance_hold() for reader in self.readers]
        if "holding" in states and "busy" not in states:
            for reader in self.readers:
                reader.release_revocation()
        return states

    def run_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, (self.errors, [r.rebalance_hold() for r in self.readers])
            self.step()
            time.sleep(0.05)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        for thread in self.threads:
            thread.join(10)


@pytest.mark.parametrize("assignment", ["range", "cooperative-sticky"])
def test_a_rank_committing_its_revocation_late_is_not_refused(tmp_path, kafka_broker, capfd, assignment):
    """Rank 0 (the group's leader: it joined first) commits a revocation at once, rank 1 only 5 s later
    (its checkpoint is slow): every commit is made, and the newcomers, assigned partitions both ranks
    trained, read nothing.

    Eager (one newcomer; every member is revoked): Tansu completes the next generation about
    session_timeout_ms/2 (3 s) after the leader rejoins, whoever has not, then refuses the others'
    old-generation commits, so rank 0 holds its revocation until rank 1 has committed too (unheld, rank
    1's commit fails with ILLEGAL_GENERATION). Cooperative (two newcomers at once, so each rank gives one
    partition up): rank 1's late commit is accepted after rank 0 rejoined, so ranks do not hold there."""
    from confluent_kafka import Consumer

    create_topic(kafka_broker, "held", partitions=4)
    relay = RankRelay(kafka_broker, tmp_path, commit_delay=(0.0, 5.0), assignment=assignment)
    newcomers_read: list[int] = []
    stop = threading.Event()

    def newcomer():  # a member of the group that commits nothing and reads what the group's offsets leave it
        consumer = Consumer({"bootstrap.servers": kafka_broker, "group.id": "held", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                             "partition.assignment.strategy": assignment})
        consumer.subscribe(["held"])
        try:
            while not stop.is_set():
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    newcomers_read.append(message.offset())
        finally:
            consumer.close()

    joining = [threading.Thread(target=newcomer, daemon=True) for _ in range(1 if assignment == "range" else 2)]
    try:
        relay.start(0)
        relay.run_until(lambda: relay.readers[0].rebalance_hold() == "busy", 60)  # assigned: the group's leader
        relay.start(1)
        relay.run_until(lambda: relay.step() == ["busy", "busy"], 60)  # both assigned (2 partitions each)
        produce(kafka_broker, "held", [{"key": i, "x": [i], "label": "a"} for i in range(200)])
        ends = end_offsets(kafka_broker, "held")
        yielded = lambda: {  # noqa: E731 - every record yielded by one rank or the other
            name: offset for last in relay.last for name, offset in ((last or {}).get("cursor") or {}).items()
        }
        relay.run_until(lambda: sum(yielded().values()) == sum(ends.values()), 90)
        commits = list(relay.commits)
        for thread in joining:
            thread.start()
        relay.run_until(lambda: relay.commits[1] > commits[1] and "holding" not in relay.step(), 90)
        time.sleep(5.0)  # the newcomers read from where the group's offsets leave them
        relay.step()
    finally:
        stop.set()
        relay.close()
        for thread in joining:
            thread.join(15)
    err = capfd.readouterr().err
    assert not relay.errors, relay.errors
    assert relay.commits[0] > commits[0]
    assert "gave up" not in err and "stopped waiting" not in err, err
    assert newcomers_read == [], f"the newcomers read {len(newcomers_read)} records the ranks trained"
    assert committed_offsets(kafka_broker, "held", "held") == ends
