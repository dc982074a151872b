"""Lineage across sessions: a generation logged to MLflow carries its strategies' state and its
place in the lineage, and a session that continues from it (``mlflow`` initializer) gets both back.

Real sqlite MLflow stores; the tracker is driven hook by hook, as the kernel drives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lifelong import checkpoint
from lifelong import options as opts
from lifelong.components import Components
from lifelong.config import LearnerOptions
from lifelong.run import Run, Session
from lifelong.types import Experience, Generation, ModelSpec, StreamInfo
from lifelong_mlflow import pyfunc
from lifelong_mlflow.options import MLflowOptions
from lifelong_mlflow.tracker import MLflowTracker
from lifelong_models.mlp import MLP, MLPOptions
from lifelong_transfer.initializers import generation_model
from lifelong_transfer.options import GenerationOptions

INFO = StreamInfo(input_shape=(1, 8, 8), num_classes=10)
SPEC = ModelSpec("mlp", opts.to_dict(MLPOptions(hidden=[16])), INFO)
STRATEGIES = ["replay", "ewc", "naive"]


def strategy_state(model: torch.nn.Module) -> dict:
    """Nested state of the shapes replay and EWC keep: tensors at any depth, lists, numbers, strings, None."""
    generator = torch.Generator().manual_seed(3)
    return {
        "replay": {
            "memory": {"x": torch.randn(7, 1, 8, 8), "y": torch.arange(7), "task": None},
            "seen": 123,
            "policy": "class-balanced",
            "priority": torch.randint(0, 2**31, (7,)),
            "rng": generator.get_state(),
        },
        "ewc": {
            "fisher": {k: torch.rand_like(v) for k, v in model.state_dict().items()},
            "anchor": {k: v.clone() for k, v in model.state_dict().items()},
            "experiences": 2,
            "decay": [0.5, float("nan")],
        },
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b


def run_of(model: torch.nn.Module, session: Session) -> Run:
    return Run(
        model=model,
        optimizer=None,
        device=torch.device("cpu"),
        info=INFO,
        model_spec=SPEC,
        learner=LearnerOptions(strategies=STRATEGIES),
        session=session,
        components=Components.default(),
        config={"learner": {"strategies": STRATEGIES}},
    )


def generation(model, index, session, state=None, continues=None) -> Generation:
    return Generation(
        index=index,
        parent=None if index == 0 else index - 1,
        experience=Experience(index, [index], 2, 64, {"src": [64 * index, 64 * (index + 1)]}),
        experiences_covered=list(range(index + 1)),
        accuracy={0: 0.75},
        model_spec=SPEC,
        state=checkpoint.to_cpu(model.state_dict()),
        strategy_state=checkpoint.to_cpu(state if state is not None else {}),
        session=session,
        continues=continues,
    )


def track(uri: str, model, session: Session, generations: list[Generation]) -> dict:
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, alias="champion", flush_seconds=3600))
    tracker.on_run_start(run=run_of(model, session))
    for g in generations:
        tracker.on_generation(generation=g)
    result = tracker.on_run_end(summary={"generations": [{"index": g.index} for g in generations], "heatmap": None})
    assert "errors" not in result, result.get("errors")
    return result


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    return "sqlite:///" + str(tmp_path / "mlflow.db")


def test_strategy_state_round_trips_through_a_logged_generation(store, monkeypatch):
    torch.manual_seed(0)
    model = MLP(MLPOptions(hidden=[16]), INFO)
    state = strategy_state(model)
    track(store, model, Session("s1"), [generation(model, 0, "s1", state)])

    continued = generation_model(GenerationOptions(model_uri="models:/lifelong@champion", tracking_uri=store), INFO)
    assert same(continued.state_dict(), model.state_dict())
    assert same(continued.continued_state["strategies"], state)
    assert continued.continued_state["strategy_names"] == STRATEGIES  # the run's list, stateless naive included
    # The alias is pinned to the version it resolved to: the lineage must not move with it.
    assert continued.continues == {"ref": "models:/lifelong/1", "session": "s1", "generation": 0}

    # Serving the same generation neither needs nor reads the strategy artifacts.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    served = mlflow.pyfunc.load_model("models:/lifelong/1")
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).reshape(-1, 1, 8, 8)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(served.predict(x.reshape(-1, 1, 8, 8)), expected)  # the signature's shape


def test_a_generation_without_strategy_artifacts_still_continues(tmp_path):
    """A directory holding only weights and spec (a generation logged before strategy state was stored)."""
    model = MLP(MLPOptions(hidden=[16]), INFO)
    pyfunc.save(tmp_path / "generation", model.state_dict(), SPEC, ["lifelong"])
    assert not list((tmp_path / "generation").rglob("strategies.*"))
    continued = generation_model(GenerationOptions(model_uri=str(tmp_path / "generation")), INFO)
    assert same(continued.state_dict(), model.state_dict())
    assert continued.continued_state == {"strategies": {}, "strategy_names": None}
    assert continued.continues == {"ref": str((tmp_path / "generation").resolve()), "session": None, "generation": None}
    # With strategy artifacts, a local directory knows its session and generation too.
    pyfunc.save(
        tmp_path / "with-state", model.state_dict(), SPEC, ["lifelong"],
        strategy_state={"naive": {}}, strategies=["naive"], lineage={"session": "s9", "generation": 4},
    )
    continued = generation_model(GenerationOptions(model_uri=str(tmp_path / "with-state")), INFO)
    assert continued.continues["session"] == "s9" and continued.continues["generation"] == 4
    assert continued.continued_state == {"strategies": {"naive": {}}, "strategy_names": ["naive"]}


def test_a_session_continuing_from_a_version_records_its_parent(store, tmp_path):
    torch.manual_seed(0)
    model = MLP(MLPOptions(hidden=[16]), INFO)
    track(store, model, Session("s1"), [generation(model, 0, "s1", strategy_state(model)), generation(model, 1, "s1")])

    continued = generation_model(GenerationOptions(model_uri="models:/lifelong@champion", tracking_uri=store), INFO)
    continues = continued.continues
    assert continues == {"ref": "models:/lifelong/2", "session": "s1", "generation": 1}
    first, second = generation(continued, 0, "s2", continues=continues), generation(continued, 1, "s2")
    result = track(store, continued, Session("s2", continues=continues), [first, second])

    client = MlflowClient(store)
    tags = {int(v.version): v.tags for v in client.search_model_versions("name = 'lifelong'")}
    # Within a session: the parent's index; the session's first generation: the model it continued from.
    assert tags[2]["lifelong.parent"] == "0"
    assert (tags[2]["lifelong.parent_session"], tags[2]["lifelong.parent_generation"]) == ("s1", "0")
    assert tags[1]["lifelong.parent"] == "none" and "lifelong.parent_session" not in tags[1]
    assert tags[3]["lifelong.session"] == "s2" and tags[3]["lifelong.generation"] == "0"
    assert tags[3]["lifelong.parent"] == "models:/lifelong/2"
    assert (tags[3]["lifelong.parent_session"], tags[3]["lifelong.parent_generation"]) == ("s1", "1")
    assert tags[4]["lifelong.parent"] == "0" and tags[4]["lifelong.parent_session"] == "s2"
    # The logged models carry the same lineage tags as the versions.
    logged = client.get_logged_model(first.records["model_id"])
    assert logged.tags["lifelong.parent"] == "models:/lifelong/2" and logged.tags["lifelong.session"] == "s2"
    run = client.get_run(result["run_id"])
    assert run.data.tags["lifelong.continues"] == "models:/lifelong/2"
    # continues reaches the generation records (so the run summary) and the logged summary.json.
    assert first.records["continues"] == continues and "continues" not in second.records
    report = json.loads(Path(client.download_artifacts(result["run_id"], "summary.json", str(tmp_path))).read_text())
    assert report["generations"][0]["continues"] == continues
    assert report["generations"][0]["version"] == 3


def test_a_session_continuing_from_a_checkpoint_names_its_path(store, tmp_path):
    """The parent of the first generation is the checkpoint the model came from."""
    model = MLP(MLPOptions(hidden=[16]), INFO)
    continues = {"ref": str(tmp_path / "ckpt" / "ckpt-000000000030"), "session": "s-old", "generation": None}
    first = generation(model, 0, "s3", continues=continues)
    track(store, model, Session("s3", continues=continues), [first])
    (version,) = MlflowClient(store).search_model_versions("name = 'lifelong'")
    assert version.tags["lifelong.parent"] == continues["ref"]
    assert version.tags["lifelong.parent_session"] == "s-old"
    assert "lifelong.parent_generation" not in version.tags  # not known: not guessed


# -- end to end: two real runs -------------------------------------------------------------------------------
def two_runs(tmp_path: Path, second_model: list[str], second_strategies: str = "['replay', 'ewc']"):
    from tests.conftest import run_pipeline

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = ["tracking.trackers=['mlflow']", f"tracking.mlflow.tracking_uri='{store}'"]
    common = ["learner.epochs=1", "stream.experiences=2"]
    first, _ = run_pipeline(
        tmp_path / "one",
        [*common, *tracking, "learner.strategies=['replay', 'ewc']", f"checkpoint.dir='{tmp_path / 'ckpt'}'"],
    )
    second, runner = run_pipeline(
        tmp_path / "two", [*common, *tracking, f"learner.strategies={second_strategies}", *second_model]
    )
    return store, first, second, runner


def test_lineage_across_two_runs_through_the_mlflow_registry(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store, first, second, runner = two_runs(
        tmp_path, ["model.name='mlflow'", "model.model_uri='models:/lifelong@latest'", f"model.tracking_uri='{uri}'"]
    )
    assert [g["version"] for g in first["generations"]] == [1, 2]
    assert second["session"] != first["session"]
    expected = {"ref": "models:/lifelong/2", "session": first["session"], "generation": 1}
    assert second["continues"] == expected and second["generations"][0]["continues"] == expected
    tags = {int(v.version): v.tags for v in MlflowClient(store).search_model_versions("name = 'lifelong'")}
    assert tags[3]["lifelong.parent"] == "models:/lifelong/2" and tags[3]["lifelong.session"] == second["session"]
    assert tags[4]["lifelong.parent"] == "0"
    # the strategies came along: replay's memory was full and EWC anchored from the first batch
    replay, ewc = runner.plan.strategies["replay"], runner.plan.strategies["ewc"]
    assert replay.seen == first["samples_seen"] + second["samples_seen"]
    assert ewc.experiences == 2 + 2


def test_continuing_from_a_checkpoint_directory_restores_the_strategies(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    ckpt = tmp_path / "ckpt"
    _, first, second, runner = two_runs(tmp_path, ["model.name='file'", f"model.path='{ckpt}'"])
    newest = checkpoint.latest(ckpt)
    assert second["continues"]["ref"] == str(newest.path) and second["continues"]["session"] == first["session"]
    assert runner.plan.strategies["replay"].seen == first["samples_seen"] + second["samples_seen"]


def test_a_different_strategy_list_drops_the_state_and_says_so(tmp_path, capsys):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    ckpt = tmp_path / "ckpt"
    _, first, second, runner = two_runs(tmp_path, ["model.name='file'", f"model.path='{ckpt}'"], "['replay']")
    assert runner.plan.strategies["replay"].seen == second["samples_seen"]  # started empty
    assert "dropped the saved state of ['ewc', 'replay']: the strategy list differs" in capsys.readouterr().err
