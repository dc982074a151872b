"""The MLflow tracker's durable outbox and its writer process, against a real ``mlflow server``.

The server (tests/fixtures/mlflow_server.py) is killed with SIGKILL to its process group in the
middle of a run and started again on the same port with the same backend store: generations made
during the outage reach the registry once it is back, in order, each exactly once, and training
does not slow down meanwhile. A training process killed with a non-empty outbox has it drained by
the next start. The first tests check the outbox's files without any store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lifelong_mlflow import outbox, pyfunc
from lifelong_mlflow.models_command import models
from lifelong_mlflow.options import MLflowOptions
from lifelong_mlflow.outbox_writer import NICE
from lifelong_mlflow.tracker import MLflowTracker
from lifelong_models.mlp import MLP, MLPOptions
from lifelong_transfer.initializers import _read_strategies
from mlflow import MlflowClient

from lifelong import config, pipeline
from lifelong.host import PluginHost
from lifelong.run import Session
from tests.fixtures.mlflow_server import ServerProcess, free_port, killable_mlflow_server
from tests.plugins.test_mlflow_tracker import SMALL, fake_run
from tests.plugins.test_mlflow_tracker import small_generation as generation_of
from tests.plugins.test_tracking_failures import small_generation, small_run


# -- the files --------------------------------------------------------------------------------------
def test_entries_are_whole_or_absent_and_numbers_are_never_reused(tmp_path):
    box = outbox.SessionBox(tmp_path, "s/1")  # a session id is never a path
    box.create()
    assert box.dir == tmp_path / "s_1"
    first = box.append(1, "metrics", {"metrics": [["loss", 1.0, 0, 1]]})
    second = box.append(2, "generation", {"index": 0}, tensors={"weights": {"w": torch.ones(3)}})
    (box.dir / ".tmp-000000000003-generation-x").mkdir()  # a crash in the middle of writing entry 3
    assert [(e.seq, e.kind) for e in box.entries()] == [(1, "metrics"), (2, "generation")]
    assert (second.path / "weights.safetensors").is_file() and first.data()["metrics"] == [["loss", 1.0, 0, 1]]
    box.clean()
    assert not list(box.dir.glob(".*"))

    box.applied(first, {"done": True})
    with open(box.dir / outbox.JOURNAL, "ab") as journal:
        journal.write(b'{"seq": 9, "kind": "met')  # a journal line a crash cut short
    box.applied(second, error="Traceback ...\nValueError: bad")
    assert [(line["seq"], line["ok"]) for line in box.journal()] == [(1, True), (2, False)]
    assert box.entries() == [] and [e.seq for e in box.entries(box.dir / outbox.FAILED)] == [2]
    assert box.next_seq() == 3  # after the journal and the given-up entry, never a number in use
    assert not box.remove_if_done()  # a given-up entry is kept to inspect


# -- the writer process: what it imports, what it stores ---------------------------------------------
def thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of a process (Linux keeps one per thread)."""
    nices = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            nices.append(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return nices


def test_the_writer_process_yields_to_training_without_torch_and_stores_the_entry_files_as_they_are(tmp_path, monkeypatch):
    """The writer the tracker starts works below the training process's priority until the run ends,
    then at its own; it applies a generation with strategy state without importing torch (~1.5 s of
    CPU at each start, on the CPUs training uses); the model it stores is, file for file, what
    ``pyfunc.save`` writes from the tensors, and it serves like the trained model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the writer inherits it: each of its imports goes to writer.log
    monkeypatch.setattr(outbox.SessionBox, "remove_if_done", lambda self: False)  # keep writer.log to read
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, outbox=str(tmp_path / "outbox"), flush_seconds=3600))
    tracker.on_run_start(run=fake_run(model, SMALL, Session("s-files"), strategies=["replay"]))
    writer, base = tracker._process.pid, os.getpriority(os.PRIO_PROCESS, 0)
    if sys.version_info >= (3, 11):  # the training process's session (autogroup), a process group of its own
        assert os.getsid(writer) == os.getsid(0) and os.getpgid(writer) == writer
    wait_for(lambda: min(19, base + NICE) in thread_nices(writer), 30, "the writer's niced thread")
    sent = []
    command = tracker._command

    def spy(word: str) -> None:
        command(word)
        sent.append(word)
        if word == "ended":  # the niced thread stops between two entries; the rest runs at the run's priority
            wait_for(lambda: max(thread_nices(writer)) == base, 30, "the writer back at the run's priority")

    monkeypatch.setattr(tracker, "_command", spy)
    state = {"replay": {"x": torch.rand(5, 4), "y": torch.tensor([0, 1, 1, 0, 1]), "seen": 5, "mask": torch.tensor([True, False])}}
    generation = generation_of(model, 0, session="s-files", strategy_state=state)
    tracker.on_generation(generation=generation)
    result = tracker.on_run_end(summary={"generations": [], "heatmap": None})
    assert result["complete"] is True and "errors" not in result, result
    assert sent == ["ended", "stop"]

    log = (tmp_path / "outbox" / "s-files" / outbox.LOG).read_text()
    imported = {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")}
    assert {"lifelong_mlflow.recorder", "lifelong_mlflow.pyfunc", "mlflow.pyfunc"} <= imported  # the log has its imports
    torch_modules = sorted(name for name in imported if name.split(".")[0] == "torch")
    assert not torch_modules, f"the writer process imported torch: {torch_modules[:3]} …"

    stored = Path(MlflowClient(uri).get_logged_model(generation.records["model_id"]).artifact_location.removeprefix("file://"))
    lineage = {"session": "s-files", "generation": 0}
    pyfunc.save(tmp_path / "expected", generation.state, generation.model_spec, [], strategy_state=state, strategies=["replay"], lineage=lineage)
    for name in (pyfunc.WEIGHTS, pyfunc.SPEC, pyfunc.STRATEGY_TENSORS, pyfunc.STRATEGY_INDEX):
        assert (stored / "artifacts" / name).read_bytes() == (tmp_path / "expected" / "artifacts" / name).read_bytes(), name
    continued = _read_strategies(stored)
    assert continued["strategies"] == ["replay"] and continued["session"] == "s-files" and continued["generation"] == 0
    assert continued["state"]["replay"]["seen"] == 5 and torch.equal(continued["state"]["replay"]["x"], state["replay"]["x"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model(generation.records["model_uri"])
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(served.predict(x), model(torch.from_numpy(x)).argmax(dim=1).numpy())


# -- a server killed mid-run and started again ---------------------------------------------------------
def versions(store: Path) -> list[tuple[int, str, str]]:
    """(version, session tag, generation tag) of every registered version, read from the server's sqlite file."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT v.version, s.value, g.value FROM model_versions v "
                "JOIN model_version_tags s ON s.name = v.name AND s.version = v.version AND s.key = 'lifelong.session' "
                "JOIN model_version_tags g ON g.name = v.name AND g.version = v.version AND g.key = 'lifelong.generation' "
                "ORDER BY v.version"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [(int(v), s, g) for v, s, g in rows]


class Timed:
    """The training thread's step compute times and the trackers' boundary hooks, with when they ran."""

    def __init__(self, runner: pipeline.Runner, pause: float):
        self.steps: list[tuple[float, float]] = []  # (start, seconds of compute)
        self.hooks: list[tuple[float, float]] = []  # (start, seconds in on_metrics + on_generation)
        step = runner.learner.step

        def timed_step(*args, **kwargs):
            start = time.perf_counter()
            step(*args, **kwargs)
            self.steps.append((start, time.perf_counter() - start))
            time.sleep(pause)  # a model whose steps take longer: the run lasts through the outage

        runner.learner.step = timed_step
        for name in ("on_metrics", "on_generation"):
            caller = getattr(runner.hooks, name)

            def timed(caller=caller, **kwargs):
                start = time.perf_counter()
                result = caller(**kwargs)
                self.hooks.append((start, time.perf_counter() - start))
                return result

            setattr(runner.hooks, name, timed)

    def within(self, series, start: float, end: float) -> list[float]:
        return [seconds for at, seconds in series if start <= at < end]


@pytest.mark.slow
def test_generations_made_while_the_server_is_down_are_registered_once_in_order_and_training_never_waits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with killable_mlflow_server(tmp_path) as server:
        overrides = [
            "learner.progress=false",
            "learner.epochs=60",  # ~3 s per experience with the pause below: 5 generations over ~15 s
            f"tracking.mlflow.tracking_uri={server.uri}",
            f"tracking.mlflow.outbox={tmp_path / 'outbox'}",
            "tracking.mlflow.drain_seconds=120",
            "tracking.mlflow.flush_seconds=0.5",
        ]
        plan = pipeline.build(PluginHost(), config.load(None, overrides), tmp_path / "dead.jsonl")
        runner = pipeline.Runner(plan)
        timed = Timed(runner, pause=0.004)
        tracker = plan.trackers["mlflow"]
        marks: dict[str, float] = {}
        failures: list[BaseException] = []

        def outage() -> None:
            try:
                deadline = time.monotonic() + 120
                while not versions(server.store):  # generation 0 is registered: the writer is under way
                    assert time.monotonic() < deadline, "the first generation was never registered"
                    time.sleep(0.05)
                server.kill()  # SIGKILL to its process group: no clean shutdown
                marks["killed"], marks["given"] = time.perf_counter(), len(tracker._given)
                while len(tracker._given) < marks["given"] + 2:  # two generations made while it is down
                    assert time.monotonic() < deadline, "training made no generation during the outage"
                    time.sleep(0.05)
                time.sleep(0.5)
                marks["restarting"] = time.perf_counter()
                server.start()  # the same port and backend store
                marks["up"] = time.perf_counter()
            except BaseException as exc:  # noqa: BLE001 - reported on the test's thread
                failures.append(exc)

        watcher = threading.Thread(target=outage, daemon=True)
        watcher.start()
        summary = runner.execute()
        watcher.join(timeout=150)
        assert not failures, failures
        found = versions(server.store)
        client = MlflowClient(server.uri)
        run = client.get_run(summary["trackers"]["mlflow"]["run_id"])

    result = summary["trackers"]["mlflow"]
    assert result["complete"] is True, result
    session = summary["session"]
    # Each generation exactly once, registered in the order it was made, the outage's included.
    assert found == [(i + 1, session, str(i)) for i in range(5)]
    assert [g["version"] for g in summary["generations"]] == [1, 2, 3, 4, 5]
    assert marks["given"] <= 3  # at least generations 3 and 4 were made while the server was down
    assert run.info.status == "FINISHED"
    assert not (tmp_path / "outbox").exists()  # everything sent: the outbox is removed

    # Training went on while the server was down, and no boundary's hooks waited for it (a hang
    # detector: how much the outage costs training is measured by bench/outbox_outage.py, not here,
    # since step times on a shared 2-core machine are no test).
    during = timed.within(timed.steps, marks["killed"], marks["restarting"])
    assert len(during) > 50
    hooks = timed.within(timed.hooks, marks["killed"], marks["up"])
    assert hooks and max(hooks) < 0.1, max(hooks)


# -- a training process killed with entries in its outbox ------------------------------------------------
def wait_for(condition, seconds: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_crash_with_a_full_outbox_is_drained_by_the_next_start(tmp_path):
    """The server dies, the training process is killed with generations still in its outbox; the server
    comes back; the session resumed from its checkpoint sends them first, then its own, each once."""
    checkpoints = tmp_path / "ckpt"
    (tmp_path / "cwd").mkdir()
    with killable_mlflow_server(tmp_path) as server:
        settings = [
            "learner.progress=false",
            "learner.epochs=120",
            f"checkpoint.dir={checkpoints}",
            f"tracking.mlflow.tracking_uri={server.uri}",
            "tracking.mlflow.drain_seconds=120",
        ]
        command = [sys.executable, "-m", "lifelong.cli", "run", *(a for s in settings for a in ("--set", s))]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        run = subprocess.Popen(command, cwd=tmp_path / "cwd", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: versions(server.store), 120, "the first registered generation", run)
            server.kill()
            box_root = checkpoints / "outbox"  # the default beside the checkpoints
            pending = lambda: [
                e for box in outbox.sessions(box_root) for e in box.entries() if e.kind == "generation"
            ]
            wait_for(lambda: len(pending()) >= 2, 120, "two generations waiting in the outbox", run)
            run.send_signal(signal.SIGKILL)  # no on_run_failed, no drain: the outbox is all that is left
            run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        (session_box,) = outbox.sessions(box_root)
        left = sorted(int(e.data()["index"]) for e in session_box.entries() if e.kind == "generation")
        # Generation 0 may be among them: registered, but killed before the writer journaled it (so sent again).
        assert len(left) >= 2 and max(left) >= 1 and str(max(left)) not in {g for _, _, g in versions(server.store)}

        server.start()  # the same port and store
        resumed = subprocess.run(
            [*command, "--resume", "--summary", str(tmp_path / "summary.json")],
            check=False, cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        found = versions(server.store)
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("lifelong").experiment_id])
    summary = json.loads((tmp_path / "summary.json").read_text())
    session = summary["session"]
    assert found == [(i + 1, session, str(i)) for i in range(5)]  # each generation once, in order
    assert summary["trackers"]["mlflow"]["complete"] is True
    assert [r.info.status for r in runs] == ["FINISHED"]  # one run for the session, closed
    assert not box_root.exists()


@pytest.mark.slow
def test_lifelong_models_drain_sends_what_a_run_left(tmp_path):
    """A run whose store never answered leaves everything in its outbox; once the server is up, the
    drain command creates the run and registers each generation."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    box_root = tmp_path / "outbox"
    options = MLflowOptions(tracking_uri=uri, on_unreachable="outbox", drain_seconds=1, outbox=str(box_root))
    tracker = MLflowTracker(options)
    tracker.on_run_start(run=small_run("drained"))
    for index in range(2):
        tracker.on_generation(generation=small_generation(index))
    result = tracker.on_run_end(summary={"generations": [{"index": 0}, {"index": 1}], "heatmap": None})
    assert result["complete"] is False and result["outbox_left"] == 4  # start, 2 generations, end

    empty = CliRunner().invoke(models, ["drain", str(tmp_path / "nowhere")])
    assert empty.exit_code == 2 and "there is no outbox" in empty.output
    refused = CliRunner().invoke(models, ["drain", str(box_root), "--seconds", "1"])
    assert refused.exit_code == 3 and "4 left" in refused.output

    server = ServerProcess(tmp_path, port=port)
    server.start()
    try:
        drained = CliRunner().invoke(models, ["drain", str(box_root), "--seconds", "60"])
        assert drained.exit_code == 0, drained.output
        assert "sent 4 entries; 0 left" in drained.output
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("lifelong").experiment_id])
        tags = [v.tags["lifelong.generation"] for v in sorted(client.search_model_versions("name = 'lifelong'"), key=lambda v: int(v.version))]
    finally:
        server.stop()
    assert run.info.status == "FINISHED" and run.data.tags["lifelong.session"] == "drained"
    assert tags == ["0", "1"]
    assert not box_root.exists()
