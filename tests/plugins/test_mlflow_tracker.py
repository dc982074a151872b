"""The mlflow tracker against real MLflow stores: a sqlite file, and a real ``mlflow server``.

The default pipeline (Split-Digits, 5 experiences, mlp) runs once per module with one epoch; the
tests then read back what landed in the store, load the served model and compare it with torch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lifelong import checkpoint, config, options, pipeline
from lifelong.components import Components
from lifelong.config import LearnerOptions
from lifelong.errors import ConfigError, Interrupted
from lifelong.host import PluginHost
from lifelong.run import Run, Session
from lifelong.types import Experience, Generation, ModelSpec, StreamInfo
from lifelong_mlflow import pyfunc
from lifelong_mlflow.options import MLflowOptions
from lifelong_mlflow.tracker import MLflowTracker, flatten, ui_hint
from lifelong_models.mlp import MLP, MLPOptions
from tests.fixtures.mlflow_server import mlflow_server

EXPERIENCES = 5
FAST = ["learner.progress=false", "learner.epochs=1"]


def execute(tmp: Path, overrides: list[str]):
    raw = config.load(None, [*FAST, *overrides])
    plan = pipeline.build(PluginHost(), raw, tmp / "dead_letters.jsonl")
    runner = pipeline.Runner(plan)
    return runner.execute(), runner


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tracked default run into a temporary sqlite store, from a working directory of its own."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = "sqlite:///" + str(tmp / "store.db")
    (tmp / "cwd").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp / "cwd")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary, runner = execute(tmp, [f"tracking.mlflow.tracking_uri={uri}", "tracking.mlflow.alias=champion"])
    return {"tmp": tmp, "uri": uri, "summary": summary, "runner": runner, "client": MlflowClient(uri)}


@pytest.fixture
def global_uri(monkeypatch, tracked):
    """Point MLflow's process-wide URI (used by ``mlflow.pyfunc.load_model``) at the test store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    mlflow.set_tracking_uri(tracked["uri"])
    yield tracked["uri"]
    mlflow.set_tracking_uri(None)


def versions(client: MlflowClient, name: str = "lifelong"):
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def test_every_generation_is_a_version_with_its_lineage(tracked):
    summary, client = tracked["summary"], tracked["client"]
    found = versions(client)
    assert [int(v.version) for v in found] == list(range(1, EXPERIENCES + 1))
    run_id = tracked["summary"]["trackers"]["mlflow"]["run_id"]
    for index, version in enumerate(found):
        tags = version.tags
        assert version.run_id == run_id
        assert tags["lifelong.generation"] == str(index)
        assert tags["lifelong.parent"] == ("none" if index == 0 else str(index - 1))
        assert json.loads(tags["lifelong.experiences"]) == [index]
        assert json.loads(tags["lifelong.experiences_covered"]) == list(range(index + 1))
        assert json.loads(tags["lifelong.offsets"]) == summary["generations"][index]["offsets"]
        row = summary["accuracy_matrix"][index]
        for exp in range(EXPERIENCES):
            assert float(tags[f"lifelong.acc.exp_{exp}"]) == pytest.approx(row[exp], abs=1e-5)


def test_aliases_point_at_the_last_version(tracked):
    client = tracked["client"]
    assert int(client.get_model_version_by_alias("lifelong", "champion").version) == EXPERIENCES
    # "latest" is MLflow's reserved alias for the newest version: nothing is set, it still resolves.
    assert int(client.get_model_version_by_alias("lifelong", "latest").version) == EXPERIENCES


def test_summary_generations_carry_their_model_version(tracked):
    summary = tracked["summary"]
    result = summary["trackers"]["mlflow"]
    assert "errors" not in result, result.get("errors")
    assert result["tracking_uri"] == tracked["uri"]
    assert result["registered_model"] == "lifelong"
    assert result["message"] == (
        f"registered 'lifelong' v1-v{EXPERIENCES}; open the MLflow UI: mlflow ui --backend-store-uri {tracked['uri']}"
    )
    for index, entry in enumerate(summary["generations"]):
        assert entry["run_id"] == result["run_id"]
        assert entry["version"] == index + 1
        assert entry["model_uri"] == f"models:/lifelong/{index + 1}"


