"""The optional model members the kernel honours: prepare, param_groups, lifecycle_hooks, wrap_model."""

import pytest
import torch

from lifelong.host import PluginHost

MEMBERS = "tests.fixtures.model_members"


def host():
    return PluginHost(plugins=[MEMBERS])


def test_prepare_runs_once_per_sample_and_everything_downstream_sees_prepared_inputs(run):
    summary, runner = run(
        ["model.name=featurized", "learner.epochs=3", "learner.strategies=['replay']", "strategy.replay.memory=64"],
        host=host(),
    )
    model = runner.model
    tested = sum(len(t) for t in runner.test_sets.values())
    # Each stream sample and each test sample goes through prepare exactly once, although the
    # stream is trained on for 3 epochs and every test set is evaluated after 5 generations.
    assert model.prepared_samples == summary["samples_seen"] + tested
    assert summary["trained_samples"] == 3 * summary["samples_seen"]
    memory = runner.plan.strategies["replay"].buffer
    assert memory.x.shape[1:] == (16,)  # replay stores the prepared features, not the images
    assert summary["accuracy_matrix"][0][0] > 0.5  # and the head learns from them


def test_param_groups_give_the_optimizer_its_groups_and_learning_rates(run):
    _, runner = run(["model.name=featurized", "model.head_lr_scale=10.0", "learner.lr=0.002"], host=host())
    lrs = [group["lr"] for group in runner.optimizer.param_groups]
    assert lrs == [pytest.approx(0.002), pytest.approx(0.02)]


def test_a_models_lifecycle_hooks_are_called(run):
    summary, runner = run(["model.name=featurized"], host=host())
    assert runner.model.log.boundaries == len(summary["generations"]) == 5


def test_wrap_model_replaces_the_model_and_its_spec(run):
    summary, runner = run(["model.name=mlp", "model.hidden=[8]", "learner.strategies=['wrapper']"], host=host())
    wrapper = runner.plan.strategies["wrapper"]
    assert runner.model is wrapper.wrapped
    assert isinstance(runner.model.inner, torch.nn.Module)
    assert runner.plan.model_spec.name == "featurized"
    assert summary["config"]["model"]["name"] == "featurized"
    # The optimizer was built after wrapping: it holds the wrapped model's parameters.
    optimized = {id(p) for group in runner.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in runner.model.parameters()}


def test_a_warmup_window_reaches_run_start_before_anything_is_prepared_and_is_still_trained_on(run):
    summary, runner = run(["model.name=featurized", "model.warmup=70", "learner.batch_size=32"], host=host())
    log = runner.model.log
    assert log.warmup is not None and len(log.warmup) == 96  # whole batches: 3 × 32 ≥ 70
    assert log.warmup.x.shape[1:] == (1, 8, 8)  # raw stream samples, not prepared ones
    assert log.prepared_at_start == 0  # nothing was prepared before the model saw the window
    plain, _ = run(["model.name=featurized"], host=host())
    # the window is streamed like any other samples: same samples, same training, same results
    assert summary["samples_seen"] == plain["samples_seen"] == 1347
    assert summary["accuracy_matrix"] == plain["accuracy_matrix"]
