"""A broker reader run whole in a forked child process (the broker option ``reader_process``, on by default).

**Why.** In the training process the reader thread and the training thread share the GIL. The
decoding already ran in child processes (:mod:`lifelong_brokers.decode_process`), but what was left
on the reader thread (collecting a poll's messages, the round trip to the decoder, the accounting
per record: ~3 µs a record) still ran one after the other with training, not beside it: fed by
Kafka the pipeline ran at 0.51× its npz rate at batch 256 and 0.86× at batch 32 (2 CPUs, commit
143b2e3, ``bench/brokers.py``). In the child, consuming, decoding and batching take none of the
training process's GIL; what stays there is receiving each finished batch (one pipe read and one
unpickle: a batch's arrays and its position).

**How.** The factory builds the reader in the training process (so a bad address or a missing
topic is a UserError at once, and ``info()`` is known) and then forks, from the thread that builds
the plan (the main thread, before training, the tracker's writer or any reader thread start). The
child holds the live copy of the reader: it opens the broker connections, iterates the stream and
answers the kernel's calls. The training process keeps a proxy with the reader's members:

- ``__iter__`` receives, in order, the batches, the dead letters written before each batch (the
  proxy writes them to the run's dead-letter file before it yields the batch that follows them, so
  the kernel's dead-letter mark matches the position, as in one process) and new class names (set
  on the ``StreamInfo`` the kernel holds before the batch that needed them);
- test sets: the child sends each as it is handed out (after the batch that handed it out, before
  the next), and the proxy answers ``test_set`` from those, also after ``close``;
- ``seek``, ``seek_ranks``, ``release_revocation`` and ``close`` are calls answered by the child's
  main thread; ``commit`` goes over its own pipe to its own thread in the
  child, since a commit may wait seconds (a Kafka rebalance) and must not hold up the others;
- ``checkpoint_wanted()`` and ``rebalance_hold()`` are polled by the training thread at every step,
  so they read two bytes of shared memory that a thread of the child refreshes every
  :data:`FLAGS_EVERY` seconds: no round trip per step, and at most that much later than in one process.

Backpressure is the pipe's: when the kernel's queue of batches is full the proxy stops reading, the
child blocks sending, and the reader stays suspended at its ``yield`` as it would in one process (a
pipe's worth of batches more is read ahead: at most :data:`PIPE_BYTES`, 1 MiB, plus one batch).

**Lifetime.** The child ignores SIGINT and SIGTERM (the training process decides when the stream
stops: it calls ``close()``), and dies with the training process: Linux's parent-death signal
(SIGKILL) for ``kill -9`` of the trainer, and in any case when its call pipe closes. It never
touches torch's devices or the parent's files: the dead letters are written by the proxy. If the
child dies, the proxy's next read raises, naming its exit status: the run fails and resumes from
its last checkpoint, like any reader failure. Where :func:`os.fork` does not exist the reader runs
in the training process.

Contract for a reader served so: ``counts(position)`` with a position must depend on the position
only (the proxy's own, unforked copy answers it after the child is gone: the summary asks last).
"""

from __future__ import annotations

import contextlib
import gc
import io
import mmap
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, Pipe
from typing import Any, Iterator

import numpy as np
import torch

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong.types import Batch, StreamInfo

FLAGS_EVERY = 0.005  # seconds between two refreshes of the shared checkpoint_wanted / rebalance_hold flags
CALL_TIMEOUT = 60.0  # seconds for one call (seek, release_revocation, ...) to be answered
COMMIT_TIMEOUT = 60.0  # seconds for a commit's answer (the readers bound their own commits well below this)
CLOSE_TIMEOUT = 30.0  # seconds for close() in the child (a Kafka close waits for its poll, then flushes dead letters)
OPTIONAL = ("seek", "seek_ranks", "commit", "checkpoint_wanted", "rebalance_hold", "release_revocation", "counts", "close")
PIPE_BYTES = 1 << 20  # the data pipe's buffer: what the child may read ahead beyond the kernel's queue
HOLDS = ("free", "busy", "holding")  # rebalance_hold() states, by their byte in the shared flags