def test_served_model_predicts_like_the_trained_one(tracked, global_uri):
    runner, summary = tracked["runner"], tracked["summary"]
    served = mlflow.pyfunc.load_model("models:/lifelong@latest")
    last = EXPERIENCES - 1
    test_set = runner.test_sets[last]
    runner.model.eval()
    with torch.no_grad():
        expected = runner.model(test_set.x).argmax(dim=1).numpy()
    names = np.array(runner.plan.model_spec.info.class_names)  # the generation knows its class names
    images = test_set.x.numpy()
    predicted = served.predict(images)
    assert predicted.dtype.kind == "U"
    np.testing.assert_array_equal(predicted, names[expected])
    accuracy = float((predicted == names[test_set.y.numpy()]).mean())
    assert accuracy == pytest.approx(summary["accuracy_matrix"][-1][last], abs=1e-6)
    # A DataFrame with one column of flattened samples, as a REST client sends them, gives the same answer.
    flat = pd.DataFrame({"image": list(images.reshape(len(images), -1))})
    np.testing.assert_array_equal(served.predict(flat), names[expected])


def test_run_holds_config_metrics_and_artifacts(tracked):
    client = tracked["client"]
    run = client.get_run(tracked["summary"]["trackers"]["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "lifelong"
    params = run.data.params
    assert params["learner.epochs"] == "1"
    assert params["model.hidden"] == "[256, 256]"
    assert params["stream.reader"] == "split-digits"
    assert params["tracking.mlflow.alias"] == "champion"
    tags = run.data.tags
    assert tags["lifelong.plugin.mlflow"] == "0.1.0"
    assert tags["lifelong.scenario"] == "class"
    assert tags["lifelong.device"] == tracked["summary"]["device"]
    metrics = run.data.metrics
    for key in ("acc", "bwt", "forgetting", "prequential_accuracy", "samples_per_second", "loss", "eval/acc"):
        assert key in metrics, key
    assert metrics["acc"] == pytest.approx(tracked["summary"]["acc"])
    history = client.get_metric_history(run.info.run_id, "gen_acc/exp_0")
    assert [m.step for m in history] == list(range(EXPERIENCES))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "summary.json", "accuracy_matrix.png"} <= artifacts
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, "summary.json", str(tracked["tmp"]))).read_text()
    )
    assert [g["version"] for g in logged["generations"]] == list(range(1, EXPERIENCES + 1))


def test_nothing_is_written_to_the_default_store(tracked):
    # Some MLflow code paths resolve URIs through the process-wide default (./mlflow.db); none may run.
    assert not (tracked["tmp"] / "cwd" / "mlflow.db").exists()


def test_building_the_plan_contacts_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = config.load(None, [*FAST, f"tracking.mlflow.tracking_uri=sqlite:///{tmp_path / 'never.db'}"])
    pipeline.build(PluginHost(), raw, tmp_path / "dead_letters.jsonl")
    assert list(tmp_path.iterdir()) == []  # no store, no default store, no dead-letter file yet


@pytest.mark.parametrize(
    "values, field",
    [
        ({"alias": "v3"}, "alias"),
        ({"alias": "no spaces"}, "alias"),
        ({"registered_model": "a/b"}, "registered_model"),
        ({"flush_seconds": -1.0}, "flush_seconds"),
        ({"experiment": " "}, "experiment"),
        ({"max_pending_generations": 0}, "max_pending_generations"),
    ],
)
def test_bad_options_are_config_errors(values, field):
    with pytest.raises(ConfigError, match=field):
        options.validate(MLflowOptions, values, "tracking.mlflow")


def test_a_broken_store_never_stops_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    uri = "sqlite:///" + str(tmp_path / "a-file" / "mlflow.db")  # a store under a plain file cannot open
    # Told to go on without the tracker (by default a store that fails the preflight stops the run: exit 2).
    summary, _ = execute(
        tmp_path, [f"tracking.mlflow.tracking_uri={uri}", "stream.experiences=2", "tracking.mlflow.on_unreachable=continue"]
    )
    assert len(summary["accuracy_matrix"]) == 2  # training finished
    result = summary["trackers"]["mlflow"]
    assert result["run_id"] is None
    assert result["errors"]
    assert result["message"].startswith("MLflow logging failed, nothing was recorded:")
    assert all("version" not in g for g in summary["generations"])


