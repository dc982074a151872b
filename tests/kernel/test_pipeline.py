"""The loop end to end on real digits: scenarios, boundaries, epochs, hooks, checkpoints."""

import json
import math
from pathlib import Path

import pytest
import torch

from lifelong import checkpoint, config, pipeline
from lifelong.host import PluginHost
from tests.conftest import QUIET

RECORDER = "tests.fixtures.recorder"


def recorder_host():
    return PluginHost(plugins=[RECORDER])


def test_default_pipeline_gives_a_square_matrix_and_consistent_metrics(run):
    summary, runner = run()
    matrix = summary["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    assert summary["experiences"] == [0, 1, 2, 3, 4]
    assert summary["acc"] == pytest.approx(sum(matrix[-1]) / 5)
    # Naive class-incremental learning forgets: old experiences drop to near zero.
    assert matrix[0][0] > 0.9 and matrix[-1][0] < 0.3 and summary["bwt"] < -0.5
    assert summary["samples_seen"] == sum(g["samples"] for g in summary["generations"]) > 1000
    assert 0.0 < summary["prequential_accuracy"] < 1.0
    assert [g["parent"] for g in summary["generations"]] == [None, 0, 1, 2, 3]
    assert summary["generations"][2]["experiences_covered"] == [0, 1, 2]


def test_the_default_strategies_beat_naive_on_the_default_stream(run):
    from lifelong import config

    defaults = config.default_pipeline()["learner"]["strategies"]  # what default_pipeline.toml says
    naive, _ = run()
    default, runner = run([f"learner.strategies={json.dumps(defaults)}"])
    # the plan built and composed replay and EWC from their plugin, in that order
    assert list(runner.plan.strategies) == ["replay", "ewc"]
    assert {type(s).__module__.split(".")[0] for s in runner.plan.strategies.values()} == {"lifelong_strategies"}
    assert default["acc"] > naive["acc"] + 0.3


def test_the_builtin_default_pipeline_composes_replay_and_ewc():
    from lifelong import config

    assert config.default_pipeline()["learner"]["strategies"] == ["replay", "ewc"]


def test_task_incremental_heads_remember_what_class_incremental_forgets(run):
    task, _ = run(["stream.scenario='task'", "learner.epochs=2"])
    klass, _ = run(["stream.scenario='class'", "learner.epochs=2"])
    assert task["acc"] > klass["acc"] + 0.3
    assert task["acc"] > 0.8


def test_domain_incremental_permuted_digits(run):
    summary, runner = run(["stream.reader='permuted-digits'", "stream.experiences=3", "stream.scenario='domain'"])
    assert len(summary["accuracy_matrix"]) == 3
    assert runner.plan.info.num_classes == 10 and runner.plan.info.num_tasks == 1


def test_window_boundaries_cut_generations_every_n_batches(run):
    summary, _ = run(["boundary.detector='window'", "boundary.batches=10", "learner.batch_size=64", "learner.epochs=1"])
    # 1347 training samples in batches of 64 cut at experience changes: 23 batches -> 3 windows
    assert [g["index"] for g in summary["generations"]] == [0, 1, 2]
    assert summary["bwt"] is None and summary["fwt"] is None
    assert summary["acc"] is not None


def test_window_generations_that_happen_to_match_the_experience_count_report_no_bwt_or_fwt(run):
    # 45 batches of 32 over 5 experiences of 9 batches; windows of 10 batches: 5 generations too, but
    # none trained on exactly one experience, so BWT, FWT and forgetting have no meaning
    summary, _ = run(["boundary.detector='window'", "boundary.batches=10", "learner.epochs=1"])
    assert len(summary["generations"]) == len(summary["experiences"]) == 5
    assert [g["experiences"] for g in summary["generations"]][:2] == [[0, 1], [1, 2]]
    assert summary["bwt"] is None and summary["fwt"] is None and summary["forgetting"] is None
    aligned, _ = run(["boundary.detector='window'", "boundary.batches=9", "learner.epochs=1"])
    assert [g["experiences"] for g in aligned["generations"]] == [[0], [1], [2], [3], [4]]
    assert aligned["bwt"] is not None and aligned["fwt"] is not None


def test_a_failure_in_on_run_start_reaches_on_run_failed(tmp_path):
    raw = config.load(
        None,
        [*QUIET, "learner.strategies=['recorder']", "strategy.recorder.fail_at_start=true", "tracking.trackers=['generation-log']"],
    )
    host = PluginHost(plugins=["tests.fixtures.recorder", "tests.fixtures.generation_log"])
    plan = pipeline.build(host, raw, tmp_path / "dead_letters.jsonl")
    with pytest.raises(RuntimeError, match="failing at the start"):
        pipeline.Runner(plan).execute()
    assert plan.trackers["generation-log"].events == ["on_run_failed: recorder: failing at the start as configured"]


def test_hooks_see_the_stream_batch_and_train_on_the_augmented_one(run):
    summary, runner = run(
        ["learner.strategies=['recorder']", "strategy.recorder.extra_samples=3", "learner.batch_size=50", "learner.epochs=1"],
        host=recorder_host(),
    )
    recorder = runner.plan.strategies["recorder"]
    assert recorder.batch_sizes[0] == 50 and recorder.trained_sizes[0] == 53
    assert int(recorder.seen) == summary["samples_seen"]
    assert [e.index for e in recorder.experiences] == [0, 1, 2, 3, 4]
    assert [g.index for g in recorder.generations] == [0, 1, 2, 3, 4]
    # generations carry a CPU copy of each strategy's state
    assert runner.last_generation.strategy_state["recorder"]["seen"].device.type == "cpu"


def linear_penalty_run(slope: float, tmp_path: Path):
    """A short SGD run whose only strategy adds ``slope × Σ weights`` through ``extra_loss``."""
    raw = {
        "stream": {"reader": "split-digits", "experiences": 2},
        "model": {"name": "mlp", "hidden": [16]},
        "learner": {
            "strategies": ["linear-penalty"], "optimizer": "sgd", "lr": 0.1, "epochs": 1, "progress": False,
        },
        "strategy": {"linear-penalty": {"slope": slope}},
        "boundary": {"detector": "experience-change"},
        "tracking": {"trackers": []},
    }
    plan = pipeline.build(PluginHost(plugins=["tests.fixtures.linear_penalty"]), raw, tmp_path / "dead_letters.jsonl")
    pipeline.Runner(plan).execute()
    return plan.strategies["linear-penalty"]


def test_extra_loss_terms_are_added_to_the_objective(tmp_path):
    plain, penalised = linear_penalty_run(0.0, tmp_path), linear_penalty_run(3.0, tmp_path)
    # Same seed, same first batch, same initial weights: the first gradients differ by exactly the
    # gradient of the extra term, d(3 Σ w)/dw = 3 on every weight.
    assert all(torch.equal(a, b) for a, b in zip(plain.before, penalised.before))
    for g_plain, g_penalised in zip(plain.grads, penalised.grads):
        added = g_penalised - g_plain
        assert torch.allclose(added, torch.full_like(added, 3.0), atol=1e-5), f"extra term's gradient: {added.mean():.4f}, expected 3"
    # and SGD moved every weight by -lr × that gradient: 0.3 further down than without the term
    for before, after, grad in zip(penalised.before, penalised.after, penalised.grads):
        assert torch.allclose(after, before - 0.1 * grad, atol=1e-6)
    for a, b in zip(plain.after, penalised.after):
        assert torch.allclose(b - a, torch.full_like(a, -0.3), atol=1e-5)


def test_more_epochs_train_more_but_count_the_stream_once(run):
    one, _ = run(["learner.epochs=1"])
    three, _ = run(["learner.epochs=3"])
    assert one["samples_seen"] == three["samples_seen"]
    assert three["trained_samples"] == 3 * three["samples_seen"] == 3 * one["trained_samples"]
    assert [r[i] for i, r in enumerate(three["accuracy_matrix"])] >= [0.9] * 5


def test_runs_are_reproducible_under_a_seed(run):
    first, _ = run(["learner.epochs=1"])
    second, _ = run(["learner.epochs=1"])
    assert first["accuracy_matrix"] == second["accuracy_matrix"]


def test_checkpoints_round_trip_model_and_strategy_state(run, tmp_path):
    summary, runner = run(
        [f"checkpoint.dir='{tmp_path / 'ckpt'}'", "learner.strategies=['recorder']", "learner.epochs=1"],
        host=recorder_host(),
    )
    assert "errors" not in summary
    last = checkpoint.checkpoints(tmp_path / "ckpt")[-1]
    assert last.name == checkpoint.step_name(45)  # the end: 5 experiences of ~270 samples, 9 batches of ≤ 32 each
    assert summary["checkpoint"] == str(last)
    spec, state, strategy_state, kernel = checkpoint.load(tmp_path / "ckpt")
    assert [g["index"] for g in kernel["generations"]] == [0, 1, 2, 3, 4] and kernel["generations"][-1]["parent"] == 3
    assert spec.name == "mlp" and spec.info.num_classes == 10
    live = runner.model.state_dict()
    assert all(torch.equal(state[k], live[k].cpu()) for k in live)
    assert int(strategy_state["recorder"]["seen"]) == summary["samples_seen"]
    assert strategy_state["recorder"]["calls"] == len(runner.plan.strategies["recorder"].batch_sizes)
    # the weights rebuild the model through its component
    model = PluginHost().component("model", spec.name, "model").factory(
        __import__("lifelong_models").MLPOptions(**spec.options), spec.info
    )
    model.load_state_dict(state)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), runner.model.cpu()(x))


def test_initial_accuracy_is_chance_level(run):
    summary, _ = run(["learner.epochs=1"])
    assert all(0.0 <= v < 0.5 for v in summary["initial_accuracy"])
    assert not math.isnan(summary["fwt"])


def test_a_loss_drift_detector_cuts_a_task_free_stream_where_the_loss_jumps(run):
    summary, _ = run(
        ["boundary.detector='loss-drift'", "boundary.min_batches=8", "learner.log_every=2", "learner.epochs=1",
         "learner.batch_size=16"]
    )
    generations = summary["generations"]
    assert len(generations) >= 2
    # the first boundary comes after experience 0 ends (the loss jumps on the new classes), not before
    assert generations[0]["experiences"][0] == 0 and generations[0]["samples"] > 270
    assert generations[0]["samples"] < 1347