def served(reader: Any, context: ReaderContext, enabled: bool) -> Any:
    """``reader`` run in a forked child (a :class:`ReaderProcess`), or itself when not ``enabled`` or without fork."""
    if not enabled or not hasattr(os, "fork"):
        return reader
    return ReaderProcess(reader, context)


class ReaderProcess:
    """The training process's side of a reader run in a child; see the module docstring."""

    def __init__(self, reader: Any, context: ReaderContext):
        self._reader = reader  # this process's copy: never iterated here; answers counts() and info()
        self._context = context
        self._info: StreamInfo = reader.info()
        self.partitioned = getattr(reader, "partitioned", False)
        for name in OPTIONAL:  # the proxy offers exactly the optional members the reader has
            if not callable(getattr(reader, name, None)):
                setattr(self, name, None)
        self._source = getattr(reader, "source", type(reader).__name__)
        self._flags = mmap.mmap(-1, 2)  # [checkpoint_wanted, rebalance_hold]: shared with the child (MAP_SHARED)
        self._call_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._test_sets: dict[int, Batch] = {}  # sent by the child as they are handed out (fixed from then on)
        self._calls_made = self._commits_made = 0  # requests are numbered: an answer after its timeout is skipped
        self._closing = False
        self._exit: int | None = None
        data_in, data_out = Pipe(duplex=False)
        _widen(data_out)
        calls, child_calls = Pipe()
        commits, child_commits = Pipe()
        parent = os.getpid()
        # Linux's parent-death signal follows the thread that forked: only the main thread lives as long as the process
        tie = threading.current_thread() is threading.main_thread()
        self.pid = os.fork()
        if self.pid == 0:  # the child: nothing here may return into the caller's code
            code = 1
            try:
                for end in (data_in, calls, commits):
                    end.close()
                _detach(parent, tie)
                code = _Child(reader, context, data_out, child_calls, child_commits, self._flags).run()
            finally:
                os._exit(code)
        for end in (data_out, child_calls, child_commits):
            end.close()
        self._data, self._calls, self._commits = data_in, calls, commits

    # -- the reader contract ----------------------------------------------------------------------
    def info(self) -> StreamInfo:
        return self._info

    def __iter__(self) -> Iterator[Batch]:
        self._call("iter")
        while True:
            try:
                if not self._data.poll(0.2):
                    if self._closing:
                        return
                    continue
                kind, payload = self._data.recv()
            except (EOFError, OSError):
                if self._closing:
                    return
                raise RuntimeError(f"{self._source}: the reader process ended unexpectedly ({self._status()})") from None
            if kind == "batch":
                yield _batch(payload)
            elif kind == "dead":
                self._context.dead_letter(*payload)
            elif kind == "classes":
                self._info.class_names = payload
            elif kind == "test":
                self._test_sets[payload[0]] = _batch(payload[1])
            elif kind == "end":
                return
            else:  # "error": the reader raised it in the child
                raise payload

    def seek(self, position: dict[str, Any]) -> None:
        self._call("seek", position)
        self._reader.seek(position)  # this copy answers counts(None) as of the seek

    def seek_ranks(self, position: dict[str, Any] | None, positions: list[dict[str, Any] | None]) -> None:
        self._call("seek_ranks", position, positions)
        self._reader.seek_ranks(position, positions)

    def test_set(self, experience: int) -> Batch | None:
        return self._test_sets.get(experience)

    def counts(self, position: Any = None) -> dict[str, int]:
        return self._reader.counts(position)

    def commit(self, position: dict[str, Any]) -> None:
        with self._commit_lock:
            self._commits_made += 1
            error = self._ask(self._commits, (self._commits_made, position), "a commit", COMMIT_TIMEOUT)
        if error is not None:
            raise error

    def checkpoint_wanted(self) -> bool:
        return self._flags[0] == 1

    def rebalance_hold(self) -> str:
        return HOLDS[self._flags[1]]

    def release_revocation(self) -> None:
        self._call("release_revocation")

    def close(self) -> None:
        """Close the reader in the child, then end the child (reaped; SIGKILL if it does not exit)."""
        self._closing = True
        try:
            self._call("close", timeout=CLOSE_TIMEOUT)
        except (RuntimeError, TimeoutError):
            pass  # the child is gone or stuck: killed below, the stream's state is in the checkpoint
        finally:
            for end in (self._data, self._calls, self._commits):
                end.close()
            self._reap()

    # -- internals ----------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        with self._call_lock:
            self._calls_made += 1
            ok, value = self._ask(self._calls, (self._calls_made, name, args), f"{name}()", timeout)
        if not ok:
            raise value
        return value

    def _ask(self, conn: Connection, request: tuple, what: str, timeout: float) -> Any:
        """Send ``request`` (its first item numbers it) and wait for its answer; an answer to an earlier
        request that timed out is skipped."""
        try:
            conn.send(request)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not conn.poll(left):
                    raise TimeoutError(f"{self._source}: the reader process did not answer {what} within {timeout:g} s")
                number, *answer = conn.recv()
                if number == request[0]:
                    return answer[0] if len(answer) == 1 else answer
        except (EOFError, OSError):
            raise RuntimeError(f"{self._source}: the reader process ended unexpectedly ({self._status()})") from None

    def _status(self) -> str:
        """How the child ended, once it has (a short wait: its pipes close as it exits)."""
        if self._exit is None:
            deadline = time.monotonic() + 1.0
            while self._exit is None and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        self._exit = status
                        break
                time.sleep(0.01)
        if self._exit is None:
            return "still running"
        if os.WIFSIGNALED(self._exit):
            return f"killed by signal {os.WTERMSIG(self._exit)}"
        return f"exit status {os.waitstatus_to_exitcode(self._exit)}"

    def _reap(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self._exit is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self._exit = status
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    self._exit = os.waitpid(self.pid, 0)[1]
                return
            time.sleep(0.01)


class _Child:
    """The child's side: the reader's stream on one thread, calls on the main thread, commits on a third,
    the shared flags on a fourth."""

    def __init__(self, reader: Any, context: ReaderContext, data: Connection, calls: Connection, commits: Connection,
                 flags: mmap.mmap):
        self.reader, self.data, self.calls, self.commits, self.flags = reader, data, calls, commits, flags
        self._send_lock = threading.Lock()
        self._stopped = threading.Event()
        context.dead_letter = self._dead_letter  # type: ignore[assignment] # the proxy writes them, in order
        self._class_names = reader.info().class_names

    def run(self) -> int:
        threads = [threading.Thread(target=self._serve_commits, name="lifelong-commits", daemon=True)]
        if self.reader_has("checkpoint_wanted") or self.reader_has("rebalance_hold"):
            threads.append(threading.Thread(target=self._mirror_flags, name="lifelong-flags", daemon=True))
        for thread in threads:
            thread.start()
        pump = threading.Thread(target=self._pump, name="lifelong-reader", daemon=True)
        while True:
            try:
                number, name, args = self.calls.recv()
            except (EOFError, OSError):
                return 0  # the training process is gone
            try:
                if name == "iter":
                    if pump.ident is not None:
                        raise RuntimeError("a broker stream is read once: it cannot be iterated again")
                    pump.start()
                    value = None
                else:
                    value = getattr(self.reader, name)(*args)
                reply: tuple[int, bool, Any] = (number, True, value)
            except BaseException as exc:  # noqa: BLE001 - raised in the training process
                reply = (number, False, _sendable(exc))
            if name == "close":
                self._stopped.set()
            try:
                self.calls.send(reply)
            except OSError:
                return 0
            if name == "close":
                if pump.ident is not None:
                    pump.join(timeout=2.0)  # it leaves at its next read; a send blocked on a full pipe stays
                return 0

    def reader_has(self, name: str) -> bool:
        return callable(getattr(self.reader, name, None))

    def _pump(self) -> None:
        seen = set(self.reader.info().experiences or [])  # experiences whose test set may come
        sent: set[int] = set()
        try:
            for batch in self.reader:
                names = self.reader.info().class_names
                if names != self._class_names:
                    self._class_names = names
                    self._send(("classes", list(names)))
                self._send(("batch", _fields(batch)))
                seen.add(batch.experience)
                self._send_test_sets(seen, sent)
            self._send_test_sets(seen, sent)
            self._send(("end", None))
        except OSError:
            return  # the training process closed the pipe: it stopped reading
        except BaseException as exc:  # noqa: BLE001 - raised in the training process, at this point of the stream
            with contextlib.suppress(OSError):
                self._send(("error", _sendable(exc)))

    def _send_test_sets(self, seen: set[int], sent: set[int]) -> None:
        """Test sets handed out since the last look (a set is fixed once handed out: each is sent once)."""
        for experience in seen - sent:
            found = self.reader.test_set(experience)
            if found is not None:
                sent.add(experience)
                self._send(("test", (experience, _fields(found))))

    def _dead_letter(self, reason: str, source: str, offset: Any, record: Any = None) -> None:
        self._send(("dead", (reason, source, offset, record)))

    def _send(self, item: Any) -> None:
        with self._send_lock:
            self.data.send_bytes(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))

    def _serve_commits(self) -> None:
        while True:
            try:
                number, position = self.commits.recv()
            except (EOFError, OSError):
                return
            try:
                self.reader.commit(position)
                error = None
            except BaseException as exc:  # noqa: BLE001 - raised by the training process's commit()
                error = _sendable(exc)
            try:
                self.commits.send((number, error))
            except OSError:
                return

    def _mirror_flags(self) -> None:
        wanted = getattr(self.reader, "checkpoint_wanted", None)
        hold = getattr(self.reader, "rebalance_hold", None)
        while not self._stopped.wait(FLAGS_EVERY):
            self.flags[0] = 1 if callable(wanted) and wanted() else 0
            self.flags[1] = HOLDS.index(hold()) if callable(hold) else 0


