"""Decoding each poll in child processes, beside the reader (the broker option ``decode_processes``).

**Why.** :meth:`~lifelong_brokers.decode.Decoder.decode_many` holds the GIL for 3–4 µs a record
(the JSON parse and the numpy conversion). For a reader on the training process's thread
(``reader_process = false``) the training thread needs that GIL between its tensor operations: the
two then run one after the other, not side by side (measured with the Kafka reader at batch 256,
``bench/brokers.py``: the reader thread took 0.23 s of CPU and training 0.19 s for 20,000 records,
and the pipeline ran at 0.4× its npz rate). In a child process the parse runs on another core while
the reader waits for the reply with the GIL released. For a reader in its own process
(:mod:`lifelong_brokers.reader_process`, the default) the children let that process use more than
one core, where there are cores to spare.

**How.** The child is forked (:func:`os.fork`) at the first poll of at least :data:`MIN_FORKED`
messages; smaller polls decode in the reader thread, where the round trip would cost more than it
saves. A poll goes in parts of :data:`PART` messages (:meth:`DecodeProcess.decode_parts`), round
robin over the children: they decode the next parts while the reader thread accounts for the last.
One child decodes about as fast as one core trains a small MLP at batch 256, so the default,
``decode_processes = -1``, forks one child per four CPUs, up to 4: on a 16-CPU machine, four. Below
four CPUs, a reader in its own process (:mod:`lifelong_brokers.reader_process`, the default) forks
none (on 2 CPUs the trainer and the reader process take both), and a reader on the training
process's thread one (its decoding leaves the GIL it shares with training). A fork inherits the
loaded modules, so the child starts in milliseconds and imports nothing.
It runs ``decode_many`` on numpy and orjson alone: it never touches torch, a device, a lock of the
parent's threads or a file (it closes every inherited descriptor but its pipe), which is what makes
a fork from a process with threads safe here, as PyTorch's DataLoader workers are forked. It
ignores SIGINT and SIGTERM (the training process decides when the stream stops) and exits when the
pipe closes: at :meth:`DecodeProcess.close`, or when the process that forked it dies (``kill -9``).

**Failure.** Decoding is a pure function of the bytes. If the child dies, or does not answer within
:data:`REPLY_TIMEOUT` seconds, it is killed, the reader says so once, and from then on decodes in
its own thread: nothing is lost or decoded differently, it is only slower.
"""

from __future__ import annotations

import gc
import os
import signal
from multiprocessing.connection import Connection, Pipe
from typing import Any, Iterator, Sequence

from lifelong_brokers.decode import Decoder, Records
from lifelong_streams.records import say

MIN_FORKED = 32  # messages: a smaller poll decodes in the reader thread
PART = 128  # messages per part of a poll (decode_parts): the child decodes one while the reader accounts for the last
REPLY_TIMEOUT = 30.0  # seconds for one poll's reply (a poll holds at most poll_records / read_count messages)


