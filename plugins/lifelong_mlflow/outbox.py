"""The durable outbox: what the tracker has to send to MLflow, on local disk, in order.

The training process never calls MLflow after its preflight: the tracker appends **entries** to
the outbox and a separate writer process (:mod:`lifelong_mlflow.outbox_writer`) applies them.
An entry is written whole or not at all, so a crash (of either process, or of the machine) at any
moment loses nothing that was appended and never leaves half an entry to apply.

Layout of an outbox directory (one *root*, any number of sessions)::

    <root>/
      <session id>/                   one per pipeline session (a resumed session reuses its own)
        000000000007-generation/      entry 7: entry.json, plus weights.safetensors and
                                      strategies.safetensors for a generation, accuracy_matrix.png
                                      for a run end
        session.json                  what the writer needs to apply entries: the tracking URI,
                                      experiment, registered model, alias; the MLflow run id once known
        applied.jsonl                 the journal: one line per applied (or given-up) entry, with its
                                      result (a generation's version and model id)
        failed/<entry>/               entries the writer gave up on (a permanent error), kept to inspect
        append.lock, writer.lock      flock files: one appender (the training process) and one
                                      writer per session at a time
        writer.log                    what the session's writer processes printed (retries, give-ups)

Entries are numbered per session, in the order they were appended (``seq``); the writer applies
them in that order. Writing one: a hidden ``.tmp-…`` directory gets its files, each fsynced, then
it is renamed to ``<seq>-<kind>`` and the session directory is fsynced: the rename is the commit.
A hidden directory left by a crash is garbage and removed by the next appender. Applying one: the
writer makes the MLflow calls, appends a journal line (fsynced), then deletes the entry. A crash
between the two leaves an entry that is applied again, which is why every kind is idempotent in the
writer (a generation is looked up by its session and generation tags before it is registered; a
run by its session tag; MLflow's stores drop duplicate metric points).

Tensors are written with :func:`lifelong.checkpoint.write_safetensors`, piece by piece from the
tensors' own memory: its file writes and hashing release the GIL, so the appender thread in the
training process barely slows the training thread beside it. The files are byte for byte what the
safetensors library writes, and the writer stores a generation's files in MLflow as they are
(:func:`lifelong_mlflow.pyfunc.save_files`), without loading a tensor or importing torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no locks (one process per outbox is then the user's to ensure)
    fcntl = None

FORMAT = "lifelong-outbox/1"
ENTRY = "entry.json"
JOURNAL = "applied.jsonl"
STATE = "session.json"
FAILED = "failed"
APPEND_LOCK = "append.lock"
WRITER_LOCK = "writer.lock"
LOG = "writer.log"
TERMINAL = ("end", "fail")  # kinds that close a session's MLflow run
_NAME = re.compile(r"^(\d{12})-([a-z_]+)$")
_UNSAFE = re.compile(r"[^\w.\-]")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, value: Any) -> None:
    """Replace ``path`` atomically with ``value`` as JSON (written beside it, fsynced, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write(tmp, json.dumps(value, default=str, allow_nan=True).encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Entry:
    """One appended entry: its number, kind and directory."""

    seq: int
    kind: str
    path: Path

    def data(self) -> dict[str, Any]:
        return json.loads((self.path / ENTRY).read_text())

    def file(self, name: str) -> Path:
        return self.path / name


class SessionBox:
    """One session's part of an outbox: append, list, journal, give up. See the module docstring."""

    def __init__(self, root: str | Path, session: str):
        self.root = Path(root)
        self.session = session
        self.dir = self.root / (_UNSAFE.sub("_", session) or "_")

    # -- the appender's side (the training process) --------------------------------------------
    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def clean(self) -> None:
        """Remove what a crashed appender or writer left half-written (hidden files and directories)."""
        for stale in self.dir.glob(".*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    def next_seq(self) -> int:
        """One more than every number in use: pending, applied (the journal) and given-up entries."""
        used = [e.seq for e in self.entries()] + [e.seq for e in self.entries(self.dir / FAILED)]
        used += [int(line["seq"]) for line in self.journal()]
        return max(used, default=0) + 1

    def append(
        self,
        seq: int,
        kind: str,
        data: dict[str, Any],
        tensors: dict[str, dict[str, Any]] | None = None,
        files: dict[str, str | Path] | None = None,
    ) -> Entry:
        """Write entry ``seq`` atomically: ``tensors`` (file stem -> name -> tensor) as safetensors,
        ``files`` (name -> source path) copied, ``data`` as entry.json; every file fsynced first."""
        name = f"{seq:012d}-{kind}"
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.dir))
        try:
            for stem, named in (tensors or {}).items():
                write_safetensors(tmp / f"{stem}.safetensors", named)
            for target, source in (files or {}).items():
                shutil.copyfile(source, tmp / target)
                with open(tmp / target, "rb") as handle:
                    os.fsync(handle.fileno())
            _write(tmp / ENTRY, json.dumps({"format": FORMAT, "seq": seq, "kind": kind, **data}, default=str).encode())
            _fsync_dir(tmp)
            final = self.dir / name
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.dir)
        return Entry(seq, kind, final)

    def drop(self, kinds: tuple[str, ...]) -> list[Entry]:
        """Delete the pending entries of these kinds (superseded by a newer process of the session)."""
        dropped = [e for e in self.entries() if e.kind in kinds]
        for entry in dropped:
            shutil.rmtree(entry.path, ignore_errors=True)
        if dropped:
            _fsync_dir(self.dir)
        return dropped

    # -- reading ---------------------------------------------------------------------------------
    def entries(self, where: Path | None = None) -> list[Entry]:
        """The complete entries waiting (or, with ``where``, given up), by number."""
        where = self.dir if where is None else where
        found = []
        with contextlib.suppress(FileNotFoundError):
            for child in where.iterdir():
                match = _NAME.match(child.name)
                if match and (child / ENTRY).is_file():
                    found.append(Entry(int(match.group(1)), match.group(2), child))
        return sorted(found, key=lambda e: e.seq)

    def journal(self) -> list[dict[str, Any]]:
        """Every journal line that was written whole (a crash can cut the last one short)."""
        try:
            text = (self.dir / JOURNAL).read_text()
        except FileNotFoundError:
            return []
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / STATE).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.dir / STATE, state)

    # -- the writer's side -----------------------------------------------------------------------
    def applied(self, entry: Entry, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        """Journal ``entry`` as applied (or, with ``error``, given up: it moves to ``failed/``), then remove it."""
        line = {"seq": entry.seq, "kind": entry.kind, "ok": error is None, "at": time.time()}
        if result:
            line["result"] = result
        if error is not None:
            line["error"] = error
        journal = self.dir / JOURNAL
        with open(journal, "ab") as handle:
            if handle.tell() and not _ends_with_newline(journal):
                handle.write(b"\n")  # a line a crash cut short stays on its own
            handle.write(json.dumps(line, default=str).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if error is None:
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            failed = self.dir / FAILED
            failed.mkdir(exist_ok=True)
            os.replace(entry.path, failed / entry.path.name)
        _fsync_dir(self.dir)

    def remove_if_done(self) -> bool:
        """Delete the session's directory when nothing is pending or given up; whether it did.

        An entry still on disk but already in the journal counts as sent (the writer removes it next).
        """
        journaled = {int(line["seq"]) for line in self.journal()}
        if any(e.seq not in journaled for e in self.entries()) or self.entries(self.dir / FAILED):
            return False
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only when no other session is left in it
        return True


def write_safetensors(path: Path, tensors: dict[str, Any]) -> None:
    """:func:`lifelong.checkpoint.write_safetensors` without its SHA-256 (an entry's rename is its
    commit; nothing reads a checksum): piece by piece from each tensor's memory, so the file writes
    release the GIL and the training thread beside it keeps running."""
    from lifelong.checkpoint import write_safetensors as write

    write(path, tensors, checksum=False)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def sessions(root: str | Path) -> list[SessionBox]:
    """Every session directory under ``root`` that holds pending entries, oldest first."""
    root = Path(root)
    found = []
    with contextlib.suppress(FileNotFoundError):
        for child in root.iterdir():
            if child.is_dir() and not child.name.startswith("."):
                box = SessionBox(root, child.name)
                box.dir = child
                if box.entries():
                    found.append((child.stat().st_mtime, box))
    return [box for _, box in sorted(found, key=lambda pair: pair[0])]


class Lock:
    """An exclusive ``flock`` on a file; ``acquire(timeout)`` returns whether it was taken.

    The kernel drops it when the holder dies, so a killed process never blocks the next one.
    """

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def acquire(self, timeout: float = 0.0) -> bool:
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - kept open while the lock is held
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._handle = handle
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(0.05)

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None or fcntl is None


@contextlib.contextmanager
def locked(path: Path, timeout: float) -> Iterator[bool]:
    lock = Lock(path)
    taken = lock.acquire(timeout)
    try:
        yield taken
    finally:
        lock.release()