def fake_run(
    model: torch.nn.Module, info: StreamInfo, session: Session | None = None, strategies: list[str] | None = None
) -> Run:
    return Run(
        model=model,
        optimizer=None,
        device=torch.device("cpu"),
        info=info,
        model_spec=ModelSpec("mlp", {"hidden": [8]}, info),
        learner=LearnerOptions(strategies=strategies or ["naive"]),
        session=session or Session("s-test"),
        components=Components.default(),
        config={"learner": {"lr": 0.1}, "x" * 300: "y" * 7000},
        plugin_versions={"mlflow": "0.1.0", "third-party": None},
    )


def test_metrics_batched_non_finite_skipped_and_models_logged_unregistered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    info = StreamInfo(input_shape=(4,), num_classes=2)
    model = MLP(MLPOptions(hidden=[8]), info)
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, registered_model="", flush_seconds=3600))
    tracker.on_run_start(run=fake_run(model, info))
    for step in range(1, 4):
        tracker.on_metrics(step=step, metrics={"loss": 1.0 / step, "odd key!": 2.0, "nan": math.nan, "inf": math.inf})
    assert len(tracker._pending) == 12  # held on the training thread until a flush
    generation = Generation(
        index=0,
        parent=None,
        experience=Experience(0, [0], 3, 96, {"src": [0, 96]}),
        experiences_covered=[0],
        accuracy={0: math.nan},
        model_spec=ModelSpec("mlp", {"hidden": [8]}, info),
        state=checkpoint.to_cpu(model.state_dict()),
        strategy_state={},
    )
    tracker.on_generation(generation=generation)
    result = tracker.on_run_end(summary={"acc": 0.5, "bwt": None, "heatmap": None, "generations": [{}]})
    assert "errors" not in result, result.get("errors")
    assert result["message"] == f"open the MLflow UI: mlflow ui --backend-store-uri {uri}"
    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert set(run.data.metrics) == {"loss", "odd key_", "acc"}  # no NaN gen_acc, no nan/inf keys
    assert run.data.tags["lifelong.plugin.third-party"] == "unknown"
    long_param = next(v for k, v in run.data.params.items() if k.startswith("xxx"))
    assert len(long_param) == 6000 and long_param.endswith("…")
    records = generation.records
    assert records["version"] is None and records["model_uri"] == f"models:/{records['model_id']}"
    assert client.search_registered_models() == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model(records["model_uri"])
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(served.predict(x), model(torch.from_numpy(x)).argmax(dim=1).numpy())


def test_flatten_stringifies_nested_values():
    flat = flatten({"a": {"b": 1, "c": [1, 2], "d": {}, "e": None, "f": True}, "g": "text", "bad key?": 1.5})
    assert flat == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "a.d": "{}",
        "a.e": "null",
        "a.f": "true",
        "g": "text",
        "bad key_": "1.5",
    }


def test_ui_hint_names_the_store():
    assert (
        ui_hint("sqlite:////tmp/a b/mlflow.db", "1", "r")
        == "open the MLflow UI: mlflow ui --backend-store-uri 'sqlite:////tmp/a b/mlflow.db'"
    )
    assert (
        ui_hint("http://127.0.0.1:5000/", "3", "abc") == "open the run: http://127.0.0.1:5000/#/experiments/3/runs/abc"
    )
    assert ui_hint("databricks", "3", "abc") == "logged to databricks"


def test_multi_head_model_needs_and_uses_task_ids(tmp_path):
    info = StreamInfo(input_shape=(1, 8, 8), num_classes=2, scenario="task", num_tasks=5)
    spec = ModelSpec("mlp", {"hidden": [16], "activation": "relu", "dropout": 0.0}, info)
    model = MLP(MLPOptions(hidden=[16]), info).eval()
    pyfunc.save(tmp_path / "model", model.state_dict(), spec, ["lifelong"])
    served = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    x = np.random.default_rng(0).random((12, 64), dtype=np.float32)
    task = np.arange(12) % 5
    with torch.no_grad():
        expected = model(torch.from_numpy(x).reshape(-1, 1, 8, 8), torch.from_numpy(task)).argmax(dim=1).numpy()
    # The signature names two tensors, x and task: a dict of them, or a DataFrame of samples and ids.
    frame = pd.DataFrame({"x": list(x), "task": task})
    np.testing.assert_array_equal(served.predict(frame), expected)
    np.testing.assert_array_equal(served.predict({"x": x.reshape(-1, 1, 8, 8), "task": task}), expected)
    with pytest.raises(MlflowException, match=r"missing inputs \['x', 'task'\]"):
        served.predict(x.reshape(-1, 1, 8, 8))
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "model").rglob("*"))  # nothing to unpickle