def _widen(conn: Connection) -> None:
    """The data pipe's buffer at :data:`PIPE_BYTES` (Linux; elsewhere the default stays): a batch of 256
    rows of 64 features is 68 KB, and through the default 64 KiB each one took two reads and a wake-up
    of the child in between (87 → 65 µs of the training process's CPU a batch)."""
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)


def _detach(parent: int, tie: bool) -> None:
    """The child's process setup: the stream's stop is the training process's call; die with it (``tie``:
    also by Linux's parent-death signal, SIGKILL, for a ``kill -9`` of the trainer)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if tie:
        with contextlib.suppress(Exception):  # not Linux: the call pipe's end still ends the child
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)  # the training process died before the signal was set up
    torch.set_num_threads(1)  # as DataLoader workers: no intra-op pool is used here, none is started
    # The inherited heap (torch, the model, the plugins: ~170k objects) is never garbage here, yet every
    # full collection, triggered by the reader's own allocations, would walk it (~60 ms each): frozen, the
    # Redis reader took 6.9 µs of CPU a record instead of 14.6 (docs/streams.md, "Throughput").
    gc.freeze()
    # The inherited sys.stdout/stderr objects may have been locked by another thread at the fork: fresh
    # ones on the same descriptors (the reader's messages go where the run's go).
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True)  # noqa: SIM115
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True)  # noqa: SIM115


def _fields(batch: Batch) -> dict[str, Any]:
    """A batch as plain data: its tensors as numpy arrays (a tensor's own pickling is much slower)."""
    return {
        name: (value.numpy() if isinstance(value, torch.Tensor) else value)
        for name, value in vars(batch).items()
    }


def _batch(fields: dict[str, Any]) -> Batch:
    return Batch(**{name: (torch.from_numpy(value) if isinstance(value, np.ndarray) else value) for name, value in fields.items()})


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling as itself, else a RuntimeError (a UserError stays one) with its text."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - not picklable: its text is sent
        pass
    kind = UserError if isinstance(exc, UserError) else RuntimeError
    return kind(f"{type(exc).__name__}: {exc}")
