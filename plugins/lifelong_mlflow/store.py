"""Reaching an MLflow store without hanging on it, and without breaking a fresh sqlite store.

Three things every user of a store in this plugin needs (the tracker's preflight, its writer process,
``lifelong models``):

- **Bounded requests.** MLflow's HTTP client waits 120 s per request and retries 7 times with a
  growing backoff (about 260 s against a port where nothing listens); its SQL stores retry
  connecting 10 times. :func:`bounded` lowers both while a command or a run holds it, and puts
  them back after; a value the user has set in the environment wins.
- **One creator of a fresh sqlite store.** MLflow creates its schema (about 60 migrations, ~10 s)
  the first time a client touches an empty sqlite file, with nothing to stop a second process
  doing the same at once: two first runs on a fresh ``./mlflow.db`` then both fail and leave it
  half-migrated (``table _alembic_tmp_metrics already exists``). :func:`prepare` holds an
  exclusive ``fcntl.flock`` on ``<db>.lock`` (a file left beside the store) while the first client
  touches it, so the second waits and then finds the schema made. The lock serialises lifelong
  processes only: an ``mlflow ui`` started on the same fresh file at the same moment does not take
  it. On systems without ``fcntl`` there is no lock.
- **A half-migrated store is named, with its repair.** A kill during the creation, or an older
  race, leaves a store every later run would fail on; :func:`schema_problem` finds one (a leftover
  ``_alembic_tmp_*`` table, tables without a schema version) and says which commands repair it.

>>> with bounded(RUN_HTTP):  # doctest: +SKIP
...     prepare("sqlite:///mlflow.db")  # the schema exists and is sound afterwards, or StoreError
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

# A command line (``lifelong models``) and a run's preflight: a refused connection fails at once, a
# silent host after 2 x 5 s.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
# A run's writer process (lifelong_mlflow.outbox_writer), for its whole life: a refused connection fails
# within a second and the writer's own backoff (0.5 s doubling to 5 s, the entry kept in the outbox)
# decides what next; a host that accepts and never answers costs 2 x 30 s per attempt.
RUN_HTTP = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
}
# MLflow's SQL stores try to connect to their database 10 times (about 100 s) before giving up.
DB_CONNECT_ATTEMPTS = 3
# The longest a process waits for another one to finish creating a sqlite store's schema.
LOCK_SECONDS = 120.0

_UNREACHABLE = re.compile(r"Failed to establish|Max retries exceeded|timed out|Connection (refused|reset|aborted)")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+|(?:Read|Connect)?\s?timed out")


class StoreError(Exception):
    """The store cannot be used: unreachable, unopenable, or its schema is broken. The message says what to do."""


# -- bounded requests ------------------------------------------------------------------------------
_guard = threading.Lock()
_ours: dict[str, list[tuple[object, str]]] = {}  # variable -> the values holders asked for, oldest first
_db_holders: list[object] = []
_db_attempts_before: int | None = None


@contextlib.contextmanager
def bounded(values: dict[str, str] = HTTP_DEFAULTS) -> Iterator[None]:
    """MLflow's HTTP timeouts and retries set to ``values`` (and its SQL connect attempts to
    ``DB_CONNECT_ATTEMPTS``) while held; undone afterwards.

    Process-wide (MLflow reads them from the environment at each request), so holders nest: the
    newest holder's values apply, and each is undone when its holder leaves. A variable the user set
    before the first holder is never changed. Undone so that a caller running a command in-process (a
    test, a notebook) keeps its own settings.
    """
    token = object()
    with _guard:
        for key, value in values.items():
            if key in os.environ and key not in _ours:
                continue  # the user's value wins
            _ours.setdefault(key, []).append((token, value))
            os.environ[key] = value
        _hold_db_attempts(token)
    try:
        yield
    finally:
        with _guard:
            for key in [k for k, held in _ours.items() if any(t is token for t, _ in held)]:
                held = _ours[key] = [(t, v) for t, v in _ours[key] if t is not token]
                if held:
                    os.environ[key] = held[-1][1]
                else:
                    del _ours[key]
                    os.environ.pop(key, None)
            _release_db_attempts(token)


def _db_utils():
    try:
        from mlflow.store.db import utils
    except ImportError:  # mlflow-skinny: no SQL stores
        return None
    return utils if hasattr(utils, "MAX_RETRY_COUNT") else None


def _hold_db_attempts(token: object) -> None:
    # A module constant MLflow reads on every connect; there is no setting for it.
    global _db_attempts_before
    utils = _db_utils()
    if utils is None:
        return
    if not _db_holders:
        _db_attempts_before = utils.MAX_RETRY_COUNT
        utils.MAX_RETRY_COUNT = min(utils.MAX_RETRY_COUNT, DB_CONNECT_ATTEMPTS)
    _db_holders.append(token)


def _release_db_attempts(token: object) -> None:
    utils = _db_utils()
    if utils is None or token not in _db_holders:
        return
    _db_holders.remove(token)
    if not _db_holders and _db_attempts_before is not None:
        utils.MAX_RETRY_COUNT = _db_attempts_before


def describe_error(message: str, uri: str, remedy: str = "") -> str:
    """One paragraph for a failed store call: "cannot reach …" with the cause, or the first line of MLflow's message."""
    first = message.strip().splitlines()[0] if message.strip() else "no detail"
    if _UNREACHABLE.search(message):
        cause = _ERRNO.search(message)
        return f"cannot reach the MLflow store at {uri} ({cause.group(0).strip() if cause else first[:200]}); " + (
            remedy or "start the server, or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to a store that is up"
        )
    return f"the MLflow store at {uri} failed: {first[:500]}" + (f"; {remedy}" if remedy else "")


