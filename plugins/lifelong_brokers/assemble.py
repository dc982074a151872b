"""Turning broker messages into batches: what the ``kafka`` and ``redis`` readers share.

API (stable; both readers build on it)::

    asm = Assembler(options, context, source="kafka:topic", dead_letter=None)
    asm.info() -> StreamInfo                     # before the first batch
    asm.offer(message, *, key, source, offset, cursor=(name, value)) -> Batch | None
        # message: the original bytes/str (decoded with Decoder.decode) or a field mapping
        # (Decoder.decode_object, e.g. a Redis entry). key: the default record key (Kafka message
        # key / Redis entry id) used when options.key is empty. source/offset: for dead letters.
        # cursor: after this message, asm.cursor[name] = value (Kafka "topic:partition" → next
        # offset; Redis: whatever the reader needs). Returns a batch to yield NOW, before offering
        # the next message (dead letters of later messages must come after it), or None.
        # source@offset identifies the message: a held-out message read again is recognised.
    records = asm.decoder.decode_many(messages)   # one poll's messages decoded together (Records)
    asm.accept(records, i, messages[i], *, key, source, offset, cursor) -> Batch | None
        # offer() for a message decoded in bulk: row i of ``records``. Messages must still be
        # accepted one at a time, in order, yielding each returned batch before the next accept.
        # key: as for offer, or None when ``asm.needs_keys`` is False (nothing is held out).
    asm.accept_all(records, messages, cursors, describe) -> Iterator[Batch]
        # accept() for every row, ordinary rows taken in runs; describe(i) -> (key, source, offset)
        # is asked only for a row that goes through accept. Yield each batch before resuming it.
    asm.reject(reason, message, *, source, offset, cursor=None)
        # a message the reader itself refuses (e.g. a Redis entry without its payload field): a dead
        # letter with ``reason``, accounted for in the cursor like any other message.
    asm.wait_time(now=None) -> float             # seconds until the partial batch is due (inf: none)
    asm.due(now=None) -> bool                    # the partial batch waited batch_timeout: flush it
    asm.flush() -> Batch | None                  # the partial batch, if any (position = now)
    asm.end() -> Batch | None                    # stream ended: hand out the current test set, flush
    asm.drop(names) -> int                       # forget pending (not yielded) rows and the cursor
                                                 # entries of these cursor names (Kafka revocation)
    asm.position() -> dict                       # where the stream stands now (plain JSON)
    asm.restore(position) -> dict                # seek: restore state; returns position["cursor"]
    asm.cursor: dict[str, Any]                   # the live cursor (readers may read it)
    asm.test_set(exp) -> Batch | None            # thread-safe (training thread)
    asm.counts(position=None) -> dict[str, int]  # records, unlabeled, held_out, new_classes as of
                                                 # ``position`` (None: as of the start / the seek)

A position is ``{"cursor": {...}, "records", "experience", "finished", "held", "classes",
"counts"}``: the reader's cursor (offsets) after the last message accounted for, the number of
messages consumed (batch offsets and ``experience_records`` windows count them), the current
experience, the experiences whose test sets were handed out, the held-out rows of unfinished
experiences (base64 float32, class index, source@offset — so a seek rebuilds them; at most ``test_size`` per
experience, the cost of keeping held-out data exact across restarts), the open classes in head
order and the counts. Dead letters go through ``dead_letter(reason, source, offset, message)``
(default: the context's dead-letter file with :func:`~lifelong_brokers.decode.raw_record`), before
the batch that follows them is returned.

Behaviour, per message in order:

1. decode (:class:`~lifelong_brokers.decode.Decoder`); a bad message is a dead letter;
2. a label maps to its class: declared ``classes`` (an unknown label is a dead letter) or open
   classes: a new label takes the next free index of ``num_classes`` and is logged once
   ("new class 'x' → index 3"); past ``num_classes`` it is a dead letter;
3. the experience id: the record's field, else ``records // experience_records``, else 0; when it
   changes, the previous experience's held-out set is handed out and the partial batch is cut, so
   a batch never spans two experiences (an experience that comes back after that is trained on,
   never held out again: its set is fixed once handed out). Explicit experience ids assume the
   stream moves through experiences in order (one partition, or partitions moving together);
4. an unlabeled record is counted, never trained on;
5. a labeled record is held out when the hash of (seed, key) falls below ``test_fraction`` and its
   experience's set holds fewer than ``test_size`` records (a message already held out, known by
   its source@offset, is not held out twice, so re-reading after a rebalance or a seek keeps the
   set exact, and it is not trained on either); without experience ids or
   windows the one set (experience 0) is handed out as soon as it is full;
6. else it joins the batch; a full batch (``batch_size``) is returned.

A partial batch is due once its oldest record waited ``batch_timeout`` seconds, so no record waits
longer than that before it is yielded.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import fields as dataclass_fields
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong.types import Batch, StreamInfo
from lifelong_brokers.decode import BadRecord, Decoder, Records, raw_record
from lifelong_brokers.decode_process import DecodeProcess
from lifelong_brokers.options import BrokerOptions
from lifelong_streams.records import say, short

DeadLetter = Callable[[str, str, Any, Any], None]  # (reason, source, offset, original message)
POSITION_KEYS = {"cursor", "records", "experience", "finished", "held", "classes", "counts"}


def held_out(seed: int, key: str, fraction: float) -> bool:
    """Whether the record with ``key`` belongs to the test set: a stable hash of (seed, key)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


