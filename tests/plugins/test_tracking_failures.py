"""A broken tracking store never hangs a run, never fails silently, and is never broken by a run.

The cases the hostile-input probe found (issue 13), each against the real thing: a port where
nothing listens, a host that accepts and never answers, an ``mlflow server`` killed with SIGKILL
mid-run, two first runs racing on a fresh sqlite store, and a store left half-migrated by a kill
during its creation. The in-process cases check the bounds themselves, without a store.

The CLI does not yet turn ``complete: false`` into its exit status, so runs that end incomplete
accept 0 or 3 (the status proposed for it).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lifelong_mlflow import outbox, store
from lifelong_mlflow.options import MLflowOptions
from lifelong_mlflow.tracker import MLflowTracker
from lifelong_models.mlp import MLP, MLPOptions
from mlflow import MlflowClient

from lifelong import checkpoint
from lifelong.background import BackgroundWriter
from lifelong.components import Components
from lifelong.config import LearnerOptions
from lifelong.errors import UserError
from lifelong.run import Run, Session
from lifelong.types import Experience, Generation, ModelSpec, StreamInfo
from tests.conftest import cli
from tests.fixtures.mlflow_server import free_port, killable_mlflow_server

SMALL = ["--set", "learner.progress=false", "--set", "learner.epochs=1", "--set", "stream.experiences=2"]
INCOMPLETE = (3,)  # the run's exit status when a tracker reports complete = false
INFO = StreamInfo(input_shape=(4,), num_classes=2)


def tracking(uri: str, *settings: str) -> list[str]:
    return [arg for s in (f"tracking_uri={uri}", *settings) for arg in ("--set", f"tracking.mlflow.{s}")]


def small_run(session: str = "s") -> Run:
    model = MLP(MLPOptions(hidden=[8]), INFO)
    return Run(
        model=model,
        optimizer=None,
        device=torch.device("cpu"),
        info=INFO,
        model_spec=ModelSpec("mlp", {"hidden": [8]}, INFO),
        learner=LearnerOptions(strategies=["naive"]),
        session=Session(session),
        components=Components.default(),
        config={"learner": {"lr": 0.1}},
    )


def small_generation(index: int) -> Generation:
    model = MLP(MLPOptions(hidden=[8]), INFO)
    return Generation(
        index=index,
        parent=index - 1 if index else None,
        experience=Experience(index, [index], 3, 96, {"src": [0, 96]}),
        experiences_covered=list(range(index + 1)),
        accuracy={0: 0.5},
        model_spec=ModelSpec("mlp", {"hidden": [8]}, INFO),
        state=checkpoint.to_cpu(model.state_dict()),
        strategy_state={},
        session="s",
    )


def tables(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def count(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture
def no_user_bounds(monkeypatch):
    """MLflow's request settings as a user who set none has them, so the plugin's own bounds apply."""
    for key in {*store.HTTP_DEFAULTS, *store.RUN_HTTP}:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# -- unreachable: fail by default, or go on when told to ---------------------------------------------
def test_nothing_listening_stops_the_run_before_training_or_goes_on_without_it(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    failed = cli("run", *SMALL, *tracking(uri), cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    assert f"cannot reach the MLflow store at {uri}" in failed.stderr and "Connection refused" in failed.stderr
    assert 'tracking.mlflow.on_unreachable = "continue"' in failed.stderr  # the way out is named
    assert "ACC" not in failed.stdout  # nothing was trained
    assert elapsed < 30  # the interpreter, torch and MLflow's import take most of it (was 259 s of retries)

    summary_path = tmp_path / "summary.json"
    going_on = cli("run", *SMALL, *tracking(uri, "on_unreachable=continue"), "--summary", str(summary_path), cwd=tmp_path)
    assert going_on.returncode in INCOMPLETE, going_on.stderr
    assert "mlflow: MLflow logging failed, nothing was recorded: cannot reach the MLflow store" in going_on.stdout
    summary = json.loads(summary_path.read_text())
    assert len(summary["accuracy_matrix"]) == 2  # trained to the end
    result = summary["trackers"]["mlflow"]
    assert result["complete"] is False and result["run_id"] is None
    assert result["unrecorded"] == [0, 1]


def test_a_host_that_never_answers_fails_the_preflight_within_its_bound(no_user_bounds):
    """A port that accepts and never replies: the preflight gives up after preflight_seconds, not minutes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, preflight_seconds=1.5))
        started = time.monotonic()
        with pytest.raises(UserError, match=r"did not answer within 1.5 s .*on_unreachable = \"continue\""):
            tracker.on_run_start(run=small_run())
        assert time.monotonic() - started < 5
    tracker.on_run_failed(error=UserError("preflight"))  # the kernel's next call: returns at once
    assert not {*store.HTTP_DEFAULTS, *store.RUN_HTTP} & set(os.environ)  # the bounds held for the run only


