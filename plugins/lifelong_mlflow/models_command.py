"""``lifelong models``: list registered generations; promote or roll back the champion.

A thin layer: what is read and moved lives in :mod:`lifelong_mlflow.registry`. This module parses
the command line, prints tables and JSON, and turns every user or store error into exit status 2
with one paragraph, never a traceback. MLflow is imported only when a command runs, because
``lifelong --help`` loads every plugin.

Every command takes ``--tracking-uri``; without it, MLflow's own default: ``MLFLOW_TRACKING_URI``,
else ``sqlite:///mlflow.db`` in the working directory (the tracker's default too).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from lifelong.errors import UserError

# MLflow's HTTP client waits 120 s per request and retries 7 times with a growing backoff: minutes
# against a server that is down. A command line should answer in seconds (a refused connection
# fails at once, a silent host after 2 x 5 s). Values the user has set win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
# MLflow's SQL stores retry connecting to their database 15 times (about 100 s) before giving up.
DB_CONNECT_ATTEMPTS = 3
_UNREACHABLE = re.compile(r"Failed to establish|Max retries exceeded|timed out|Connection (refused|reset|aborted)")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+|(?:Read|Connect)?\s?timed out")

TRACKING_URI = click.option(
    "--tracking-uri",
    metavar="URI",
    help="The MLflow store: a server (http://HOST:PORT) or a database (sqlite:///mlflow.db). "
    "Default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here.",
)
REASON = click.option("--reason", required=True, help="Why the champion moves; kept on the version (audit trail).")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group()
def models() -> None:
    """List registered generations; promote or roll back the champion.

    Requests to an MLflow server time out after 5 s and are retried once, unless
    MLFLOW_HTTP_REQUEST_TIMEOUT or MLFLOW_HTTP_REQUEST_MAX_RETRIES say otherwise.
    """


@models.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@TRACKING_URI
def list_command(name: str | None, as_json: bool, tracking_uri: str | None) -> None:
    """The registered models holding lifelong generations; with NAME, each of its versions, newest first."""
    from lifelong_mlflow import registry

    if name is None:
        found, uri = _with_store(tracking_uri, registry.models)
        if as_json:
            click.echo(json.dumps({"tracking_uri": uri, "models": [m.to_dict() for m in found]}, indent=2))
        elif not found:
            click.echo(f"no registered model holds lifelong generations in {uri}")
        else:
            click.echo(_models_table(found))
        return
    rows, uri = _with_store(tracking_uri, lambda client: registry.versions(client, name))
    if as_json:
        aliases = {alias: row.version for row in rows for alias in row.aliases}
        payload = {"tracking_uri": uri, "name": name, "aliases": aliases, "versions": [r.to_dict() for r in rows]}
        click.echo(json.dumps(payload, indent=2, default=str))
    elif not rows:
        click.echo(f"registered model {name!r} has no versions")
    else:
        click.echo(_versions_table(rows))


@models.command()
@click.argument("name")
@click.argument("version")
@REASON
@TRACKING_URI
def promote(name: str, version: str, reason: str, tracking_uri: str | None) -> None:
    """Make VERSION of NAME the champion by hand, whatever the gate said (a manual override)."""
    from lifelong_mlflow import registry

    move, _ = _with_store(tracking_uri, lambda client: registry.promote(client, name, version, reason))
    _report(move)


@models.command()
@click.argument("name")
@click.option("--to", "to", metavar="VERSION", help="The version to go back to (default: the previous champion).")
@REASON
@TRACKING_URI
def rollback(name: str, to: str | None, reason: str, tracking_uri: str | None) -> None:
    """Move the champion of NAME back to the previous champion, or to --to VERSION.

    The version it leaves is marked rolled back with the reason; a later plain rollback skips it.
    """
    from lifelong_mlflow import registry

    move, _ = _with_store(tracking_uri, lambda client: registry.rollback(client, name, reason, to=to))
    _report(move)
    if move.moved:
        click.echo(f"v{move.before} is marked rolled back")


# -- the store ----------------------------------------------------------------------------------
def _with_store(tracking_uri: str | None, action: Callable[[Any], Any]) -> tuple[Any, str]:
    """``(action(client), uri)`` with a client of the store; its errors exit 2 with one paragraph."""
    with _quick_failures():
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            from sqlalchemy.exc import SQLAlchemyError
        except ImportError:  # mlflow-skinny: no SQL stores at all
            SQLAlchemyError = MlflowException

        uri = tracking_uri or mlflow.get_tracking_uri()
        missing = _missing_sqlite(uri)
        if missing:
            _fail(missing)
        try:
            return action(MlflowClient(uri)), uri
        except UserError as exc:
            _fail(f"{exc} (tracking URI {uri})")
        except MlflowException as exc:
            _fail(_store_error(str(exc.message), uri))
        except (SQLAlchemyError, OSError, ImportError) as exc:  # a database that is down; a driver missing
            _fail(_store_error(f"{type(exc).__name__}: {exc}", uri))


@contextmanager
def _quick_failures() -> Iterator[None]:
    """Short timeouts and few retries for this command (see HTTP_DEFAULTS), undone afterwards.

    Undone so that a caller running the command in-process (a test, a notebook) keeps its own settings.
    """
    added = {key: value for key, value in HTTP_DEFAULTS.items() if key not in os.environ}
    os.environ.update(added)
    try:
        from mlflow.store.db import utils as db_utils
    except ImportError:  # mlflow-skinny: no SQL stores
        db_utils = None
    # A module constant MLflow reads on every connect; there is no setting for it.
    attempts = getattr(db_utils, "MAX_RETRY_COUNT", None)
    if attempts is not None:
        db_utils.MAX_RETRY_COUNT = min(attempts, DB_CONNECT_ATTEMPTS)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        if attempts is not None:
            db_utils.MAX_RETRY_COUNT = attempts


def _missing_sqlite(uri: str) -> str | None:
    """Why a sqlite store cannot be used, or None: MLflow would create an empty one, and "no such model" would mislead."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:" or Path(path).is_file():
        return None
    return (
        f"there is no MLflow store at {path}: run from the directory that holds it, or pass "
        "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store your runs log to"
    )


