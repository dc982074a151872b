"""The outbox writer: a process of its own that applies outbox entries to MLflow, in order.

    python -m lifelong_mlflow.outbox_writer OUTBOX --session ID --parent PID --wait-go
    python -m lifelong_mlflow.outbox_writer OUTBOX --drain SECONDS

**Why a process, not a thread.** Logging and registering a generation is seconds of Python work
(MLflow's client, protobuf and JSON, SQLAlchemy for a sqlite store, hashing and copying files).
On a thread of the training process it holds the GIL for most of that time, and training slowed
to a third of its speed while a generation was written (measured: 25-27k samples/s without the
tracker, 4-12k with it; 477 samples/s against a server). In a process of its own it shares
nothing with the training interpreter; only the CPUs, and the training process never waits for it.

**What it does.** The tracker starts one per run in ``on_run_start`` (:mod:`lifelong_mlflow.tracker`)
with ``--wait-go``: it imports MLflow while the tracker's preflight runs, then waits for ``go`` on
its standard input. It then applies its session's entries as they appear (polling the directory
every 50 ms), each with :class:`lifelong_mlflow.recorder.Recorder`, journals each (see
:mod:`lifelong_mlflow.outbox`), and exits once it has applied the session's ``end`` or ``fail``
entry. Between its own entries it also drains what other sessions left in the same outbox (a run
that crashed, or whose store was down until it exited), taking each session's writer lock so two
writers never apply the same session.

**Outages.** A call that fails because the store cannot be reached or answers with a server error
(HTTP 5xx, a timeout, a refused connection, a locked sqlite file) is retried, the same entry
again, after a backoff that doubles from 0.5 s to at most 5 s (with jitter): nothing later is
applied before it, so entries reach MLflow in order. Requests are bounded (30 s each, one retry
inside MLflow's client), so a store that hangs is noticed. Any other error is retried twice more
and then given up: the entry moves to ``failed/`` and the journal says why, so one bad entry
never blocks the ones after it; the run's result lists it under ``errors``.

**Priority.** While the run trains, the writer works at ``nice`` 10 (:data:`NICE`): it starts
while training does, and its start (importing MLflow: ~2.3 s of CPU) and each generation's logging
compete with the training process's threads for the CPUs. Where both want the same CPU the
scheduler gives it about a tenth (the weight of nice 10 against nice 0), so on a busy machine
training keeps its speed and the writer takes what is left. It imports no torch: a generation's
tensors stay in the entry's safetensors files, which become the model's artifacts as they are
(:func:`lifelong_mlflow.pyfunc.save_files`).

Once training is over the run only waits for the writer (``drain_seconds`` at most), and yielding
would only slow that wait where other processes keep the CPUs busy (measured: 6 generations
drained in 63 s instead of 3 s beside two busy processes). So the nice is a thread's, not the
process's (Linux keeps a nice per thread, and one cannot be lowered again without privileges):
the work runs on a thread that lowered its own priority, and when the tracker says ``ended`` that
thread stops between two entries and the main thread, never niced, goes on with the rest (a run
that ends before the writer has finished starting still waits for the rest of its imports at nice
10: an import half done cannot change threads). Elsewhere ``os.nice`` lowers the whole process and
the end is drained at nice 10.

The tracker starts the writer in the training process's session (a process group of its own, so a
Ctrl-C or a signal to the run's group is the training process's): with the kernel's autogroup
scheduling a session is weighed as a group of its own, and a nice would then rank the writer only
against itself, not against training (measured: 50 % of a shared CPU instead of 10 %).

**Stopping.** ``stop`` on standard input, its end (the training process exited or was killed) or
a changed parent process: the writer finishes the entry in progress and exits. What is left stays
in the outbox for the next start (any later run of the tracker with the same outbox), or for
``lifelong models drain OUTBOX`` (``--drain``: every session, until nothing is left or the
seconds have passed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from lifelong_mlflow import outbox, store

# The writer's own requests (a user's MLFLOW_HTTP_* settings win): see lifelong_mlflow.store.RUN_HTTP.
WRITER_HTTP = store.RUN_HTTP
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
PERMANENT_TRIES = 3
POLL_SECONDS = 0.05
RESCAN_SECONDS = 5.0  # how often other sessions' leftovers are looked for
NICE = 10  # the writer's scheduling priority below the training process's


def transient(exc: BaseException) -> bool:
    """Whether a failed call is worth retrying as it is: the store unreachable, overloaded or restarting."""
    text = f"{type(exc).__name__}: {exc}"
    if store._UNREACHABLE.search(text) or "database is locked" in text:
        return True
    code = getattr(exc, "error_code", None)
    if code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
        return True
    status = getattr(exc, "get_http_status_code", None)
    with contextlib.suppress(Exception):
        if status is not None and int(status()) >= 500:
            return True
    try:
        import requests

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
    except ImportError:
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


class SessionWriter:
    """Applies one session's entries with its own :class:`~lifelong_mlflow.recorder.Recorder`."""

    def __init__(self, box: outbox.SessionBox, log):
        from lifelong_mlflow.options import MLflowOptions
        from lifelong_mlflow.recorder import Recorder

        self.box, self.log = box, log
        state = box.read_state()
        if not state.get("tracking_uri"):
            raise ValueError(f"{box.dir} has no readable {outbox.STATE}")
        options = MLflowOptions(tracking_uri=state["tracking_uri"], **state.get("options", {}))
        self.uri = state["tracking_uri"]
        self.recorder = Recorder(options, state.get("requirements", []), state.get("strategies", []), state.get("session"))
        self.recorder.restore(state)
        for line in box.journal():  # earlier writers' generations: the gate's champion tag names their versions
            records = (line.get("result") or {}).get("records")
            if line.get("ok") and records and "index" in line["result"]:
                self.recorder._records[int(line["result"]["index"])] = records
        self.failures = 0
        self.retry_at = 0.0
        self.tries: dict[int, int] = {}
        self.closed = False  # the session's end or fail entry was applied
        self.own_process = False  # set by main(): only a writer process of its own may change MLflow's global URI
        self.last_error: str | None = None

    def pending(self) -> bool:
        return bool(self.box.entries())

    def step(self, stopping) -> bool:
        """Apply the pending entries in order until one fails or ``stopping()``; whether any was applied."""
        import mlflow

        progressed = False
        for entry in self.box.entries():
            if stopping():
                break
            if self.own_process:  # this process's default: no MLflow code path falls back to ./mlflow.db
                mlflow.set_tracking_uri(self.uri)
            before = self.recorder.run_state()
            try:
                result = self.apply(entry)
            except Exception as exc:  # noqa: BLE001 - every failure is retried or journaled
                self._failed(entry, exc)
                break
            self.box.applied(entry, result)
            if self.recorder.run_state() != before:
                state = self.box.read_state()
                state.update(self.recorder.run_state())
                self.box.write_state(state)
            self.failures, self.last_error = 0, None
            self.tries.pop(entry.seq, None)
            progressed = True
            if entry.kind in outbox.TERMINAL:
                self.closed = True
        return progressed

    def _failed(self, entry: outbox.Entry, exc: Exception) -> None:
        text = traceback.format_exc()
        self.last_error = _last_line(text)
        self.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.2)
        if not transient(exc):
            tries = self.tries[entry.seq] = self.tries.get(entry.seq, 0) + 1
            if tries >= PERMANENT_TRIES:
                self.log(f"gave up entry {entry.seq} ({entry.kind}) after {tries} tries: {self.last_error}")
                self.box.applied(entry, {"index": self._index(entry)}, error=text)
                self.tries.pop(entry.seq, None)
                self.failures, delay = 0, 0.0
                if entry.kind in outbox.TERMINAL:
                    self.closed = True
        self.retry_at = time.monotonic() + delay
        if delay:
            self.log(f"entry {entry.seq} ({entry.kind}) failed, retrying in {delay:.1f} s: {self.last_error}")

    @staticmethod
    def _index(entry: outbox.Entry) -> int | None:
        with contextlib.suppress(Exception):
            return entry.data().get("index")
        return None

    def apply(self, entry: outbox.Entry) -> dict[str, Any]:
        data, recorder = entry.data(), self.recorder
        if entry.kind == "start":
            recorder._start(data["config"], data["tags"], data["session"], data["resumed"], data["step"])
            return {"run_id": recorder._run_id, "experiment_id": recorder._experiment_id}
        if entry.kind == "metrics":
            recorder._log_metrics([tuple(m) for m in data["metrics"]])
            return {}
        if entry.kind == "generation":
            if data.get("metrics"):  # the metrics reported before the boundary, flushed with it
                recorder._log_metrics([tuple(m) for m in data["metrics"]])
            started = time.perf_counter()
            records = recorder._log_generation(load_generation(entry, data))
            return {"index": data["index"], "records": records, "seconds": time.perf_counter() - started}
        if entry.kind == "end":
            heatmap = entry.file(data["heatmap"]) if data.get("heatmap") else None
            recorder._finish(data["summary"], str(heatmap) if heatmap else None, int(data.get("logging_errors", 0)))
            return {"status": "FINISHED", "run_id": recorder._run_id}
        if entry.kind == "fail":
            return {"status": recorder._fail(data["error"]), "run_id": recorder._run_id}
        raise ValueError(f"unknown outbox entry kind {entry.kind!r}")


