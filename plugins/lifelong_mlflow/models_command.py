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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lifelong.errors import UserError
from lifelong_mlflow.store import (  # noqa: F401 - DB_CONNECT_ATTEMPTS and HTTP_DEFAULTS are read from here too
    DB_CONNECT_ATTEMPTS,
    HTTP_DEFAULTS,
    bounded,
    describe_error,
    schema_problem,
)

# Short timeouts and few retries (a refused connection fails at once, a silent host after 2 x 5 s),
# and the half-migrated store check: shared with the tracker's preflight (lifelong_mlflow.store).
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
    """List registered generations; promote or roll back the champion; drain a tracker's outbox.

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


@models.command()
@click.argument("outbox", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seconds", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="How long to keep retrying while the store does not answer.")
def drain(outbox: Path, seconds: float) -> None:
    """Send what runs left in the tracker's outbox OUTBOX to MLflow, in order, and remove it once sent.

    A run leaves entries in its outbox when MLflow did not take them before it ended (an outage, a
    crash); the next run that uses the same outbox sends them too. Each session's entries go to the
    store that run logged to. Exit status 3 when entries are left (the store still did not answer).
    """
    from lifelong_mlflow.outbox_writer import drain as drain_outbox

    if not outbox.is_dir():
        _fail(f"there is no outbox at {outbox}: give the directory of tracking.mlflow.outbox (by default "
              "<checkpoint dir>/outbox, or <sqlite file>.outbox beside a sqlite store)")
    result = drain_outbox(outbox, seconds)
    for error in result["errors"]:
        click.echo(f"warning: {error}", err=True)
    click.echo(f"sent {result['applied']} entr{'y' if result['applied'] == 1 else 'ies'}; {result['left']} left in {outbox}")
    if result["left"]:
        sys.exit(3)


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


def _quick_failures():
    """Short timeouts and few retries for this command (see HTTP_DEFAULTS), undone afterwards."""
    return bounded(HTTP_DEFAULTS)


def _missing_sqlite(uri: str) -> str | None:
    """Why a sqlite store cannot be used, or None: MLflow would create an empty one, and "no such model" would
    mislead; a half-migrated one would fail with a database error (the message says how to repair it)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    if Path(path).is_file():
        return schema_problem(Path(path))
    return (
        f"there is no MLflow store at {path}: run from the directory that holds it, or pass "
        "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store your runs log to"
    )


def _store_error(message: str, uri: str) -> str:
    return describe_error(message, uri)


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