@pytest.mark.slow
def test_against_a_real_mlflow_server(tmp_path, monkeypatch):
    with mlflow_server(tmp_path) as uri:
        monkeypatch.chdir(tmp_path)
        summary, _ = execute(tmp_path, [f"tracking.mlflow.tracking_uri={uri}", "stream.experiences=2"])
        result = summary["trackers"]["mlflow"]
        assert "errors" not in result, result.get("errors")
        assert result["message"].endswith(
            f"open the run: {uri}/#/experiments/{result['experiment_id']}/runs/{result['run_id']}"
        )
        client = MlflowClient(uri)
        assert [int(v.version) for v in versions(client)] == [1, 2]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        served = mlflow.pyfunc.load_model("models:/lifelong@latest")
        assert served.predict(np.zeros((3, 1, 8, 8), dtype=np.float32)).shape == (3,)


def test_a_run_that_crashes_is_marked_failed(tmp_path):
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    raw = config.load(
        None,
        [*FAST, f"tracking.mlflow.tracking_uri={uri}", "learner.strategies=['recorder']", "strategy.recorder.fail_after=12"],
    )
    plan = pipeline.build(PluginHost(plugins=["tests.fixtures.recorder"]), raw, tmp_path / "dead_letters.jsonl")
    with pytest.raises(RuntimeError, match="failing as configured"):
        pipeline.Runner(plan).execute()
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("lifelong").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["lifelong.error"] == "RuntimeError: recorder: failing as configured"
    # the first generation (after 9 batches) was registered before the crash
    assert [int(v.version) for v in versions(MlflowClient(uri))] == [1]


# -- sessions: resume, nothing twice, interruption, back-pressure ----------------------------------
SMALL = StreamInfo(input_shape=(4,), num_classes=2)


def small_generation(model: torch.nn.Module, index: int, session: str = "s1", **extra) -> Generation:
    return Generation(
        index=index,
        parent=None if index == 0 else index - 1,
        experience=Experience(index, [index], 3, 96, {"src": [96 * index, 96 * (index + 1)]}),
        experiences_covered=list(range(index + 1)),
        accuracy={i: 0.5 for i in range(index + 1)},
        model_spec=ModelSpec("mlp", {"hidden": [8]}, SMALL),
        state=checkpoint.to_cpu(model.state_dict()),
        strategy_state=extra.pop("strategy_state", {}),
        session=session,
        **extra,
    )


def session_runs(client: MlflowClient, experiment: str = "lifelong"):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_a_resumed_session_continues_its_run_and_registers_each_generation_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    settings = dict(tracking_uri=uri, alias="champion", flush_seconds=3600)
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    client = MlflowClient(uri)

    first = MLflowTracker(MLflowOptions(**settings))
    first.on_run_start(run=fake_run(model, SMALL, Session("s1")))
    before = [small_generation(model, 0), small_generation(model, 1)]
    for generation in before:
        first.on_generation(generation=generation)
    first.on_run_failed(error=Interrupted("SIGTERM", "ckpt/ckpt-000000000006"))
    (stopped,) = session_runs(client)

    # The process that resumes the session re-reaches generation 1 (its checkpoint was older) and goes on.
    second = MLflowTracker(MLflowOptions(**settings))
    second.on_run_start(run=fake_run(model, SMALL, Session("s1", resumed=True, step=3)))
    again, new = small_generation(model, 1), small_generation(model, 2)
    second.on_generation(generation=again)
    second.on_generation(generation=new)
    result = second.on_run_end(summary={"generations": [{"index": i} for i in range(3)], "heatmap": None})
    assert "errors" not in result, result.get("errors")

    (run,) = session_runs(client)  # one MLflow run for the session
    assert run.info.run_id == stopped.info.run_id == result["run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["lifelong.session"] == "s1" and run.data.tags["lifelong.resumed_step"] == "3"
    assert "lifelong.stopped_by" not in run.data.tags and "lifelong.checkpoint" not in run.data.tags
    assert run.data.params == stopped.data.params  # not logged again
    found = versions(client)
    assert [int(v.version) for v in found] == [1, 2, 3]
    assert [(v.tags["lifelong.session"], v.tags["lifelong.generation"]) for v in found] == [("s1", "0"), ("s1", "1"), ("s1", "2")]
    assert len(client.search_logged_models([run.info.experiment_id])) == 3
    assert again.records == before[1].records  # the version registered before the stop, reused
    assert again.records["model_id"] and again.records["run_id"] == run.info.run_id
    assert again.records["version"] == 2 and new.records["version"] == 3
    assert int(client.get_model_version_by_alias("lifelong", "champion").version) == 3
    # Generation 1's accuracy row was logged once, by the first process.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "gen_acc/exp_0")] == [0, 1, 2]
    assert result["message"].startswith("registered 'lifelong' v2-v3;")
    # summary.json names every generation's version, those registered before the stop included.
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read_text())
    assert [g["version"] for g in logged["generations"]] == [1, 2, 3]