class Assembler:
    """Decoding, classes, held-out sets, batching and positions of one broker stream; see the module docstring."""

    def __init__(self, options: BrokerOptions, context: ReaderContext, source: str, dead_letter: DeadLetter | None = None):
        self.options = options
        self.context = context
        self.source = source
        self.decoder = Decoder(options)
        self._dead_letter = dead_letter or (lambda reason, src, offset, message: context.dead_letter(reason, src, offset, _shown(message)))
        self._declared = options.classes is not None
        self.classes: list[str] = [c.strip() for c in options.classes] if options.classes is not None else []
        self._index = {name: i for i, name in enumerate(self.classes)}
        self.num_classes = len(self.classes) if self._declared else options.num_classes
        self._one_set = not options.experience and not options.experience_records  # experiences = [0]
        self._lock = threading.Lock()  # ready test sets: written on the reader thread, read on the training thread
        self._ready: dict[int, Batch] = {}
        self.cursor: dict[str, Any] = {}
        self._records = 0
        self._current: int | None = None
        self._finished: set[int] = set()
        self._held: dict[int, list[tuple[np.ndarray, int, list[Any]]]] = {}
        self._held_keys: dict[int, set[str]] = {}  # source@offset of the held-out rows
        self._counts = {"records": 0, "unlabeled": 0, "held_out": 0, "new_classes": 0}
        self._initial_counts = dict(self._counts)
        # pending rows, in runs: (x of shape (k, features), k classes, k cursor names); _pending counts the rows
        self._rows: list[tuple[np.ndarray, list[int], list[str]]] = []
        self._pending = 0
        self._since = 0.0  # monotonic time the oldest pending row arrived
        self._start = 0  # records count before the pending batch's first row
        extra: dict[str, Any] = {}
        if options.normalize != "none":
            if "normalize" not in {f.name for f in dataclass_fields(StreamInfo)}:
                raise UserError(f"stream.normalize = {options.normalize!r} needs a kernel whose StreamInfo has normalize")
            extra["normalize"] = options.normalize
        self._info = StreamInfo(
            input_shape=(self.decoder.num_features,),
            num_classes=self.num_classes,
            scenario=options.scenario,
            experiences=[0] if self._one_set else None,
            class_names=self._class_names(),
            feature_names=self.decoder.feature_names,
            **extra,
        )

    # -- the stream -----------------------------------------------------------------------------
    def info(self) -> StreamInfo:
        return self._info

    @property
    def needs_keys(self) -> bool:
        """Whether offer/accept read ``key``: only to hold records out (a reader may skip making it)."""
        return bool(self.options.test_fraction)

    def offer(self, message: Any, *, key: str, source: str, offset: Any, cursor: tuple[str, Any] | None = None) -> Batch | None:
        """Account for one message (see the module docstring); a returned batch must be yielded before the next offer."""
        try:
            record = self.decoder.decode_object(message) if isinstance(message, Mapping) else self.decoder.decode(message)
        except BadRecord as bad:
            self.reject(str(bad), message, source=source, offset=offset, cursor=cursor)
            return None
        return self._account(record.x, record.label, record.experience, record.key, message, key, source, offset, cursor)

    def accept(self, records: Records, i: int, message: Any, *, key: str | None, source: str, offset: Any,
               cursor: tuple[str, Any] | None = None) -> Batch | None:
        """:meth:`offer` for row ``i`` of messages decoded together (``decoder.decode_many``)."""
        reason = records.bad.get(i)
        if reason is not None:
            self.reject(reason, message, source=source, offset=offset, cursor=cursor)
            return None
        return self._account(records.x[i], records.labels[i], records.experiences[i], records.keys[i], message, key, source,
                             offset, cursor)

    def accept_all(self, records: Records, messages: Sequence[Any], cursors: Sequence[tuple[str, Any]],
                   describe: Callable[[int], tuple[str | None, str, Any]]) -> Iterator[Batch]:
        """:meth:`accept` for every row of ``records`` in order, yielding each batch (it must be yielded,
        i.e. handed on, before the generator is resumed). ``describe(i)`` gives message i's (key, source,
        offset); it is asked only for a message that needs them (see below).

        Rows that change nothing but the pending batch (good, labeled with a class the head has, in
        the current experience, and nothing to hold out) are taken in runs: their features as one
        array, their cursors with one dict update, a batch cut wherever the batch fills. Any other row
        goes through :meth:`accept`, so both give the same batches, positions and dead letters (tested
        against each other).
        """
        n, i = len(records), 0
        bulk_ok = not self.options.experience and not self.options.experience_records
        labels, bad, index = records.labels, records.bad, self._index
        while i < n:
            j, ys = i, []
            if bulk_ok and self._current is not None and (not self.options.test_fraction or self._current in self._finished):
                while j < n and j not in bad:
                    y = index.get(labels[j])  # type: ignore[arg-type]
                    if y is None:
                        break  # unlabeled, or a class the head does not have yet
                    ys.append(y)
                    j += 1
            if j == i:
                key, source, offset = describe(i)
                batch = self.accept(records, i, messages[i], key=key, source=source, offset=offset, cursor=cursors[i])
                if batch is not None:
                    yield batch
                i += 1
                continue
            while i < j:  # rows i..j-1 join the pending batch, cut where it fills
                take = min(self.context.batch_size - self._pending, j - i)
                if not self._rows:
                    self._since, self._start = time.monotonic(), self._records
                self._rows.append((records.x[i : i + take], ys[: take], [c[0] for c in cursors[i : i + take]]))
                del ys[:take]
                self._pending += take
                self.cursor.update(cursors[i : i + take])
                self._records += take
                self._counts["records"] = self._records
                i += take
                if self._pending >= self.context.batch_size:
                    yield self._batch()

    def _account(self, x: np.ndarray, label: str | None, experience: int | None, record_key: str | None, message: Any,
                 key: str | None, source: str, offset: Any, cursor: tuple[str, Any] | None) -> Batch | None:
        """Steps 2-6 of the module docstring for one decoded message."""
        name = cursor[0] if cursor is not None else ""
        try:
            y = self._class(label) if label is not None else -1
        except BadRecord as bad:
            self.reject(str(bad), message, source=source, offset=offset, cursor=cursor)
            return None
        out = None
        exp = self._experience(experience)
        if exp != self._current:
            if self._rows:
                out = self._batch()  # the stream stands before this record, still in the old experience
            if self._current is not None:
                self._finish(self._current)
            self._current = exp
        if y < 0:
            self._counts["unlabeled"] += 1
        elif not self._hold(x, record_key, y, exp, key, source, offset):
            if not self._rows:
                self._since, self._start = time.monotonic(), self._records
            self._rows.append((x[None], [y], [name]))
            self._pending += 1
            if self._pending >= self.context.batch_size:
                self._advance(cursor)
                return self._batch()  # out is None here: a cut leaves an empty batch, and batch_size >= 1
        self._advance(cursor)
        return out

    def reject(self, reason: str, message: Any, *, source: str, offset: Any, cursor: tuple[str, Any] | None = None) -> None:
        """Dead-letter a message the reader refuses before decoding, and account for it."""
        self._dead_letter(reason, source, offset, message)
        self._advance(cursor)

    def wait_time(self, now: float | None = None) -> float:
        if not self._rows:
            return float("inf")
        return max(0.0, self._since + self.options.batch_timeout - (time.monotonic() if now is None else now))

    def due(self, now: float | None = None) -> bool:
        return bool(self._rows) and self.wait_time(now) <= 0.0

    def flush(self) -> Batch | None:
        return self._batch() if self._rows else None

    def end(self) -> Batch | None:
        """The stream ended: the current experience's held-out set is handed out, then the partial batch."""
        if self._current is not None:
            self._finish(self._current)
        return self.flush()

    def drop(self, names: Iterable[str]) -> int:
        """Forget pending rows read under these cursor names, and their cursor entries; returns the rows dropped."""
        names = set(names)
        before, kept = self._pending, []
        for x, ys, row_names in self._rows:
            keep = [n not in names for n in row_names]
            if all(keep):
                kept.append((x, ys, row_names))
            elif any(keep):
                kept.append((x[keep], [y for y, k in zip(ys, keep) if k], [n for n, k in zip(row_names, keep) if k]))
        self._rows, self._pending = kept, sum(len(run[1]) for run in kept)
        for name in names:
            self.cursor.pop(name, None)
        return before - self._pending

    # -- positions ------------------------------------------------------------------------------
    def position(self) -> dict[str, Any]:
        return {
            "cursor": dict(self.cursor),
            "records": self._records,
            "experience": self._current,
            "finished": sorted(self._finished),
            "held": {str(exp): [row[2] for row in rows] for exp, rows in self._held.items() if exp not in self._finished},
            "classes": None if self._declared else list(self.classes),
            "counts": dict(self._counts),
        }

    def restore(self, position: Mapping[str, Any]) -> dict[str, Any]:
        """Go back to ``position`` (one this assembler's stream produced); returns its cursor."""
        if not isinstance(position, Mapping) or not POSITION_KEYS <= set(position):
            raise ValueError(f"not a position of this stream: {short(position, 200)}")
        self.cursor = dict(position["cursor"])
        self._records = int(position["records"])
        self._current = None if position["experience"] is None else int(position["experience"])
        self._finished = {int(e) for e in position["finished"]}
        self._held, self._held_keys = {}, {}
        for exp, rows in position["held"].items():
            for enc, y, uid in rows:
                x = np.frombuffer(base64.b64decode(enc), dtype=np.float32).copy()
                self._held.setdefault(int(exp), []).append((x, int(y), [enc, int(y), uid]))
                self._held_keys.setdefault(int(exp), set()).add(uid)
        if position["classes"] is not None and not self._declared:
            self.classes = list(position["classes"])
            self._index = {name: i for i, name in enumerate(self.classes)}
            self._info.class_names = self._class_names()
        self._counts.update({k: int(v) for k, v in position["counts"].items()})
        self._initial_counts = dict(self._counts)
        self._rows, self._pending = [], 0
        with self._lock:
            self._ready = {}
        return dict(self.cursor)

    # -- test sets and counts ---------------------------------------------------------------------
    def test_set(self, experience: int) -> Batch | None:
        with self._lock:
            return self._ready.get(experience)

    def counts(self, position: Mapping[str, Any] | None = None) -> dict[str, int]:
        """The counts as of ``position`` (a position of this stream), or as of the start / the seek."""
        if position is not None:
            return {k: int(v) for k, v in position["counts"].items()}
        return dict(self._initial_counts)

    # -- internals --------------------------------------------------------------------------------
    def _advance(self, cursor: tuple[str, Any] | None) -> None:
        self._records += 1
        self._counts["records"] = self._records
        if cursor is not None:
            self.cursor[cursor[0]] = cursor[1]

    def _class(self, label: str) -> int:
        index = self._index.get(label)
        if index is not None:
            return index
        what = f"label {short(label)} in field {self.options.label!r}"
        if self._declared:
            raise BadRecord(f"{what} is not one of the declared classes")
        if len(self.classes) >= self.num_classes:
            raise BadRecord(f"{what} is a new class, but all num_classes = {self.num_classes} head slots are taken")
        index = len(self.classes)
        self.classes.append(label)
        self._index[label] = index
        self._counts["new_classes"] += 1
        self._info.class_names = self._class_names()  # a new list: readers of the old one see a consistent list
        say(f"{self.source}: new class {short(label)} → index {index}")
        return index

    def _class_names(self) -> list[str]:
        """Head index → label; with open classes the slots not taken yet are "" (a label is never empty)."""
        return list(self.classes) + [""] * (self.num_classes - len(self.classes))

    def _experience(self, experience: int | None) -> int:
        if experience is not None:
            return experience
        if self.options.experience_records:
            return self._records // self.options.experience_records
        return 0

    def _hold(self, x: np.ndarray, record_key: str | None, y: int, exp: int, key: str | None, source: str, offset: Any) -> bool:
        fraction = self.options.test_fraction
        if not fraction or exp in self._finished:
            return False
        key = record_key if record_key is not None else str(key)
        if not held_out(self.context.seed, key, fraction):
            return False
        uid = f"{source}@{offset}"
        uids = self._held_keys.setdefault(exp, set())
        if uid in uids:
            return True  # read again (after a rebalance or seek): already in the set
        rows = self._held.setdefault(exp, [])
        if len(rows) >= self.options.test_size:
            return False
        x = x.copy()  # a row of the poll's array: keep only its own values
        rows.append((x, y, [base64.b64encode(x.tobytes()).decode("ascii"), y, uid]))
        uids.add(uid)
        self._counts["held_out"] += 1
        if self._one_set and len(rows) >= self.options.test_size:
            self._finish(exp)
        return True

    def _finish(self, exp: int) -> None:
        """The stream moved past ``exp`` (or its one set is full): its held-out rows become its test set."""
        if exp in self._finished:
            return
        self._finished.add(exp)
        rows = self._held.pop(exp, None)
        self._held_keys.pop(exp, None)
        if rows:
            batch = Batch(
                x=torch.from_numpy(np.stack([r[0] for r in rows])),
                y=torch.tensor([r[1] for r in rows], dtype=torch.long),
                experience=exp,
                source=self.source,
            )
            with self._lock:
                self._ready[exp] = batch

    def _batch(self) -> Batch:
        rows, self._rows, self._pending = self._rows, [], 0
        return Batch(
            x=torch.from_numpy(np.concatenate([run[0] for run in rows])),
            y=torch.tensor([y for run in rows for y in run[1]], dtype=torch.long),
            experience=self._current if self._current is not None else 0,
            source=self.source,
            start=self._start,
            stop=self._records,  # messages accounted for so far: the batch's range is half-open
            position=self.position(),
        )