# -- never hanging: the training thread never waits on MLflow; the end waits drain_seconds at most ------
def test_a_store_that_never_answers_never_holds_training_and_the_end_waits_drain_seconds(tmp_path, no_user_bounds):
    """A host that accepts and never replies, with on_unreachable = "outbox": the preflight gives up after
    its bound, training goes on with every boundary returning at once, the end waits drain_seconds and no
    more, and everything stays in the outbox, in order, for the next start.

    (Replaces two tests of the writer thread, which monkeypatched its MLflow calls to hang: those calls
    now run in a writer process, so the real hanging host is used instead.)"""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        options = MLflowOptions(
            tracking_uri=uri, on_unreachable="outbox", preflight_seconds=1.0, drain_seconds=1.0,
            max_pending_generations=1, outbox=str(tmp_path / "outbox"),
        )
        tracker = MLflowTracker(options)
        tracker.on_run_start(run=small_run())
        hooks = []
        for index in range(3):
            started = time.perf_counter()
            tracker.on_metrics(step=index, metrics={"loss": 1.0})
            tracker.on_generation(generation=small_generation(index))
            hooks.append(time.perf_counter() - started)
        started = time.monotonic()
        result = tracker.on_run_end(summary={"generations": [], "heatmap": None})
        elapsed = time.monotonic() - started
    assert max(hooks) < 0.5  # the training thread only queues (one slot: at most one small local write waited for)
    assert elapsed < 3  # drain_seconds, then the result
    assert result["complete"] is False and result["unrecorded"] == [0, 1, 2] and result["run_id"] is None
    assert "did not answer within 1 s" in result["errors"][0]
    assert "MLflow did not finish within 1 s (tracking.mlflow.drain_seconds)" in result["message"]
    assert "left in the outbox" in result["message"] and "generation(s) 0-2 not recorded" in result["message"]
    box = outbox.SessionBox(tmp_path / "outbox", "s")
    kinds = [entry.kind for entry in box.entries()]
    assert kinds == ["start", "generation", "generation", "generation", "end"]  # a boundary's metrics ride with its generation
    assert [m[0] for m in box.entries()[1].data()["metrics"]] == ["loss"]
    assert result["outbox_left"] == len(kinds) and result["outbox"] == str(box.dir)
    assert [entry.data()["index"] for entry in box.entries() if entry.kind == "generation"] == [0, 1, 2]


def test_a_writer_closed_without_a_timeout_still_runs_everything():
    """The checkpoint writer's use: close() waits for every call, however long."""
    done = []
    writer = BackgroundWriter("test")
    for i in range(3):
        writer.submit(lambda i=i: (time.sleep(0.05), done.append(i)))
    writer.submit(lambda: 1 / 0)
    errors = writer.close()
    assert done == [0, 1, 2] and len(errors) == 1 and "ZeroDivisionError" in errors[0]
    assert not writer.abandoned and writer.dropped == 0