def test_a_session_resumed_before_its_run_existed_creates_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    other = MLflowTracker(MLflowOptions(tracking_uri=uri, flush_seconds=3600))
    other.on_run_start(run=fake_run(model, SMALL, Session("another")))
    other.on_run_end(summary={"generations": [], "heatmap": None})
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, flush_seconds=3600))
    tracker.on_run_start(run=fake_run(model, SMALL, Session("s2", resumed=True, step=40)))
    result = tracker.on_run_end(summary={"generations": [], "heatmap": None})
    assert "errors" not in result, result.get("errors")
    runs = {r.data.tags["lifelong.session"]: r for r in session_runs(MlflowClient(uri))}
    assert set(runs) == {"another", "s2"}
    assert runs["s2"].info.run_id == result["run_id"]
    assert runs["s2"].data.params["learner.lr"] == "0.1"  # created as usual


def test_an_unregistered_generation_given_twice_is_logged_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    records = []
    for resumed in (False, True):
        tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, registered_model="", flush_seconds=3600))
        tracker.on_run_start(run=fake_run(model, SMALL, Session("s3", resumed=resumed)))
        generation = small_generation(model, 0, session="s3")
        tracker.on_generation(generation=generation)
        result = tracker.on_run_end(summary={"generations": [{"index": 0}], "heatmap": None})
        assert "errors" not in result, result.get("errors")
        records.append(generation.records)
    client = MlflowClient(uri)
    (run,) = session_runs(client)
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert records[0] == records[1] == {
        "run_id": run.info.run_id, "model_id": logged.model_id, "registered_model": None, "version": None,
        "model_uri": f"models:/{logged.model_id}",
    }
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [logged.model_id]


def test_an_interrupted_run_is_killed_and_any_other_error_fails_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    for session, error in (("stopped", Interrupted("SIGINT", "/data/ckpt/ckpt-000000000120")), ("crashed", RuntimeError("boom"))):
        tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, flush_seconds=3600))
        tracker.on_run_start(run=fake_run(model, SMALL, Session(session)))
        tracker.on_run_failed(error=error)
    runs = {r.data.tags["lifelong.session"]: r for r in session_runs(MlflowClient(uri))}
    assert runs["stopped"].info.status == "KILLED"
    assert runs["stopped"].data.tags["lifelong.stopped_by"] == "SIGINT"
    assert runs["stopped"].data.tags["lifelong.checkpoint"] == "/data/ckpt/ckpt-000000000120"
    assert "lifelong.error" not in runs["stopped"].data.tags
    assert runs["crashed"].info.status == "FAILED"
    assert runs["crashed"].data.tags["lifelong.error"] == "RuntimeError: boom"
    assert "lifelong.stopped_by" not in runs["crashed"].data.tags


