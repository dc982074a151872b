"""The ``redis`` reader: entries of a Redis stream read through a consumer group, acknowledged after each checkpoint.

The reader reads ``stream`` as consumer ``consumer`` of the consumer group ``group`` with redis-py:
``XREADGROUP GROUP group consumer COUNT read_count BLOCK block_ms STREAMS stream >`` (``block_ms``
is at most one second, so the reader thread notices a stop and keeps ``batch_timeout`` /
``idle_timeout``). The group is created when missing (``XGROUP CREATE … MKSTREAM`` at ``start``:
``0``, the whole stream, or ``$``, entries added from now on). Entries become records and batches
through :class:`~lifelong_brokers.assemble.Assembler` (format, labels, held-out sets, batching:
see :mod:`lifelong_brokers.options`); the default record key (held-out hash) is the entry id.

**Payload.** With ``field`` (default ``"data"``) the entry's field of that name holds the record:
one JSON object (``format = "json"``) or one CSV line (``format = "csv"``); other fields are
ignored, and an entry without it is a dead letter. With ``field = ""`` (json only) the entry's own
field-value pairs are the record, values as text: a feature may be ``"0.5"``, the
``features_field`` array is JSON text (``"[0.1, 0.2]"``), the label ``"3"`` is the class ``3``.

**Exactly once: checkpoint, then XACK.** Nothing is acknowledged when it is read. Each entry
read is noted; the kernel calls ``commit(position)`` once a checkpoint holding a position is
durable, and only then are the entries that position accounts for acknowledged (XACK, in chunks
of :data:`ACK_CHUNK`). A batch's position holds, in ``cursor``:

- ``through``: the id of the last entry read by this consumer (``>`` reads, and the replay below)
  that the position accounts for — trained, held out, unlabeled or dead-lettered. One consumer
  receives its entries in increasing id order (``>`` hands out ids above the group's last
  delivered one), so ``through`` is a watermark: every own entry up to it is accounted for, none
  after it. ``commit`` acknowledges the noted own ids up to ``through`` (a deque, in id order;
  commit only pops what it acknowledged, under a lock shared with the reader thread). The deque
  holds the ids read between two commits, about 80 bytes each: a million entries between two
  checkpoints take ~80 MB, so checkpoint often enough for the stream's rate.
- ``claimed``: the entries taken over from dead consumers (below) that the position accounts for
  and that were not acknowledged yet when it was made — an explicit list, usually empty.
- ``stream``, ``group``, ``consumer``: whose position it is; ``seek`` refuses another's.

**Resume.** After ``seek(position)`` the stream first goes through this consumer's pending entries
(``XREADGROUP … STREAMS stream 0``: read, not acknowledged): ids up to the checkpoint's
``through`` were accounted for before the checkpoint, so they are acknowledged now and not
trained; ids after it were read but never checkpointed, so they are trained, first and once. The
same for ``<consumer>.claimed``: entries listed in the checkpoint's ``claimed`` are acknowledged,
the others trained. A run started without ``--resume`` has no position: all of this consumer's
pending entries are trained. So ``consumer`` must be stable across restarts and used by one
trainer at a time.

**Dead consumers.** Every ``claim_idle_ms / 2`` seconds (at most every 10 s, at least every
0.1 s) the reader lists the pending entries of the group's *other* consumers idle for at least
``claim_idle_ms`` (XPENDING … IDLE, per consumer) and takes them (XCLAIM with that idle time, which
re-checks it atomically) into the consumer ``<consumer>.claimed``, and trains them. (XAUTOCLAIM is
not used: it would also take this reader's own entries once a checkpoint interval exceeds
``claim_idle_ms`` — read, not yet checkpointed — and train them twice.) Claims get their own
consumer name because a claimed id can lie anywhere below ``through``: in this consumer's pending
list it could not be told apart, on restart, from an entry trained before the checkpoint. Set
``claim_idle_ms`` well above the time between checkpoints (and a trainer's restart time): a live
trainer's entries stay pending until its next checkpoint, and are taken from it when idle that
long. A trainer that trained entries, checkpointed and died before its XACK may have them trained
again by the claimer: claims are at least once across trainers (each trainer's own stream stays
exactly once). ``claim_idle_ms = 0`` never claims.

**Lost connections.** Commands run without redis-py's retries: a ``>`` read retried after a lost
reply would leave the lost entries pending, unseen, below later ones. Instead, after a connection
error the reader retries every 0.5 s, for at most ``retry_seconds`` (then the run fails), and on
reconnect first reads its own pending entries after the last id it saw (the lost reply's entries)
before it reads new ones. A deleted (XDEL) or trimmed entry that was still pending is a dead
letter.

**Dead letters** carry the original bytes (the field's text, ``{"base64": ...}`` if not UTF-8;
with ``field = ""`` the entry's fields), the reason, ``redis:STREAM`` as source and the entry id as
offset; with ``dead_letter_stream`` they are also XADDed there (fields ``reason``, ``source``,
``offset``, ``record``; at least once: a record read again after a crash is sent again, while the
dead-letter file is cut back to the checkpoint).

**Start and end.** The factory connects (bounded by ``timeout`` seconds; an unreachable server, a
refused password or a key that is not a stream is a UserError), creates the group if needed and
closes its connection again; the stream's connections open when it starts. ``idle_timeout``
seconds without entries end the stream; ``close()`` closes the connections (after the reader
thread left its read). Entries accounted for after the last batch (dead letters, unlabeled or
held-out records at the very end) are in no position, so they stay pending and are read again by
the next run of this consumer.

**Where it runs.** By default (``reader_process``) the whole reader runs in a child process forked
when the plan is built (:mod:`lifelong_brokers.reader_process`): "the reader thread" here is that
process's thread, and ``commit`` reaches it through the training process's proxy.

**Data-parallel ranks** (``lifelong run --nproc N``, torchrun) are consumers of the one group, each
named ``<consumer>-rank<r>``: the group hands each rank its own entries, each rank's position and
acknowledgements are its own, and a rank's consumer name is stable across restarts of the job.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as option  # the options have a field named ``field``
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from lifelong.errors import ConfigError, UserError
from lifelong.readers import ReaderContext
from lifelong.types import Batch
from lifelong_brokers.assemble import AssembledStream, Assembler
from lifelong_brokers.decode_process import DecodeProcess
from lifelong_brokers.decode import raw_record
from lifelong_brokers.options import BrokerOptions
from lifelong_brokers.reader_process import ReaderProcess, served
from lifelong_streams.records import say, short

INSTALL = "pip install 'lifelong[redis]'"
CLAIMED = ".claimed"  # suffix of the consumer name that entries taken from dead consumers are claimed into
ACK_CHUNK = 10_000  # ids per XACK command
RETRY_PAUSE = 0.5  # seconds between attempts while the server is unreachable


@dataclass
class RedisOptions(BrokerOptions):
    url: str = option(default="redis://127.0.0.1:6379/0", metadata={"help": "the Redis server, redis://[:password@]host:port/db (rediss:// for TLS)"})
    stream: str = option(default="", metadata={"help": "the stream key to read (required)"})
    group: str = option(default="lifelong", metadata={"help": "consumer group; created (with the stream) when missing"})
    consumer: str = option(default="trainer", metadata={"help": "consumer name in the group: stable across restarts, one trainer at a time"})
    field: str = option(default="data", metadata={"help": "entry field holding the JSON object / CSV line; empty (json only): the entry's own fields are the record"})
    start: Literal["0", "$"] = option(default="0", metadata={"help": "where a new group starts: 0 (the whole stream) or $ (entries added from now on)"})
    block_ms: int = option(default=1000, metadata={"help": "longest wait of one read for new entries, in ms (1 to 1000)"})
    read_count: int = option(default=500, metadata={"help": "entries per read"})
    claim_idle_ms: int = option(default=60000, metadata={"help": "take over other consumers' pending entries idle this long, in ms (0: never); keep it well above the checkpoint interval"})
    dead_letter_stream: str = option(default="", metadata={"help": "also XADD dead letters to this stream (empty: file only)"})
    timeout: float = option(default=5.0, metadata={"help": "seconds to connect, and for one command beyond its block_ms"})
    retry_seconds: float = option(default=30.0, metadata={"help": "how long a lost server is retried mid-stream before the run fails"})

    def check(self) -> None:
        super().check()
        if not self.stream:
            raise ValueError("stream must name the stream key to read")
        if not self.group:
            raise ValueError("group must name the consumer group")
        if not self.consumer:
            raise ValueError("consumer must name this trainer's consumer in the group")
        if self.consumer.endswith(CLAIMED):
            raise ValueError(f"consumer must not end in {CLAIMED!r}: the reader claims dead consumers' entries under that name")
        if not self.field and self.format != "json":
            raise ValueError("field = '' (the entry's own fields are the record) needs format json; name the field holding the CSV line")
        if self.start not in ("0", "$"):
            raise ValueError(f"start must be '0' (the whole stream) or '$' (new entries), got {self.start!r}")
        if not 1 <= self.block_ms <= 1000:
            raise ValueError(f"block_ms must be between 1 and 1000 (the reader must notice a stop within a second), got {self.block_ms}")
        if not 1 <= self.read_count <= 1_000_000:
            raise ValueError(f"read_count must be between 1 and 1,000,000, got {self.read_count}")
        if self.claim_idle_ms < 0:
            raise ValueError(f"claim_idle_ms must be >= 0 (0: never claim), got {self.claim_idle_ms}")
        if self.dead_letter_stream == self.stream:
            raise ValueError("dead_letter_stream must differ from stream (dead letters would be read back as records)")
        if not 0 < self.timeout <= 600:
            raise ValueError(f"timeout must be in (0, 600] seconds, got {self.timeout}")
        if not 0 <= self.retry_seconds <= 86400:
            raise ValueError(f"retry_seconds must be in [0, 86400], got {self.retry_seconds}")


def redis_reader(options: RedisOptions, context: ReaderContext) -> RedisStream | ReaderProcess:
    try:
        import redis  # noqa: F401
    except ImportError:
        raise UserError(f"the redis reader needs the redis package (redis-py), which is not installed: {INSTALL}") from None
    if context.ranks > 1:  # each data-parallel rank is a consumer of its own in the group
        options = dataclasses.replace(options, consumer=f"{options.consumer}-rank{context.rank}")
    return served(RedisStream(options, context), context, options.reader_process)


def entry_id(text: str | bytes) -> tuple[int, int]:
    """A stream entry id ``"ms-seq"`` as a comparable pair."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def shown_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<the url>"