def load_generation(entry: outbox.Entry, data: dict[str, Any]):
    """The :class:`~lifelong_mlflow.recorder.PendingGeneration` an entry holds.

    Its tensors are not read: the entry's safetensors files go into the model as they are, so this
    process never imports torch (see :func:`lifelong_mlflow.pyfunc.save_files`). An entry is whole
    once it exists (:mod:`lifelong_mlflow.outbox`), so the files are complete.
    """
    from lifelong.types import ModelSpec
    from lifelong_mlflow.recorder import PendingGeneration

    skeleton = data.get("strategy_skeleton")
    return PendingGeneration(
        index=int(data["index"]),
        tags=data["tags"],
        accuracy={int(k): v for k, v in data["accuracy"].items()},
        spec=ModelSpec.from_dict(data["spec"]),
        weights=entry.file("weights.safetensors"),
        strategy_tensors=entry.file("strategies.safetensors") if skeleton is not None else None,
        strategy_skeleton=skeleton,
        promotion=data.get("promotion"),
        continues=data.get("continues"),
    )


class Writer:
    """The loop: its own session first, then other sessions' leftovers; see the module docstring."""

    def __init__(self, root: Path, session: str | None, log, own_process: bool = False):
        self.root, self.log, self.own_process = root, log, own_process
        self.own = outbox.SessionBox(root, session) if session else None
        self.writers: dict[Path, SessionWriter] = {}
        self.locks: list[outbox.Lock] = []
        self.stop = threading.Event()
        self._scanned = 0.0

    def adopt(self, box: outbox.SessionBox, wait: float = 0.0) -> SessionWriter | None:
        if box.dir in self.writers:
            return self.writers[box.dir]
        lock = outbox.Lock(box.dir / outbox.WRITER_LOCK)
        if not lock.acquire(wait):
            return None  # another writer applies it
        try:
            writer = SessionWriter(box, self.log)
        except Exception as exc:  # noqa: BLE001 - an unreadable session is left as it is
            self.log(f"cannot apply {box.dir}: {exc}")
            lock.release()
            return None
        writer.own_process = self.own_process
        self.locks.append(lock)
        self.writers[box.dir] = writer
        return writer

    def scan(self) -> None:
        if time.monotonic() - self._scanned < RESCAN_SECONDS:
            return
        self._scanned = time.monotonic()
        for box in outbox.sessions(self.root):
            if self.own is None or box.dir != self.own.dir:
                self.adopt(box)

    def cycle(self, until=None) -> bool:
        """One pass over every session whose backoff has passed; whether anything was applied.

        ``until()`` true ends the pass between two entries, as ``stop`` does.
        """
        stopping = self.stop.is_set if until is None else lambda: self.stop.is_set() or until()
        self.scan()
        progressed = False
        now = time.monotonic()
        ordered = sorted(self.writers.values(), key=lambda w: self.own is None or w.box.dir != self.own.dir)
        for writer in ordered:
            if stopping():
                break
            if now >= writer.retry_at and writer.pending():
                progressed |= writer.step(stopping)
        return progressed

    def own_closed(self) -> bool:
        writer = self.writers.get(self.own.dir) if self.own is not None else None
        return writer is not None and writer.closed and not writer.pending()

    def idle(self) -> bool:
        return not any(w.pending() for w in self.writers.values())

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def drain(root: str | Path, seconds: float, log=None) -> dict[str, Any]:
    """Apply every session's pending entries under ``root``, retrying outages for at most ``seconds``.

    Returns ``{"applied": n, "left": n, "errors": [...]}``: what was journaled, what is still waiting.
    """
    log = log or (lambda message: None)
    writer = Writer(Path(root), None, log)
    deadline = time.monotonic() + seconds
    applied = 0
    with store.bounded(WRITER_HTTP):
        try:
            for box in outbox.sessions(root):  # a writer that is stopping may hold a session a few seconds more
                writer.adopt(box, wait=min(10.0, seconds))
            writer._scanned = time.monotonic()
            before = {w.box.dir: len(w.box.journal()) for w in writer.writers.values()}
            while not writer.idle() and time.monotonic() < deadline:
                if not writer.cycle():
                    time.sleep(POLL_SECONDS)
            errors = []
            for w in writer.writers.values():
                lines = w.box.journal()
                applied += len(lines) - before[w.box.dir]
                errors += [f"{w.box.dir.name} entry {x['seq']} ({x['kind']}): {_last_line(x['error'])}" for x in lines[before[w.box.dir] :] if not x.get("ok")]
                if w.last_error and w.pending():
                    errors.append(f"{w.box.dir.name}: {w.last_error}")
            left = sum(len(w.box.entries()) for w in writer.writers.values())
            for w in writer.writers.values():
                if not w.pending() and w.closed:
                    w.box.remove_if_done()
        finally:
            writer.release()
    return {"applied": applied, "left": left, "errors": errors}