def test_pending_generations_are_bounded_and_the_wait_is_reported(tmp_path, monkeypatch):
    """A disk slower than the boundaries: at most max_pending_generations wait to be written to the
    outbox; the training thread waits for a slot. (Adapted: the bound used to be on generations waiting
    for MLflow on a writer thread; MLflow is now a writer process the training thread never waits for.)"""
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, registered_model="", flush_seconds=3600, max_pending_generations=2))
    submitted, finished, most = [0], [0], [0]
    append = tracker._append

    def slow_append(kind, data, tensors=None, files=None, index=None):
        if kind != "generation":
            return append(kind, data, tensors, files, index)
        time.sleep(0.2)  # a disk slower than training: 0.2 s per generation
        seq = append(kind, data, tensors, files, index)
        finished[0] += 1  # written; its slot is released after this returns
        return seq

    monkeypatch.setattr(tracker, "_append", slow_append)
    tracker.on_run_start(run=fake_run(model, SMALL, Session("s4")))
    submit = tracker._appender.submit

    def counting_submit(fn, *args):
        if fn == tracker._append_generation:  # a generation enters the queue: count those not yet written
            submitted[0] += 1
            most[0] = max(most[0], submitted[0] - finished[0])
        submit(fn, *args)

    tracker._appender.submit = counting_submit
    started = time.perf_counter()
    for index in range(6):
        tracker.on_generation(generation=small_generation(model, index, session="s4"))
    enqueued = time.perf_counter() - started
    result = tracker.on_run_end(summary={"generations": [], "heatmap": None})
    assert "errors" not in result, result.get("errors")
    assert most[0] == 2  # never more than two generations' state held at once
    # The 3rd to 6th generations each waited for the disk to take one (~0.2 s each).
    assert result["backpressure_seconds"] == pytest.approx(tracker.backpressure_seconds)
    assert 0.6 < result["backpressure_seconds"] <= enqueued
    assert result["complete"] is True
    assert len(MlflowClient(uri).search_logged_models([result["experiment_id"]])) == 6
    fast = MLflowTracker(MLflowOptions(tracking_uri=uri, registered_model="", flush_seconds=3600))
    fast.on_run_start(run=fake_run(model, SMALL, Session("s5")))
    fast.on_generation(generation=small_generation(model, 0, session="s5"))
    assert fast.on_run_end(summary={"generations": [], "heatmap": None})["backpressure_seconds"] == 0.0


def test_a_generation_logged_but_not_registered_before_the_stop_is_registered_from_its_logged_model(tmp_path, monkeypatch):
    """The crash came between writing the logged model and creating its version: the files are not written again."""
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    first = MLflowTracker(MLflowOptions(tracking_uri=uri, registered_model="", flush_seconds=3600))
    first.on_run_start(run=fake_run(model, SMALL, Session("s6")))
    logged_before = small_generation(model, 0, session="s6")
    first.on_generation(generation=logged_before)
    first.on_run_failed(error=Interrupted("SIGKILL"))
    second = MLflowTracker(MLflowOptions(tracking_uri=uri, flush_seconds=3600))
    second.on_run_start(run=fake_run(model, SMALL, Session("s6", resumed=True)))
    again = small_generation(model, 0, session="s6")
    second.on_generation(generation=again)
    assert "errors" not in second.on_run_end(summary={"generations": [], "heatmap": None})
    client = MlflowClient(uri)
    (run,) = session_runs(client)
    (logged,) = client.search_logged_models([run.info.experiment_id])
    (version,) = versions(client)
    assert again.records["model_id"] == logged_before.records["model_id"] == logged.model_id
    assert again.records["version"] == 1 and version.tags["lifelong.session"] == "s6"
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [logged.model_id]


def test_a_strategy_state_that_cannot_be_stored_still_logs_the_generation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    model = MLP(MLPOptions(hidden=[8]), SMALL)
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, flush_seconds=3600))
    tracker.on_run_start(run=fake_run(model, SMALL, Session("s7"), strategies=["odd"]))
    generation = small_generation(model, 0, session="s7", strategy_state={"odd": {"thing": object()}})
    tracker.on_generation(generation=generation)
    result = tracker.on_run_end(summary={"generations": [], "heatmap": None})
    (error,) = result["errors"]
    assert error.startswith("generation 0: strategy state not stored (TypeError")
    assert generation.records["version"] == 1  # served and continued from, without strategy state
    path = Path(MlflowClient(uri).get_logged_model(generation.records["model_id"]).artifact_location.replace("file://", ""))
    assert (path / "artifacts" / "weights.safetensors").is_file() and not list(path.rglob("strategies.*"))