class DecodeProcess:
    """``decode_many`` in forked children; the same answers as ``decoder.decode_many``, in the same order.

    ``processes``: how many children decode the parts of a poll side by side (round robin); 0
    decodes in the reader thread; -1 picks one child per four CPUs, up to 4 (:func:`auto_processes`).
    """

    def __init__(self, decoder: Decoder, source: str, processes: int = 1, reader_process: bool = False):
        self.decoder = decoder
        self.source = source
        count = auto_processes(reader_process) if processes < 0 else processes
        self._enabled = count > 0 and hasattr(os, "fork")
        self._count = max(1, count)
        self._conns: list[Connection | None] = [None] * self._count
        self._pids: list[int | None] = [None] * self._count
        self._outstanding = [False] * self._count  # a part was sent to that child and its answer not read yet
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The children running now."""
        return [pid for pid in self._pids if pid is not None]

    def decode_many(self, messages: Sequence[Any]) -> Records:
        if self._enabled and len(messages) >= MIN_FORKED and self._ask(0, messages):
            records = self._answer(0)
            if records is not None:
                return records
        return self.decoder.decode_many(messages)

    def decode_parts(self, messages: Sequence[Any], part: int = PART) -> Iterator[tuple[int, Records]]:
        """``decode_many`` in parts of at most ``part`` messages, in order, as (index of the part's first
        message, its Records). Part k goes to child k mod N; while the caller accounts for one part the
        children decode the next N. A child is sent its next part only once its previous answer was
        read, so the parent and a child never both wait on a full pipe."""
        if not self._enabled or len(messages) < MIN_FORKED:
            yield 0, self.decoder.decode_many(messages)
            return
        starts = list(range(0, len(messages), part))
        asked = {k: self._ask(k % self._count, messages[starts[k] : starts[k] + part]) for k in range(min(self._count, len(starts)))}
        for k, start in enumerate(starts):
            child = k % self._count
            records = self._answer(child) if asked.pop(k, False) and self._enabled else None
            if records is None:  # the children failed: this part and the rest decode here
                records = self.decoder.decode_many(messages[start : start + part])
            following = k + self._count
            if following < len(starts) and self._enabled:
                asked[following] = self._ask(child, messages[starts[following] : starts[following] + part])
            yield start, records

    def close(self) -> None:
        """End the children (each exits when its pipe closes) and reap them; bounded in time."""
        self._closed = True
        self._stop_children(kill=False)

    # -- internals ------------------------------------------------------------------------------
    def _ask(self, child: int, messages: Sequence[Any]) -> bool:
        """Send a part to a child (forking it the first time); False if the children failed."""
        try:
            if self._outstanding[child]:
                self._answer(child)  # a part asked for by a caller that stopped reading: its answer is stale
            if not self._enabled:
                return False
            if self._conns[child] is None:
                self._fork(child)
            conn = self._conns[child]
            assert conn is not None
            conn.send(list(messages))
        except (OSError, ValueError) as exc:  # ValueError: closed meanwhile by close()
            self._give_up(exc)
            return False
        self._outstanding[child] = True
        return True

    def _answer(self, child: int) -> Records | None:
        """A child's answer to the part it was asked for; None if the children failed."""
        self._outstanding[child] = False
        try:
            conn = self._conns[child]
            assert conn is not None
            if not conn.poll(REPLY_TIMEOUT):
                raise TimeoutError(f"no reply within {REPLY_TIMEOUT:g} s")
            reply = conn.recv()
        except (OSError, EOFError, TimeoutError, ValueError, AssertionError) as exc:
            self._give_up(exc)
            return None
        if isinstance(reply, BaseException):  # a bug in decode_many: the caller's own decode raises it as it would have
            self._give_up(reply)
            return None
        return reply

    def _fork(self, child: int) -> None:
        ours, theirs = Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child: nothing here may return into the parent's code
            code = 0
            try:
                ours.close()
                _serve(theirs, self.decoder)
            except BaseException:  # noqa: BLE001 - the parent sees the pipe close and decodes itself
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self._conns[child], self._pids[child] = ours, pid

    def _give_up(self, why: BaseException) -> None:
        if not self._closed:  # else the reader is closing, and the pipes with it
            say(f"{self.source}: the decoding process failed ({type(why).__name__}: {why}); decoding in the reader thread from now on")
        self._enabled = False
        self._stop_children(kill=True)

    def _stop_children(self, kill: bool) -> None:
        for child in range(self._count):
            conn, pid = self._conns[child], self._pids[child]
            self._conns[child] = self._pids[child] = None
            self._outstanding[child] = False
            if conn is not None:
                conn.close()
            if pid is not None:
                if kill:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                _reap(pid)


def auto_processes(reader_process: bool = False) -> int:
    """Decoding children for ``decode_processes = -1``: one per four CPUs, at most 4. At least 1 for a reader
    on the training process's reader thread (the decoding then leaves the GIL it shares with training);
    none below four CPUs for a reader in a process of its own (``reader_process``: on 2 CPUs the trainer
    and the reader process take both, and a decoding child would only add its round trips)."""
    return max(0 if reader_process else 1, min(4, (os.cpu_count() or 1) // 4))


def _serve(conn: Connection, decoder: Decoder) -> None:
    """The child's loop: a poll's messages in, their Records (or the exception) out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.freeze()  # the inherited heap is no garbage of ours: collections skip it (reader_process.py: why)
    keep = conn.fileno()
    os.closerange(3, keep)  # sockets, the dead-letter file, locks: the training process's, not ours to hold open
    os.closerange(keep + 1, _max_fd())
    while True:
        try:
            messages = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: Any = decoder.decode_many(messages)
        except Exception as exc:  # noqa: BLE001 - sent back, raised by the parent's fallback
            reply = exc
        conn.send(reply)


def _max_fd() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return soft if 0 < soft < 1 << 20 else 1 << 16
    except (ImportError, ValueError, OSError):
        return 1 << 16


def _reap(pid: int, timeout: float = 2.0) -> None:
    """Wait for the child to exit (it does once its pipe closed); SIGKILL it after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            return
        time.sleep(0.01)