def serve(writer: Writer, parent_gone, log, until=lambda: False) -> bool:
    """The writer process's loop: its own session first, then other sessions' leftovers.

    Returns True once it is done: its session's run is closed (and leftovers make no more
    progress), ``stop``, or the training process is gone; False as soon as ``until()`` is true
    (between two entries), for the caller to call it again.
    """
    while not writer.stop.is_set() and writer.own is not None:
        if until():
            return False
        if writer.adopt(writer.own, wait=0.2) is not None:
            break
        if parent_gone():
            return True
        writer.stop.wait(0.5)  # held by a writer that is still stopping, or its session.json unreadable
    while not writer.stop.is_set():
        if until():
            return False
        progressed = writer.cycle(until)
        if writer.own_closed() and (writer.idle() or not progressed):
            break  # leftovers are drained while they make progress and the training process lives
        if parent_gone():
            log("the training process is gone; what is left is applied at the next start")
            break
        if not progressed:
            writer.stop.wait(POLL_SECONDS)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lifelong_mlflow.outbox_writer", description=__doc__.split("\n")[0])
    parser.add_argument("outbox", type=Path)
    parser.add_argument("--session", help="the session this writer serves; it exits once that session's run is closed")
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    parser.add_argument("--wait-go", action="store_true", help="wait for 'go' on standard input before applying anything")
    parser.add_argument("--drain", type=float, metavar="SECONDS", help="apply every session's entries and exit")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the training process's to handle
    if args.drain is not None:  # draining is then the whole job: no nice
        result = drain(args.outbox, args.drain, log)
        print(result, flush=True)
        return 0 if not result["left"] else 3

    writer = Writer(args.outbox, args.session, log, own_process=True)
    go, ended = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (writer.stop.set(), go.set()))  # also before "go"

    def listen() -> None:  # the tracker's commands; the end of the pipe means the training process is gone
        for line in sys.stdin:
            word = line.strip()
            if word == "go":
                go.set()
            elif word == "ended":  # training is over and the run waits for this writer
                ended.set()
            elif word == "stop":
                writer.stop.set()
        writer.stop.set()
        go.set()

    threading.Thread(target=listen, name="outbox-commands", daemon=True).start()
    parent_gone = (lambda: os.getppid() != args.parent) if args.parent else (lambda: False)
    done = threading.Event()

    def behind_training() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.nice(NICE)  # this thread and the threads it starts, on Linux: see "Priority" above
        import lifelong_mlflow.recorder  # noqa: F401 - MLflow loads (seconds of CPU) while the tracker's preflight runs

        if args.wait_go:
            go.wait()
        if serve(writer, parent_gone, log, until=ended.is_set):
            done.set()

    with store.bounded(WRITER_HTTP):
        try:
            niced = threading.Thread(target=behind_training, name="outbox-writer-niced")
            niced.start()
            while niced.is_alive():  # timed: SIGTERM's handler runs here, and a signal may wake another thread
                niced.join(0.5)
            if not done.is_set():  # the run ended first: the rest on this thread, at the process's own priority
                serve(writer, parent_gone, log)
        finally:
            writer.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
