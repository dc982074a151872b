"""The ``kafka`` reader: records from Kafka topics through a consumer group, committed after each checkpoint.

The reader joins the consumer group ``group`` on ``topics`` with confluent-kafka (librdkafka),
``enable.auto.commit = false``, and consumes ``poll_records`` messages per call with a timeout of at
most one second (so its thread notices a stop, and ``batch_timeout`` / ``idle_timeout`` are kept).
Messages become records and batches through :class:`~lifelong_brokers.assemble.Assembler` (format,
labels, held-out sets, batching: see :mod:`lifelong_brokers.options`).

**Positions and commits (checkpoint, then commit).** A batch's position holds, in ``cursor``,
``{"topic:partition": next offset}`` for every partition whose messages it accounts for, plus the
assembler's state. The kernel calls ``commit(position)`` once a checkpoint holding that position
is durable; the reader then commits exactly those offsets synchronously, only for partitions it
owns now, never below the offset it started a partition at and never backwards (a commit of an
older position arriving late must not move the group back). Commits are serialised with
``consume``: a synchronous commit made on another thread while the consumer's thread is inside
``consume`` (or a rebalance callback) was measured here to lose its reply and never return, so a
commit is queued and made by whichever thread holds the poll lock (the reader thread before its
next poll or inside ``on_revoke``; the caller when the reader is not polling); commit() gives up
after :data:`COMMIT_TIMEOUT` seconds if it was not served (the next checkpoint commits again).

``idle_timeout`` counts from the last record or assignment; before the first assignment the group
join (about ``session_timeout_ms``) is not counted. A data-parallel rank whose stream ends so asks
for a checkpoint, waits until its trained records are committed, and leaves the group: its
partitions go to the ranks still reading, and a rebalance never waits for a member that stopped
polling (an eager one would until ``max.poll.interval.ms``, 5 minutes; Tansu assigned such a member
partitions nobody then read).

**Seek.** The checkpoint's offsets are the source of truth: on each assignment (``on_assign``) a
partition starts at max(checkpointed offset, the group's committed offset). The checkpoint is
what this process trained; the committed offset is larger only when another group member owned
the partition since (its records were trained there and committed after its checkpoint), so
starting there trains nothing twice. With neither, ``auto.offset.reset`` (earliest) applies.

**Rebalances.** On revocation (``on_revoke``) the reader drops the buffered, not yet yielded
records of the revoked partitions (they are in no position: the next owner reads them), sets
``checkpoint_wanted`` and waits (at most :data:`REVOKE_WAIT` seconds, then a warning) until
``commit()`` has covered the last yielded offsets of those partitions: the kernel trains the
batches already queued, checkpoints and commits, so the next owner starts right after the records
trained here, and nothing is lost or trained twice. A lost assignment (``on_lost``, the session
timed out) cannot be committed: its records may be trained again by the next owner.

**Dead letters.** A bad message goes to the dead-letter file with its original bytes (text, or
``{"base64": ...}``), the reason, ``kafka:TOPIC[PARTITION]`` as source and its offset; with
``dead_letter_topic`` also to that topic (value and key as they came; headers ``lifelong.reason``,
``lifelong.source``, ``lifelong.offset``), flushed at ``close`` (at most 10 s).

**Start.** The factory checks, with a metadata request bounded at :data:`CONNECT_TIMEOUT` seconds,
that the bootstrap servers answer and that every topic exists (UserError naming it otherwise); it
opens nothing that stays open: the consumer is created when the stream starts.

**Data-parallel ranks** (``lifelong run --nproc N``, torchrun) are members of the one group, each
assigned its own partitions. A revocation's checkpoint is the whole job's (the ranks agree on it
at their next step), and each rank commits its own offsets once rank 0 made it durable. A rank whose
reader waits in ``on_revoke`` keeps taking part in the steps (without a batch once its queue is
trained), so the collective checkpoint is not held up by the wait; with eager assignment every rank
waits so at once (tested with a member joining and leaving mid-training: test_broker_ranks.py).

With eager assignment a rank whose revocation is committed also **holds** it (does not rejoin the
group) until every other rank holds or has no assignment (``rebalance_hold``,
``release_revocation``: the kernel relays the ranks' states at each step). Kafka itself waits for
every member to rejoin (up to ``max.poll.interval.ms``) and accepts the old generation's commits
meanwhile, but a broker may not: Tansu completes the next generation about
``session_timeout_ms``/2 after the leader rejoins, whoever has not, then refuses the stragglers'
commits (ILLEGAL_GENERATION: their records would be trained again by the next owners). Members
notice a rebalance up to a heartbeat apart and a rank commits one step after rank 0, so an unheld
leader rank rejoined seconds before the other rank committed (seen on CI; reproduced in
test_broker_ranks.py). Cooperative revocations do not hold: there a rank's commit made 5 s after
the other rank rejoined was accepted (same test). On
resume every rank starts each partition at the furthest offset any rank's checkpointed position
holds for it (``seek_ranks``), since the group may assign it partitions another rank trained.

**Where it runs.** By default (``reader_process``) the whole reader runs in a child process forked
when the plan is built (:mod:`lifelong_brokers.reader_process`): "the reader thread" above is that
process's thread, and ``commit`` and the other members reach it through the training process's proxy.

Notes: librdkafka's ``max.poll.interval.ms`` (default 5 minutes) bounds how long the kernel's
queue of batches may stay full (the reader does not consume while it waits): raise it in
``consumer`` for very slow models. Explicit experience ids assume the partitions move through the
experiences together (one partition is the safe case).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from lifelong.errors import ConfigError, UserError
from lifelong.readers import ReaderContext
from lifelong.types import Batch
from lifelong_brokers.assemble import AssembledStream, Assembler
from lifelong_brokers.decode_process import DecodeProcess
from lifelong_brokers.options import BrokerOptions
from lifelong_brokers.reader_process import ReaderProcess, served
from lifelong_streams.records import say

CONNECT_TIMEOUT = 10.0  # seconds for the start-up metadata request (bootstrap reachable, topics exist)
COMMIT_TIMEOUT = 10.0  # seconds commit() waits for its commit to be served before it raises
COMMITTED_TIMEOUT = 10.0  # seconds for the group's committed offsets on assignment
REVOKE_WAIT = 30.0  # seconds on_revoke waits for the commit of the revoked partitions' yielded offsets
OWNED = ("bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store")  # set by the reader
INSTALL = "pip install 'lifelong[kafka]'"


@dataclass
class KafkaOptions(BrokerOptions):
    bootstrap: str = field(default="127.0.0.1:9092", metadata={"help": "bootstrap servers, host:port[,host:port…]"})
    topics: list[str] = field(default_factory=list, metadata={"help": "topics to consume (required)"})
    group: str = field(default="lifelong", metadata={"help": "consumer group id: offsets are committed for it"})
    poll_records: int = field(default=500, metadata={"help": "messages per consume call"})
    session_timeout_ms: int = field(default=6000, metadata={"help": "consumer session.timeout.ms (group joins take about this long)"})
    consumer: dict[str, Any] = field(default_factory=dict, metadata={"help": "extra librdkafka consumer settings, e.g. {\"auto.offset.reset\" = \"latest\"}"})
    dead_letter_topic: str = field(default="", metadata={"help": "also produce dead letters to this topic (empty: file only)"})

    def check(self) -> None:
        super().check()
        if not self.topics or not all(t.strip() for t in self.topics):
            raise ValueError("topics must list the topics to consume")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError(f"topics must be distinct, got {self.topics}")
        if not self.bootstrap.strip():
            raise ValueError("bootstrap must name the Kafka servers, host:port")
        if not self.group.strip():
            raise ValueError("group must name the consumer group")
        if not 1 <= self.poll_records <= 1_000_000:
            raise ValueError(f"poll_records must be between 1 and 1,000,000, got {self.poll_records}")
        if not 1000 <= self.session_timeout_ms <= 3_600_000:
            raise ValueError(f"session_timeout_ms must be between 1000 and 3,600,000, got {self.session_timeout_ms}")
        owned = [k for k in self.consumer if k in OWNED or k == "session.timeout.ms"]
        if owned:
            raise ValueError(
                f"consumer sets {owned[0]!r}, which the reader owns (use bootstrap, group, session_timeout_ms; "
                "offsets are committed by the reader after each checkpoint)"
            )


def kafka_reader(options: KafkaOptions, context: ReaderContext) -> KafkaStream | ReaderProcess:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise UserError(f"the kafka reader needs confluent-kafka, which is not installed: {INSTALL}") from None
    return served(KafkaStream(options, context), context, options.reader_process)


def _name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _split(name: str) -> tuple[str, int]:
    topic, partition = name.rsplit(":", 1)  # topic names cannot hold ':'
    return topic, int(partition)


class KafkaStream(AssembledStream):
    """The reader; see the module docstring."""

    partitioned = True  # the group assigns each member (each data-parallel rank) its own partitions

    def __init__(self, options: KafkaOptions, context: ReaderContext):
        self.options = options
        self.context = context
        self.source = "kafka:" + ",".join(options.topics)
        self.asm = Assembler(options, context, self.source, dead_letter=self._dead_letter)
        self._decoding = DecodeProcess(self.asm.decoder, self.source, options.decode_processes, options.reader_process)
        self._probe()
        self._start: dict[str, int] = {}  # the checkpoint's offsets (seek)
        self._consumer: Any = None
        self._producer: Any = None
        self._cooperative = "cooperative" in str(options.consumer.get("partition.assignment.strategy", ""))
        # Assignment and commit state: written by callbacks on the reader thread, read by commit() on
        # the checkpoint writer's thread, so under one lock; the condition wakes a revocation's wait.
        self._lock = threading.Lock()
        self._covered = threading.Condition(self._lock)
        self._owned: dict[str, int] = {}  # partition → offset it started at in this assignment (-1: reset policy)
        self._committed: dict[str, int] = {}  # partition → offset committed for the group (by us or before)
        self._yielded: dict[str, int] = {}  # partition → its offset in the last yielded batch's position
        self._wanted = False
        # The hold of a revocation across data-parallel ranks (eager only: see the module docstring)
        self._hold = context.ranks > 1 and not self._cooperative
        self._assigned = False  # an assignment not yet revoked (False while joining)
        self._holding = False  # committed, holding the revoked partitions until every rank has too
        self._released = False
        self._leaving = False  # a rank whose stream ended leaves the group (see _leave)
        self._closing = False
        self._closed = False
        self._poll_lock = threading.Lock()  # held while the reader thread is inside consume(); close() waits for it
        self._requests: list[_Request] = []  # commits queued by commit(), made by whoever holds the poll lock
        self._event = time.monotonic()  # last record or assignment: idle_timeout counts from here
        self._message_key: Any = None  # the key of the message being offered (for the dead-letter topic)
        self._names: dict[tuple[str, int], tuple[str, str]] = {}  # (topic, partition) → (cursor name, source)
        self._errors_seen: set[int] = set()

    # -- the stream -----------------------------------------------------------------------------
    def seek(self, position: dict[str, Any]) -> None:
        cursor = self.asm.restore(position)
        self._start = {name: int(offset) for name, offset in cursor.items()}

    def seek_ranks(self, position: dict[str, Any] | None, positions: list[dict[str, Any] | None]) -> None:
        """Resume one data-parallel rank: its own ``position`` (None: it had no batch yet), and each partition
        at the furthest offset any rank's position holds for it, since the group may now assign this rank
        partitions another rank trained before the checkpoint."""
        if position is not None:
            self.seek(position)
        for other in positions:
            for name, offset in ((other or {}).get("cursor") or {}).items():
                self._start[name] = max(self._start.get(name, -1), int(offset))

    def checkpoint_wanted(self) -> bool:
        return self._wanted

    def rebalance_hold(self) -> str:
        """Where this rank's reader stands in a rebalance: ``holding`` (its revocation is committed and waits
        for the other ranks'), ``busy`` (it owns partitions: an eager rebalance revokes every member's) or
        ``free`` (nothing to give up: joining, or between a revocation and the next assignment)."""
        if self._holding:
            return "holding"
        return "busy" if self._assigned else "free"

    def release_revocation(self) -> None:
        """Every rank holds its revocation or has nothing to give up: let the partitions go."""
        with self._covered:
            if self._holding:
                self._released = True
                self._covered.notify_all()

    def __iter__(self) -> Iterator[Batch]:
        from confluent_kafka import Consumer, KafkaError

        o = self.options
        conf = {
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            **o.consumer,
            "bootstrap.servers": o.bootstrap,
            "group.id": o.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": o.session_timeout_ms,
        }
        if self.context.ranks > 1:  # each data-parallel rank is a member of the one group
            conf.setdefault("client.id", f"lifelong-rank{self.context.rank}")
        with self._poll_lock:
            if self._closing:
                return
            self._consumer = consumer = Consumer(conf)
            consumer.subscribe(list(o.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        if o.dead_letter_topic:
            from confluent_kafka import Producer

            self._producer = Producer({"bootstrap.servers": o.bootstrap})
        # idle_timeout counts from the last record or assignment; before the first assignment the
        # group join (up to about session_timeout_ms) is not counted.
        self._event = time.monotonic() + o.session_timeout_ms / 1000
        asm = self.asm
        while True:
            now = time.monotonic()
            timeout = min(1.0, asm.wait_time(now))
            if o.idle_timeout:
                timeout = min(timeout, max(0.0, self._event + o.idle_timeout - now))
            with self._poll_lock:
                if self._closing:
                    return
                if self._requests:
                    self._serve()
                messages = consumer.consume(o.poll_records, timeout=timeout)
            good = [m for m in messages if m.error() is None]  # comprehensions: this runs per message
            if len(good) < len(messages):
                self._errors(messages, KafkaError)
            if good:
                self._event = time.monotonic()
            # Only owned partitions' messages (others were fetched before a revocation: the next owner reads
            # them); _owned changes only inside consume (the rebalance callbacks), so it holds for this poll.
            owned, known = self._owned, self._names.get
            tagged = [(m, known((m.topic(), m.partition())) or self._partition(m.topic(), m.partition())) for m in good]
            kept = [(m, name, source) for m, (name, source) in tagged if name in owned]
            values = [m.value() or b"" for m, _, _ in kept]
            cursors = [(name, m.offset() + 1) for m, name, _ in kept]
            # the poll is decoded in bulk, in a child process (decode.py and decode_process.py: why), and
            # accounted for in runs (Assembler.accept_all)
            for batch in self._accepted(values, cursors, lambda i: self._describe(*kept[i])):
                yield self._yielding(batch)
            if asm.due():
                yield self._yielding(asm.flush())  # type: ignore[arg-type]
            if o.idle_timeout and time.monotonic() - self._event >= o.idle_timeout:
                batch = asm.end()
                if batch is not None:
                    yield self._yielding(batch)
                say(f"{self.source}: no records for {o.idle_timeout:g} s (idle_timeout): the stream ends")
                if self.context.ranks > 1:
                    self._leave()
                return

    def _errors(self, messages: list[Any], KafkaError: Any) -> None:
        """A poll's error events: a fatal one ends the stream; others are said once per kind (the consumer retries)."""
        for message in messages:
            error = message.error()
            if error is None:
                continue
            if error.fatal():
                raise RuntimeError(f"kafka consumer failed: {error.str()}")
            if error.code() != KafkaError._PARTITION_EOF and error.code() not in self._errors_seen:
                self._errors_seen.add(error.code())  # once per kind: a broker outage would repeat it
                say(f"{self.source}: {error.str()} (the consumer retries)")

    def _describe(self, message: Any, name: str, source: str) -> tuple[str | None, str, int]:
        """A message's (record key, dead-letter source, offset) for the assembler; its key is the dead-letter topic's."""
        offset = message.offset()
        key = self._message_key = message.key()
        if not self.asm.needs_keys:
            return None, source, offset
        return (_key_text(key) if key is not None else f"{name}:{offset}"), source, offset

    def _partition(self, topic: str, partition: int) -> tuple[str, str]:
        """A partition's cursor name and dead-letter source, made once per partition."""
        names = self._names.get((topic, partition))
        if names is None:
            names = self._names[(topic, partition)] = (_name(topic, partition), f"kafka:{topic}[{partition}]")
        return names

    def _yielding(self, batch: Batch) -> Batch:
        with self._lock:
            self._yielded.update(batch.position["cursor"])
        return batch

    # -- checkpoint, then commit --------------------------------------------------------------------
    def commit(self, position: dict[str, Any]) -> None:
        """Commit the offsets of ``position`` for the partitions owned now (see the module docstring).

        Commits are serialised with ``consume`` (the poll lock): a synchronous commit made on another
        thread while the consumer's thread is inside ``consume`` loses its reply around a rebalance
        (measured here with librdkafka 2.16 and Tansu: it never returns). So the request is queued and
        served by whichever thread holds the poll lock: the reader thread before its next consume or
        inside ``on_revoke`` while it waits for this commit, or this thread when the reader is not
        polling (suspended at a yield, or finished). Bounded by :data:`COMMIT_TIMEOUT`.
        """
        request = _Request(position["cursor"])
        with self._covered:
            if self._consumer is None or self._closed:
                return
            self._requests.append(request)
            self._covered.notify_all()  # a revocation waiting for this commit serves it at once
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while not request.done.wait(0.05):
            if self._poll_lock.acquire(blocking=False):
                try:
                    self._serve()
                finally:
                    self._poll_lock.release()
            elif time.monotonic() > deadline:
                with self._lock:
                    if request in self._requests:
                        self._requests.remove(request)
                raise TimeoutError(f"kafka commit was not served within {COMMIT_TIMEOUT:g} s (the consumer is busy)")
        if request.error is not None:
            raise request.error

    def _serve(self) -> None:
        """Make the queued commits, merged (cumulative: the largest offset per partition); the caller holds the poll lock."""
        from confluent_kafka import TopicPartition

        with self._lock:
            requests, self._requests = self._requests, []
            offsets: dict[str, int] = {}
            for request in requests:
                for name, offset in request.cursor.items():
                    offset = int(offset)
                    # Only partitions owned now, never below where this assignment started them, never
                    # backwards: a late commit of an older position must not move the group back.
                    if name in self._owned and offset >= self._owned[name] and offset > self._committed.get(name, -1):
                        offsets[name] = max(offset, offsets.get(name, -1))
        if not requests:
            return
        error: BaseException | None = None
        if offsets and not self._closed:
            parts = [TopicPartition(*_split(name), offset) for name, offset in offsets.items()]
            try:
                # Made on this thread, which holds the poll lock: see commit() for why not on a helper
                # thread with a timeout (its reply is lost while the consumer's thread is in a callback).
                result = self._consumer.commit(offsets=parts, asynchronous=False)
                failed = [p for p in result or [] if p.error is not None]
                if failed:
                    error = RuntimeError(f"kafka commit failed for {failed[0].topic}[{failed[0].partition}]: {failed[0].error}")
            except Exception as exc:  # noqa: BLE001 - handed to the callers of commit()
                error = exc
        with self._covered:
            if error is None:
                for name, offset in offsets.items():
                    self._committed[name] = max(offset, self._committed.get(name, -1))
            self._covered.notify_all()
        for request in requests:
            request.error = error
            request.done.set()

    def close(self) -> None:
        """Make a queued commit, leave the group and close the consumer (once the reader thread is out of
        consume and no commit runs), then flush the dead-letter topic (at most 10 s)."""
        with self._covered:
            self._closing = True
            self._covered.notify_all()  # a revocation waiting for a commit stops waiting
        polling = self._poll_lock.acquire(timeout=5.0)
        try:
            if polling and self._consumer is not None and not self._closed:
                self._serve()
            if self._consumer is not None and not self._closed:
                if polling:
                    self._consumer.close()  # leaves the group; on_revoke runs here, without waiting
                else:  # closing under a running consume would free the handle it uses
                    say(f"{self.source}: the consumer is busy; it is left to the group's session timeout")
            self._closed = True
            with self._lock:
                requests, self._requests = self._requests, []
            for request in requests:
                request.error = RuntimeError("the kafka reader was closed before this commit was made")
                request.done.set()
            if self._producer is not None:
                left = self._producer.flush(10)
                if left:
                    say(f"{self.source}: {left} dead letter(s) not delivered to {self.options.dead_letter_topic!r} within 10 s")
        finally:
            if polling:
                self._poll_lock.release()
            self._decoding.close()

    # -- rebalance callbacks (reader thread, inside consume) ---------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            committed = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the checkpoint's offsets still apply
            say(f"{self.source}: cannot read the group's committed offsets ({exc}); starting from the checkpoint's")
            committed = [None] * len(partitions)
        owned: dict[str, int] = {}
        group: dict[str, int] = {}
        for part, known in zip(partitions, committed):
            name = _name(part.topic, part.partition)
            candidates = [self._start[name]] if name in self._start else []
            if known is not None and known.offset >= 0:
                candidates.append(known.offset)
                group[name] = known.offset
            if candidates:
                part.offset = max(candidates)
            owned[name] = max(candidates) if candidates else -1
        with self._lock:
            self._owned.update(owned)
            for name, offset in group.items():
                self._committed[name] = offset
        self._event = time.monotonic()
        self._assigned = True
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        names = {_name(p.topic, p.partition) for p in partitions}
        if not self._closing:  # when closing (on the main thread) nothing is yielded any more
            self.asm.drop(names)
        with self._lock:
            due = {n: self._yielded[n] for n in names if n in self._yielded}
        if not self._closing:
            self._wanted = True
            deadline = time.monotonic() + REVOKE_WAIT
            try:
                committed = self._serve_until(
                    lambda: self._covers(due), deadline,
                    f"{self.source}: gave up partitions {sorted(names)} after {REVOKE_WAIT:g} s before their "
                    "trained records were committed: the next owner may train some of them again",
                )
                if committed and self._hold and not self._leaving:
                    self._wanted, self._holding, self._released = False, True, False
                    self._serve_until(
                        lambda: self._released, deadline,
                        f"{self.source}: rank {self.context.rank} stopped waiting for the other ranks' commits after "
                        f"{REVOKE_WAIT:g} s and rejoins the group: a rank that commits later may be refused",
                    )
            finally:
                self._wanted = self._holding = False
        with self._lock:
            self._forget(names)
            self._assigned = bool(self._owned)
        self._unassign(consumer, partitions)

    def _leave(self) -> None:
        """A data-parallel rank whose share of the stream ended leaves the group once its trained records are
        committed, so that its partitions go to the ranks still reading, and no rebalance waits for a
        member that no longer polls (the job's other ranks go on until their own streams end)."""
        with self._poll_lock:
            with self._lock:
                due = dict(self._yielded)
            self._wanted = True  # a checkpoint of what this rank trained, as a revocation asks for
            try:
                self._serve_until(
                    lambda: self._covers(due), time.monotonic() + REVOKE_WAIT,
                    f"{self.source}: rank {self.context.rank} leaves the group after {REVOKE_WAIT:g} s before its "
                    "trained records were committed: the next owner may train some of them again",
                )
            finally:
                self._wanted = False
            if self._closing or self._closed:
                return
            self._leaving = True
            self._consumer.close()  # on_revoke runs here, with nothing left to commit and no hold
            self._closed = True
        say(f"{self.source}: rank {self.context.rank} left the group: its partitions go to the ranks still reading")

    def _serve_until(self, done: Callable[[], bool], deadline: float, late: str) -> bool:
        """Make the commits the kernel queues (the caller holds the poll lock) until ``done()``: True then;
        False when the reader is closing, or past ``deadline`` (saying ``late``)."""
        while True:
            self._serve()
            with self._covered:
                if done():
                    return True
                if self._closing:
                    return False
                if time.monotonic() > deadline:
                    say(late)
                    return False
                self._covered.wait(0.1)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        names = {_name(p.topic, p.partition) for p in partitions}
        self.asm.drop(names)
        with self._lock:
            self._forget(names)
            self._assigned = bool(self._owned)
        say(f"{self.source}: lost partitions {sorted(names)} (session timed out): their uncommitted records may be trained again")
        self._unassign(consumer, partitions)

    def _covers(self, due: dict[str, int]) -> bool:
        return all(self._committed.get(name, -1) >= offset for name, offset in due.items())

    def _forget(self, names: set[str]) -> None:
        for name in names:
            self._owned.pop(name, None)
            self._yielded.pop(name, None)
            self._committed.pop(name, None)

    def _unassign(self, consumer: Any, partitions: list[Any]) -> None:
        if self._closed:
            return
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    # -- helpers --------------------------------------------------------------------------------
    def _dead_letter(self, reason: str, source: str, offset: Any, message: Any) -> None:
        from lifelong_brokers.decode import raw_record

        self.context.dead_letter(reason, source, offset, raw_record(message))
        if self._producer is not None:
            headers = {"lifelong.reason": reason, "lifelong.source": source, "lifelong.offset": str(offset)}
            try:
                self._producer.produce(self.options.dead_letter_topic, value=message, key=self._message_key, headers=headers)
            except BufferError:
                self._producer.poll(1.0)  # the local queue is full: let deliveries drain once, then retry
                self._producer.produce(self.options.dead_letter_topic, value=message, key=self._message_key, headers=headers)
            self._producer.poll(0)

    def _probe(self) -> None:
        """UserError unless the bootstrap servers answer and every topic exists (bounded in time)."""
        from confluent_kafka import Consumer, KafkaException

        o = self.options
        extra = {k: v for k, v in o.consumer.items() if k.startswith(("security.", "sasl.", "ssl.", "client."))}
        probe = Consumer({**extra, "bootstrap.servers": o.bootstrap, "group.id": o.group, "enable.auto.commit": False})
        try:
            try:
                metadata = probe.list_topics(timeout=CONNECT_TIMEOUT)
            except KafkaException as exc:
                raise UserError(
                    f"stream.bootstrap: the Kafka servers {o.bootstrap!r} did not answer within {CONNECT_TIMEOUT:g} s "
                    f"({exc.args[0].str() if exc.args else exc}): is the broker running and the address right?"
                ) from None
            for topic in o.topics:
                meta = metadata.topics.get(topic)
                if meta is None or meta.error is not None:
                    known = sorted(t for t in metadata.topics if not t.startswith("__"))[:10]
                    raise ConfigError(
                        "stream.topics",
                        f"topic {topic!r} does not exist on {o.bootstrap} (topics there: {', '.join(known) or 'none'}); "
                        "create it or fix the name",
                    )
        finally:
            probe.close()


def _key_text(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + key.hex()


class _Request:
    """One commit() call: the position's offsets, and its outcome once served."""

    def __init__(self, cursor: dict[str, Any]):
        self.cursor = dict(cursor)
        self.done = threading.Event()
        self.error: BaseException | None = None