class RedisStream(AssembledStream):
    """The reader; see the module docstring."""

    partitioned = True  # the group hands each consumer (each data-parallel rank) its own entries

    def __init__(self, options: RedisOptions, context: ReaderContext):
        self.options = options
        self.context = context
        self.source = f"redis:{options.stream}"
        self.url = shown_url(options.url)
        self.asm = Assembler(options, context, self.source, dead_letter=self._dead_letter)
        self._decoding = DecodeProcess(self.asm.decoder, self.source, options.decode_processes, options.reader_process)
        self._claimer = options.consumer + CLAIMED
        self._field = options.field.encode()
        self._client = self._connect()
        # Ack bookkeeping: written by the reader thread, read and popped by commit() (checkpoint writer).
        self._lock = threading.Lock()
        self._unacked: deque[str] = deque()  # own entry ids offered and not acknowledged, in id order
        self._claimed_open: dict[str, int] = {}  # claimed entry id → its claim number, until acknowledged
        self._claims = 0  # claimed entries offered so far (the ``claimed`` cursor counts them)
        self.acked = 0  # entries acknowledged by commit() and at restart (for tests and logs)
        # Resume state (seek): the checkpoint's watermark and listed claims.
        self._through: tuple[int, int] | None = None
        self._claimed_done: set[str] = set()
        # Reading state (reader thread).
        self._after = "0"  # id of the last own entry any read returned: a catch-up read starts after it
        self._history = True  # read own pending entries (after _after) before new ones: at start, after an error
        self._down_since: float | None = None
        self._event = time.monotonic()  # last entry read: idle_timeout counts from here
        self._dead_letter_failed = False
        self._read_lock = threading.Lock()  # held while the reader thread waits on the server; close() waits for it
        self._commit_lock = threading.Lock()
        self._closing = False
        self._closed = False

    # -- the stream -----------------------------------------------------------------------------
    def seek(self, position: dict[str, Any]) -> None:
        cursor = self.asm.restore(position)
        o = self.options
        theirs = (cursor.get("stream", o.stream), cursor.get("group", o.group), cursor.get("consumer", o.consumer))
        if theirs != (o.stream, o.group, o.consumer):
            raise UserError(
                f"the checkpoint was taken reading stream {theirs[0]!r} as consumer {theirs[2]!r} of group {theirs[1]!r}; "
                f"this run reads stream {o.stream!r} as {o.consumer!r} of {o.group!r}: resume with the same "
                "stream, group and consumer, or start a new run"
            )
        through = cursor.get("through")
        self._through = entry_id(through) if through is not None else None
        self._claimed_done = set(cursor.get("claimed") or [])

    def __iter__(self) -> Iterator[Batch]:
        o, asm = self.options, self.asm
        self._event = time.monotonic()
        yield from self._replay_claims()
        interval = min(10.0, max(0.1, o.claim_idle_ms / 2000))
        next_claim = time.monotonic()
        while True:
            now = time.monotonic()
            if o.claim_idle_ms and now >= next_claim:
                claimed = self._claim()
                if claimed is None:
                    return
                yield from self._offer(claimed, claimed=True)
                next_claim = time.monotonic() + interval
            now = time.monotonic()
            wait = min(o.block_ms / 1000, asm.wait_time(now))
            if o.claim_idle_ms:
                wait = min(wait, next_claim - now)
            if o.idle_timeout:
                wait = min(wait, self._event + o.idle_timeout - now)
            entries = self._read(wait)
            if entries is None:
                return  # closing
            yield from self._offer(entries, claimed=False)
            if asm.due():
                yield self._stamp(asm.flush())  # type: ignore[arg-type]
            if o.idle_timeout and time.monotonic() - self._event >= o.idle_timeout:
                batch = asm.end()
                if batch is not None:
                    yield self._stamp(batch)
                say(f"{self.source}: no entries for {o.idle_timeout:g} s (idle_timeout): the stream ends")
                return

    # -- checkpoint, then XACK --------------------------------------------------------------------
    def commit(self, position: dict[str, Any]) -> None:
        """Acknowledge every entry ``position`` accounts for that is not acknowledged yet (see the module docstring)."""
        if not position:
            return  # a checkpoint taken before the first batch accounts for nothing
        cursor = position.get("cursor") or {}
        through = cursor.get("through")
        claimed = [str(c) for c in cursor.get("claimed") or []]
        with self._commit_lock:  # one commit at a time: only commit pops the deque
            if self._closed:
                return
            own: list[str] = []
            if through is not None:
                limit = entry_id(through)
                with self._lock:
                    for eid in self._unacked:
                        if entry_id(eid) > limit:
                            break
                        own.append(eid)
            self._ack(own + claimed)
            with self._lock:
                for _ in own:
                    self._unacked.popleft()
                for eid in claimed:
                    self._claimed_open.pop(eid, None)

    def close(self) -> None:
        """Close the connections, once the reader thread left its read and no commit runs (bounded waits)."""
        self._closing = True
        o = self.options
        reading = self._read_lock.acquire(timeout=o.block_ms / 1000 + o.timeout + 1)
        committing = self._commit_lock.acquire(timeout=o.timeout * 2 + 1)
        try:
            self._closed = True
            self._client.connection_pool.disconnect()
            self._decoding.close()
        finally:
            if committing:
                self._commit_lock.release()
            if reading:
                self._read_lock.release()

    # -- reading (reader thread) --------------------------------------------------------------------
    def _read(self, wait: float) -> list[tuple[bytes, dict]] | None:
        """The next own entries: pending ones after ``_after`` while catching up, else new ones
        (waiting at most ``wait`` seconds); None when closing. Entries up to the checkpoint's
        ``through`` met while catching up are acknowledged here and not returned."""
        import redis

        o = self.options
        with self._read_lock:
            if self._closing:
                return None
            try:
                if self._history:
                    reply = self._client.xreadgroup(o.group, o.consumer, {o.stream: self._after}, count=o.read_count)
                else:
                    block = max(1, int(wait * 1000))
                    reply = self._client.xreadgroup(o.group, o.consumer, {o.stream: ">"}, count=o.read_count, block=block)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._closing:
                    return None
                self._lost(exc)
                return []
            except redis.ResponseError as exc:
                raise self._gone(exc) from None
        self._back()
        entries = reply[0][1] if reply else []
        if not entries:
            self._history = False
            return []
        self._after = entries[-1][0].decode()
        self._event = time.monotonic()
        if self._history and self._through is not None:
            done = [e[0] for e in entries if entry_id(e[0]) <= self._through]
            if done:
                self._settle([d.decode() for d in done], claimed=False)  # accounted for before the checkpoint
                entries = entries[len(done):]  # ids increase: the settled ones come first
        return entries

    def _replay_claims(self) -> Iterator[Batch]:
        """Entries pending under ``<consumer>.claimed``: acknowledged when the checkpoint lists them, else trained."""
        import redis

        o = self.options
        try:
            with self._read_lock:
                summary = self._client.xpending(o.stream, o.group)
        except redis.RedisError as exc:
            raise self._gone(exc) from None
        if not any(_text(c["name"]) == self._claimer and int(c["pending"]) for c in summary.get("consumers") or []):
            return  # nothing there (and reading would create the consumer)
        after = "0"
        while True:
            try:
                with self._read_lock:
                    if self._closing:
                        return
                    reply = self._client.xreadgroup(o.group, self._claimer, {o.stream: after}, count=o.read_count)
            except redis.RedisError as exc:
                raise self._gone(exc) from None
            entries = reply[0][1] if reply else []
            if not entries:
                return
            after = entries[-1][0].decode()
            self._settle([e[0].decode() for e in entries if e[0].decode() in self._claimed_done], claimed=True)
            yield from self._offer([e for e in entries if e[0].decode() not in self._claimed_done], claimed=True)

    def _claim(self) -> list[tuple[bytes, dict]] | None:
        """Pending entries of other consumers idle for ``claim_idle_ms``, claimed into ``<consumer>.claimed``; None when closing."""
        import redis

        o = self.options
        taken: list[tuple[bytes, dict]] = []
        with self._read_lock:
            if self._closing:
                return None
            try:
                summary = self._client.xpending(o.stream, o.group)
                for consumer in summary.get("consumers") or []:
                    name = _text(consumer["name"])
                    if name in (o.consumer, self._claimer) or not int(consumer["pending"]):
                        continue
                    idle = self._client.xpending_range(
                        o.stream, o.group, "-", "+", o.read_count - len(taken), consumername=name, idle=o.claim_idle_ms
                    )
                    ids = [p["message_id"] for p in idle]
                    if ids:
                        # XCLAIM re-checks the idle time: an entry its owner acknowledged or read meanwhile stays there.
                        got = self._client.xclaim(o.stream, o.group, self._claimer, o.claim_idle_ms, ids)
                        if got:
                            say(f"{self.source}: took {len(got)} entries idle for {o.claim_idle_ms} ms from consumer {name!r}")
                        taken += got
                    if len(taken) >= o.read_count:
                        break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._closing:
                    return None
                self._lost(exc)
                return []
            except redis.ResponseError as exc:
                raise self._gone(exc) from None
        self._back()
        if taken:
            self._event = time.monotonic()
        return sorted(taken, key=lambda e: entry_id(e[0]))

    def _offer(self, entries: list[tuple[bytes, Mapping[bytes, bytes] | None]], claimed: bool) -> Iterator[Batch]:
        """Account for ``entries`` in order, yielding each batch stamped. Their payloads are decoded
        together (decode.py says why); each entry is listed as unacknowledged or claimed first, which
        no commit acts on before a batch holding it was yielded."""
        asm = self.asm
        if not claimed and self._field:  # the usual case, in comprehensions (this runs per entry)
            field = self._field
            values = [fields.get(field) if fields else None for _, fields in entries]
            if None not in values:  # every entry has its payload
                ids = [eid.decode() for eid, _ in entries]
                with self._lock:
                    self._unacked.extend(ids)
                cursors = [("through", eid) for eid in ids]
                for batch in self._accepted(values, cursors, lambda i: (ids[i], self.source, ids[i])):
                    yield self._stamp(batch)
                return
        accounted: list[tuple[str, tuple[str, Any], Any, str]] = []  # (id, cursor, message, reason to reject)
        with self._lock:
            for eid_bytes, fields in entries:
                eid = eid_bytes.decode()
                if claimed:
                    self._claims += 1
                    self._claimed_open[eid] = self._claims
                    cursor: tuple[str, Any] = ("claimed", self._claims)
                else:
                    self._unacked.append(eid)
                    cursor = ("through", eid)
                accounted.append((eid, cursor, *self._payload(fields)))
        if not any(reason for *_, reason in accounted):  # the usual case: every entry has its payload
            messages, cursors = [a[2] for a in accounted], [a[1] for a in accounted]
            for batch in self._accepted(messages, cursors, lambda i: (accounted[i][0], self.source, accounted[i][0])):
                yield self._stamp(batch)
            return
        records = self._decoding.decode_many([message for _, _, message, reason in accounted if not reason])
        row = 0
        for eid, cursor, message, reason in accounted:
            if reason:
                asm.reject(reason, message, source=self.source, offset=eid, cursor=cursor)
                continue
            batch = asm.accept(records, row, message, key=eid, source=self.source, offset=eid, cursor=cursor)
            row += 1
            if batch is not None:
                yield self._stamp(batch)

    def _payload(self, fields: Mapping[bytes, bytes] | None) -> tuple[Any, str]:
        """What the assembler decodes (the field's bytes, or the field map with text names), or a reason to reject the entry."""
        if not fields:
            return None, "the entry was deleted from the stream (XDEL, or trimmed) before it was trained"
        if self._field:
            value = fields.get(self._field)
            if value is None:
                names = ", ".join(short(_text(k), 24) for k in list(fields)[:8])
                return fields, f"the entry has no field {self.options.field!r} (its fields: {names})"
            return value, ""
        try:
            return {k.decode("utf-8"): v for k, v in fields.items()}, ""
        except UnicodeDecodeError:
            return fields, "a field name of the entry is not valid UTF-8"

    def _stamp(self, batch: Batch) -> Batch:
        """The batch's position with the Redis cursor: the watermark, the open claims it accounts for, whose it is."""
        cursor = batch.position["cursor"]
        n = cursor.get("claimed")
        n = n if isinstance(n, int) else 0  # a list: the restored checkpoint's, settled when the stream started
        with self._lock:
            claimed = [eid for eid, k in self._claimed_open.items() if k <= n]
        o = self.options
        batch.position["cursor"] = {
            "stream": o.stream,
            "group": o.group,
            "consumer": o.consumer,
            "through": cursor.get("through"),
            "claimed": claimed,
        }
        return batch

    # -- helpers --------------------------------------------------------------------------------
    def _ack(self, ids: list[str]) -> None:
        o = self.options
        for i in range(0, len(ids), ACK_CHUNK):
            self._client.xack(o.stream, o.group, *ids[i : i + ACK_CHUNK])
        with self._lock:  # the reader thread (restart) and the writer thread (commit) both count
            self.acked += len(ids)

    def _settle(self, ids: list[str], claimed: bool) -> None:
        """Acknowledge entries the checkpoint we resumed from accounts for; if that fails, the next
        commit does (own ids join the deque, which holds none yet that could come after them;
        claims stay open under number 0, which every position lists)."""
        import redis

        if not ids:
            return
        try:
            self._ack(ids)
        except redis.RedisError as exc:
            say(f"{self.source}: cannot acknowledge {len(ids)} entries of the checkpoint yet ({exc}); the next commit does")
            with self._lock:
                if claimed:
                    self._claimed_open.update({eid: 0 for eid in ids})
                else:
                    self._unacked.extend(ids)

    def _lost(self, exc: Exception) -> None:
        """A connection error: catch up on own pending entries once back; fail after ``retry_seconds``."""
        now = time.monotonic()
        self._history = True
        if self._down_since is None:
            self._down_since = now
            say(f"{self.source}: lost the connection to {self.url} ({exc}); retrying for up to {self.options.retry_seconds:g} s")
        elif now - self._down_since > self.options.retry_seconds:
            raise RuntimeError(
                f"{self.source}: the Redis server {self.url} has not answered for {now - self._down_since:.0f} s "
                f"(retry_seconds = {self.options.retry_seconds:g}): {exc}"
            )
        time.sleep(RETRY_PAUSE)

    def _back(self) -> None:
        if self._down_since is not None:
            say(f"{self.source}: reconnected to {self.url} after {time.monotonic() - self._down_since:.1f} s")
            self._down_since = None

    def _gone(self, exc: Exception) -> Exception:
        o = self.options
        if "NOGROUP" in str(exc):
            return RuntimeError(
                f"{self.source}: the stream {o.stream!r} or its group {o.group!r} no longer exists on {self.url} "
                "(deleted, or the server restarted without persistence)"
            )
        return RuntimeError(f"{self.source}: {exc}")

    def _dead_letter(self, reason: str, source: str, offset: Any, message: Any) -> None:
        record = _shown(message)
        self.context.dead_letter(reason, source, offset, record)
        if self.options.dead_letter_stream:
            import redis

            if isinstance(message, (bytes, bytearray)):
                raw: Any = bytes(message)
            else:
                raw = json.dumps(record) if record is not None else ""
            try:
                self._client.xadd(self.options.dead_letter_stream, {"reason": reason, "source": source, "offset": str(offset), "record": raw})
            except redis.RedisError as exc:
                if not self._dead_letter_failed:  # once: the file still has every dead letter
                    self._dead_letter_failed = True
                    say(f"{self.source}: cannot XADD dead letters to {self.options.dead_letter_stream!r} ({exc}); they are in the file")

    def _connect(self) -> Any:
        """A client whose commands are not retried by redis-py (see the module docstring), after
        checking (bounded by ``timeout``) that the server answers; creates the group when missing."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        o = self.options
        try:
            client = redis.Redis.from_url(
                o.url,
                socket_connect_timeout=o.timeout,
                socket_timeout=o.timeout + o.block_ms / 1000,  # a blocking read must not time out locally
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError("stream.url", f"{exc} (got {self.url!r})") from None
        try:
            client.ping()
            client.xgroup_create(o.stream, o.group, id=o.start, mkstream=True)
        except redis.AuthenticationError as exc:
            raise UserError(f"stream.url: the Redis server {self.url} refused the credentials: {exc}") from None
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                kind = ""
                if "WRONGTYPE" in str(exc):
                    kind = f" (the key {o.stream!r} holds a {_text(client.type(o.stream))}, not a stream)"
                raise UserError(f"stream.stream: cannot create the consumer group {o.group!r} on {o.stream!r}{kind}: {exc}") from None
        except redis.RedisError as exc:
            client.connection_pool.disconnect()
            raise UserError(
                f"stream.url: the Redis server {self.url} did not answer within {o.timeout:g} s ({exc}): "
                "is it running and the address right?"
            ) from None
        client.connection_pool.disconnect()  # nothing stays open before the stream starts; connections reopen on use
        return client


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, (bytes, bytearray)) else str(value)


def _shown(message: Any) -> Any:
    """What a dead letter carries: the payload's text (or base64), the entry's fields as text, or None (deleted)."""
    if message is None:
        return None
    if isinstance(message, Mapping):
        return {_text(k): raw_record(v) if isinstance(v, (bytes, bytearray, str)) else v for k, v in message.items()}
    return raw_record(message)