def _shown(message: Any) -> Any:
    """What a dead letter carries for a message: text, {"base64": ...}, or a field map with text values."""
    if isinstance(message, Mapping):
        return {str(raw_record(k)): raw_record(v) if isinstance(v, (bytes, bytearray, str)) else v for k, v in message.items()}
    return raw_record(message)


class AssembledStream:
    """The reader members both broker readers hand straight to their assembler (``self.asm``), and their
    way of taking in a poll (``self._decoding`` decodes it)."""

    asm: Assembler
    _decoding: DecodeProcess

    def _accepted(self, messages: Sequence[Any], cursors: Sequence[tuple[str, Any]],
                  describe: Callable[[int], tuple[str | None, str, Any]]) -> Iterator[Batch]:
        """A poll's batches: decoded in parts (beside training, decode_process.py) and accepted in runs
        (:meth:`Assembler.accept_all`); ``describe(i)`` is about message i of the whole poll."""
        for start, records in self._decoding.decode_parts(messages):
            stop = start + len(records)
            yield from self.asm.accept_all(records, messages[start:stop], cursors[start:stop], lambda i, start=start: describe(start + i))

    def info(self) -> StreamInfo:
        return self.asm.info()

    def test_set(self, experience: int) -> Batch | None:
        return self.asm.test_set(experience)

    def counts(self, position: Any = None) -> dict[str, int]:
        return self.asm.counts(position)