@pytest.mark.slow
def test_a_server_killed_mid_run_and_never_restarted_ends_the_run_within_the_bound(tmp_path, no_user_bounds):
    summary_path = tmp_path / "summary.json"
    (tmp_path / "cwd").mkdir()
    with killable_mlflow_server(tmp_path) as server:
        command = [sys.executable, "-m", "lifelong.cli", "run", "--set", "learner.progress=false"]
        # Room for every generation in the queue: the bound tested is the end's drain, not back-pressure's.
        settings = tracking(server.uri, "drain_seconds=5", "max_pending_generations=8", f"outbox={tmp_path / 'outbox'}")
        command += ["--set", "learner.epochs=30", *settings, "--summary", str(summary_path)]
        run = subprocess.Popen(
            command,
            cwd=tmp_path / "cwd",
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while count(server.store, "model_versions") < 1:  # generation 0 is registered: the run is under way
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the first generation was never registered"
                time.sleep(0.05)
            server.kill()  # SIGKILL: no clean shutdown, nothing listens afterwards
            killed = time.monotonic()
            out, err = run.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
            pytest.fail(f"the run hung after the server was killed:\n{err[-3000:]}")
    assert run.returncode in INCOMPLETE, err[-3000:]
    assert time.monotonic() - killed < 60  # the rest of training, a few failed calls, 5 s of drain
    result = json.loads(summary_path.read_text())["trackers"]["mlflow"]
    assert result["complete"] is False and result["run_id"]
    assert {2, 3, 4} <= set(result["unrecorded"])  # made after the kill
    assert "MLflow did not finish within 5 s (tracking.mlflow.drain_seconds)" in result["message"]
    assert "not recorded" in result["message"] and "MLflow shows it RUNNING" in result["message"]
    assert "mlflow: " in out and "not recorded" in out  # the user sees it


# -- the local sqlite store: one creator at a time; a half-migrated store is refused with its repair -----
@pytest.mark.slow
def test_two_first_runs_on_a_fresh_sqlite_store_both_record_and_leave_it_sound(tmp_path, no_user_bounds):
    """Both create ./mlflow.db at once (MLflow's default store); unserialised, both fail and break it."""

    def first_run(i: int) -> subprocess.CompletedProcess:
        return cli("run", *SMALL, "--summary", str(tmp_path / f"summary{i}.json"), cwd=tmp_path)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(first_run, range(2)))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    db = tmp_path / "mlflow.db"
    assert not {t for t in tables(db) if t.startswith("_alembic_tmp_")}
    assert store.schema_problem(db) is None
    client = MlflowClient(f"sqlite:///{db}")  # MLflow verifies the schema version when it opens the store
    runs = client.search_runs([client.get_experiment_by_name("lifelong").experiment_id])
    summaries = [json.loads((tmp_path / f"summary{i}.json").read_text()) for i in range(2)]
    assert sorted(r.data.tags["lifelong.session"] for r in runs) == sorted(s["session"] for s in summaries)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(client.search_model_versions("name = 'lifelong'")) == 4  # 2 generations x 2 runs
    assert all(s["trackers"]["mlflow"]["complete"] is True for s in summaries)


KILL_DURING_CREATION = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "after_cursor_execute")
def die(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("CREATE TABLE _ALEMBIC_TMP_"):
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of a batch migration

from mlflow import MlflowClient
MlflowClient(sys.argv[1]).search_experiments()
"""


@pytest.mark.slow
def test_a_store_killed_during_its_creation_is_refused_with_its_repair(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_CREATION, uri], check=False, capture_output=True, timeout=120)
    assert killed.returncode == -9
    assert "_alembic_tmp_metrics" in tables(db)  # the state the issue reported

    result = cli("run", *SMALL, *tracking(uri), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"the MLflow store {db} is half-migrated" in result.stderr and "_alembic_tmp_metrics" in result.stderr
    assert f"mv {db} {db}.broken" in result.stderr  # the repair: it holds no runs, so it is made afresh
    assert "ACC" not in result.stdout


def test_the_repair_of_a_half_migrated_store_with_runs_keeps_them(tmp_path):
    """Leftover copies are dropped where the table still exists and renamed back where it is gone."""
    db = tmp_path / "my store.db"
    with sqlite3.connect(db) as conn:
        for table in ("experiments", "runs", "tags", "_alembic_tmp_tags", "_alembic_tmp_params"):
            conn.execute(f"CREATE TABLE {table} (x INTEGER)")
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        conn.execute("INSERT INTO alembic_version VALUES ('abc')")
        conn.execute("INSERT INTO runs VALUES (1)")
        conn.execute("INSERT INTO _alembic_tmp_params VALUES (7)")
    problem = store.schema_problem(db)
    assert "It holds 1 run(s): back it up" in problem
    repair = problem.split("finish the migration: ", 1)[1]
    steps, upgrade = repair.rsplit(" && ", 1)
    assert upgrade == f"mlflow db upgrade 'sqlite:///{db}'"
    subprocess.run(steps, shell=True, check=True, cwd=tmp_path)
    assert tables(db) == {"experiments", "runs", "tags", "params", "alembic_version"}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT x FROM params").fetchall() == [(7,)]  # the copy held the rows
    assert (tmp_path / "my store.db.bak").is_file()


def test_lifelong_models_refuses_a_half_migrated_store_with_its_repair(tmp_path):
    from click.testing import CliRunner
    from lifelong_mlflow.models_command import models

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as conn:
        for table in ("experiments", "runs", "metrics", "_alembic_tmp_metrics"):
            conn.execute(f"CREATE TABLE {table} (x INTEGER)")
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")  # empty: no version recorded
    result = CliRunner().invoke(models, ["list", "--tracking-uri", f"sqlite:///{db}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is half-migrated" in result.stderr and f"mv {db} {db}.broken" in result.stderr