# -- sqlite: the lock, the schema ------------------------------------------------------------------
def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (``sqlite:///rel.db``, ``sqlite:////abs.db``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(path: Path, timeout: float = LOCK_SECONDS) -> Iterator[None]:
    """An exclusive ``flock`` on ``<path>.lock``, waited for at most ``timeout`` seconds.

    The kernel drops the lock when its holder dies, so a killed creator never blocks the next run.
    The lock file stays (deleting it would let two processes lock two different files).
    """
    if fcntl is None:
        yield
        return
    lock = Path(f"{path}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+b")  # noqa: SIM115 - closed by the "with handle" below
    except OSError as exc:
        parent = lock.parent
        why = (
            f"{parent} is not a folder"
            if parent.exists() and not parent.is_dir()
            else f"{exc.strerror or exc} ({lock})"
        )
        raise StoreError(f"cannot open the MLflow store {path}: {why}") from None
    with handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"another process has held {lock} for {timeout:.0f} s (it creates the MLflow schema in {path} "
                        "while it holds it); wait for it to finish, or point tracking.mlflow.tracking_uri elsewhere"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def schema_problem(path: Path) -> str | None:
    """Why the sqlite store at ``path`` is half-migrated, with the commands that repair it; None if it is not.

    A file that does not exist or holds no table is fresh (MLflow creates the schema). A revision
    MLflow does not know (an older or newer MLflow's store) is left to MLflow, whose message says
    to run ``mlflow db upgrade``.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = (
                [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return (
            f"{path} is not a readable MLflow store ({exc}): move it aside (mv {_q(path)} {_q(path, '.broken')}), "
            "or use another store"
        )
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if not tables or (not leftovers and len(version) == 1):
        return None
    if leftovers:
        what = f"a migration of its schema was cut short (leftover table{'s' if len(leftovers) > 1 else ''} {', '.join(leftovers)})"
    else:
        what = "it has tables but no schema version (its creation was cut short)"
    return f"the MLflow store {path} is half-migrated: {what}, so every run would fail on it. {repair(path, leftovers, tables, runs)}"


def repair(path: Path, leftovers: list[str], tables: set[str], runs: int) -> str:
    """The commands that repair a half-migrated store: a store without runs is made afresh; one with runs is upgraded."""
    p = _q(path)
    if not runs:
        return f"It holds no runs: move it aside and run again, which creates it afresh: mv {p} {_q(path, '.broken')}"
    statements = []
    for table in leftovers:
        original = table[len("_alembic_tmp_") :]
        # SQLite's batch migration copies a table into _alembic_tmp_X, drops X, then renames the copy:
        # while X exists the copy is spare; once X is gone, the copy holds its rows.
        statements.append(
            f"DROP TABLE {table};" if original in tables else f"ALTER TABLE {table} RENAME TO {original};"
        )
    fix = ""
    if statements:
        script = shlex.quote(" ".join(statements))
        fix = (
            f"python -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(sys.argv[2])' {p} {script} && "
        )
    return (
        f"It holds {runs} run(s): back it up, then finish the migration: cp {p} {_q(path, '.bak')} && {fix}"
        f"mlflow db upgrade {shlex.quote('sqlite:///' + str(path))}"
    )


def _q(path: Path, suffix: str = "") -> str:
    return shlex.quote(f"{path}{suffix}")


def prepare(uri: str, lock_seconds: float = LOCK_SECONDS) -> None:
    """Make sure the store at ``uri`` can be used before a run writes to it; raise :class:`StoreError` if not.

    For a local sqlite store, under :func:`store_lock`: refuse a half-migrated one
    (:func:`schema_problem`), then let MLflow open its tracking and registry stores, which creates
    the schema of a fresh file. Other stores are left to the first call (a server creates its own).
    """
    path = sqlite_path(uri)
    if path is None:
        return
    with store_lock(path, lock_seconds):
        problem = schema_problem(path)
        if problem:
            raise StoreError(problem)
        from mlflow import MlflowClient

        try:
            client = MlflowClient(uri)  # opens the tracking store: a fresh file gets its schema here
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy and alembic errors too: all are the store's
            after = schema_problem(path)
            if after:
                raise StoreError(after) from None
            message = str(getattr(exc, "message", None) or exc)
            if "out-of-date database schema" in message:
                found = re.search(r"\(found version [^)]*\)", message)
                raise StoreError(
                    f"the MLflow store {path} has a schema this MLflow ({_mlflow_version()}) does not use "
                    f"{found.group(0) if found else ''}; if it is older, back it up, then upgrade it: "
                    f"cp {_q(path)} {_q(path, '.bak')} && mlflow db upgrade {shlex.quote('sqlite:///' + str(path))}"
                ) from None
            raise StoreError(describe_error(f"{type(exc).__name__}: {message}", uri)) from None


def _mlflow_version() -> str:
    import mlflow

    return mlflow.__version__