def _store_error(message: str, uri: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "no detail"
    if _UNREACHABLE.search(message):
        cause = _ERRNO.search(message)
        return (
            f"cannot reach the MLflow store at {uri} ({cause.group(0).strip() if cause else first[:200]}); "
            "start the server, or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to a store that is up"
        )
    return f"the MLflow store at {uri} failed: {first[:500]}"


# -- output -------------------------------------------------------------------------------------
def _report(move: Any) -> None:
    for warning in move.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not move.moved:
        click.echo(f"champion: v{move.after} already; nothing moved")
        return
    before = "none" if move.before is None else f"v{move.before}"
    click.echo(f"champion: {before} -> v{move.after} ({move.by}: {move.reason})")


def _models_table(found: list[Any]) -> str:
    headers = ["NAME", "VERSIONS", "LATEST", "CHAMPION", "CHALLENGER"]
    rows = [
        [m.name, str(m.versions), f"v{m.latest}", _v(m.aliases.get("champion")), _v(m.aliases.get("challenger"))]
        for m in found
    ]
    return _table(headers, rows)


def _versions_table(found: list[Any]) -> str:
    from lifelong_mlflow.registry import utc

    headers = ["VERSION", "GEN", "SESSION", "PARENT", "ACC", "N", "GATE", "ALIASES"]
    headers += ["CHAMPION SINCE", "BY", "REASON", "ROLLED BACK"]
    rows = []
    for v in found:
        rows.append(
            [
                f"v{v.version}",
                _cell(v.generation),
                _cell(v.session and v.session[:8]),
                _cell(v.parent, 24),
                "-" if v.acc is None else f"{v.acc:.3f}",
                str(len(v.acc_scores)) if v.acc_scores else "-",
                _gate(v),
                ",".join(v.aliases) or "-",
                _cell(utc(v.since)),
                _cell(v.by),
                _cell(v.reason, 32),
                _cell(v.rolled_back, 32),
            ]
        )
    return _table(headers, rows)


def _gate(v: Any) -> str:
    if v.verdict is None:
        return "-"
    if not v.failed_rules:
        return f"{v.verdict} (held)" if v.held else v.verdict
    rules = ", ".join(name if value is None else f"{name}={value:.3g}" for name, value in v.failed_rules.items())
    return _cell(f"{v.verdict}: {rules}", 48)


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def _cell(value: Any, width: int = 0) -> str:
    if value is None or value == "":
        return "-"
    text = " ".join(str(value).split())  # one line, whatever the tag holds
    return text if not width or len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows])
