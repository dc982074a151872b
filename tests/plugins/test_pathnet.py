"""PathNet: tournament mechanics, freezing, re-initialisation, state, task-id inference, end to end."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from lifelong import checkpoint
from lifelong.errors import ConfigError
from lifelong.host import PluginHost
from lifelong.types import StreamInfo
from lifelong_pathnet.evolution import Tournament, mutate, path_modules, random_population
from lifelong_pathnet.grid import GridOptions, PathNetModel, build_grid

TASK_IL = [
    "learner.strategies=['pathnet']",
    "stream.scenario=task",
    "learner.optimizer=sgd",
    "learner.lr=0.05",
    "learner.epochs=4",
    "strategy.pathnet.tournament_batches=5",
    "strategy.pathnet.population=8",
]


# -- evolution ----------------------------------------------------------------------------------
def test_mutation_shifts_by_at_most_two_and_wraps():
    rng = np.random.default_rng(0)
    genotype = np.array([[0, 1, 9]] * 3)
    assert np.array_equal(mutate(genotype, 10, 0.0, rng), genotype)
    shifts = []
    for _ in range(300):
        mutated = mutate(genotype, 10, 1.0, rng)
        assert mutated.min() >= 0 and mutated.max() < 10
        shifts.append((mutated - genotype + 2) % 10 - 2)  # the shift, unwrapped
    shifts = np.stack(shifts)
    assert set(np.unique(shifts)) == {-2, -1, 0, 1, 2}  # every shift in [−2, 2] occurs, nothing else
    # 9 + 2 wraps to 1 and 0 − 2 to 8
    assert {1, 0} <= set(np.unique(np.stack([mutate(genotype, 10, 1.0, rng) for _ in range(50)])[:, :, 2]))


def test_mutation_rate_is_the_per_element_probability():
    rng = np.random.default_rng(1)
    genotype = np.zeros((3, 3), dtype=np.int64)
    changed = np.mean([np.mean(mutate(genotype, 10, 1 / 9, rng) != genotype) for _ in range(4000)])
    # P(changed) = rate × P(shift ≠ 0) = 1/9 × 4/5; the binomial standard error here is ≈ 0.0017
    assert changed == pytest.approx(4 / 45, abs=0.008)


def test_tournament_trains_each_genotype_for_t_batches_and_copies_the_winner():
    rng = np.random.default_rng(0)
    population = random_population(6, 3, 3, 10, rng)
    t = Tournament(population.copy(), modules=10, batches=4, rate=0.0, rng=rng)
    a, b = t.state.pair
    assert a != b
    order = []
    for i in range(8):
        order.append(t.active)
        t.record(torch.tensor(1.0 if t.active == b else 0.0), compare=lambda x, y: bool(x >= y))
    assert order == [a] * 4 + [b] * 4
    assert t.state.winner == b and t.state.completed == 1
    assert np.array_equal(t.population[a], population[b])  # rate 0: the loser is an exact copy of the winner
    assert np.array_equal(t.population[b], population[b])
    assert t.best() == b


def test_tournaments_are_deterministic_under_a_seed():
    def play(seed):
        rng = np.random.default_rng(seed)
        t = Tournament(random_population(16, 3, 3, 10, rng), modules=10, batches=2, rate=1 / 9, rng=rng)
        fitness = np.random.default_rng(99)
        for _ in range(400):
            t.record(torch.tensor(fitness.random()), compare=lambda x, y: bool(x >= y))
        return t.population

    assert np.array_equal(play(3), play(3))
    assert not np.array_equal(play(3), play(4))


def test_path_modules_drop_repeats():
    assert path_modules(np.array([[3, 1, 3], [0, 0, 0]])) == ((1, 3), (0,))


# -- the grid -----------------------------------------------------------------------------------
def small_grid(**kw) -> PathNetModel:
    info = StreamInfo(input_shape=(4,), num_classes=2, num_tasks=1, experiences=[0, 1, 2])
    return PathNetModel(GridOptions(layers=2, modules=4, active=2, width=5, **kw), info)


def test_freezing_switches_off_gradients_and_reinitialising_spares_frozen_modules():
    torch.manual_seed(0)
    model = small_grid()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.freeze(np.array([[0, 1], [2, 2]]), task_ids=[])
    assert model.current == 1 and int(model.frozen_tasks) == 1
    assert model.frozen.tolist() == [[True, True, False, False], [False, False, True, False]]
    frozen_ids = {id(p) for p in frozen}
    expected = [*model.grid[0][0].parameters(), *model.grid[0][1].parameters(), *model.grid[1][2].parameters(), *model.heads[0].parameters()]
    assert frozen_ids == {id(p) for p in expected}
    assert all(not p.requires_grad for p in expected)
    reset = model.reinitialize()
    assert not frozen_ids & {id(p) for p in reset}
    after = model.state_dict()
    for key in ("grid.0.0.0.weight", "grid.1.2.0.weight", "heads.0.weight"):
        assert torch.equal(after[key], before[key])
    for key in ("grid.0.2.0.weight", "grid.1.0.0.weight", "grid.1.3.0.weight"):
        assert not torch.equal(after[key], before[key])
    assert {id(p) for p in model.param_groups(0.1)[0]["params"]}.isdisjoint(frozen_ids)


def test_a_loaded_grid_restores_its_frozen_paths_and_flags():
    model = small_grid()
    model.freeze(np.array([[0, 1], [2, 2]]), task_ids=[])
    copy = small_grid()
    copy.load_state_dict(model.state_dict())
    assert copy._frozen_paths == [((0, 1), (2,))] and copy.current == 1
    assert not copy.grid[0][0][0].weight.requires_grad and copy.grid[0][3][0].weight.requires_grad
    assert not copy.heads[0].weight.requires_grad and copy.heads[1].weight.requires_grad


def test_task_inference_picks_the_most_confident_frozen_path():
    """A constructed case: head 0 is sure about inputs along e0 and indifferent to e1, head 1 the reverse."""
    info = StreamInfo(input_shape=(2,), num_classes=2, experiences=[0, 1])
    model = PathNetModel(GridOptions(layers=1, modules=2, active=1, width=2), info)
    with torch.no_grad():
        for block in model.grid[0]:
            block[0].weight.copy_(torch.eye(2))
            block[0].bias.zero_()
        model.heads[0].weight.copy_(torch.tensor([[10.0, 0.0], [-10.0, 0.0]]))
        model.heads[1].weight.copy_(torch.tensor([[0.0, -10.0], [0.0, 10.0]]))
        for head in model.heads:
            head.bias.zero_()
    model.freeze(np.array([[0]]), task_ids=[])
    model.freeze(np.array([[1]]), task_ids=[])
    model.eval()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1], [0.1, 3.0]])
    logits, chosen = model.infer(x)
    assert chosen.tolist() == [0, 1, 0, 1]
    assert model(x).argmax(dim=1).tolist() == [0, 1, 0, 1]  # head 0 says class 0, head 1 class 1
    assert torch.equal(logits, model(x))


# -- in the pipeline ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_il(tmp_path_factory):
    from tests.conftest import run_pipeline

    tmp = tmp_path_factory.mktemp("pathnet")
    summary, runner = run_pipeline(
        tmp,
        [*TASK_IL, f"checkpoint.dir={tmp / 'ckpt'}", "tracking.trackers=['generation-log']"],
        host=PluginHost(plugins=["tests.fixtures.generation_log"]),
    )
    return summary, runner, tmp


def logits_of(model, test_set):
    model.eval()
    with torch.no_grad():
        return model(test_set.x, test_set.task)


def test_finished_tasks_stay_bit_identical(task_il):
    summary, runner, _ = task_il
    matrix = summary["accuracy_matrix"]
    for i in range(len(matrix)):
        assert all(row[i] == matrix[i][i] for row in matrix[i:]), f"accuracy on task {i} changed after it was frozen"
    assert summary["bwt"] == 0.0 and summary["forgetting"] == 0.0
    assert summary["acc"] > 0.8
    # Weights and outputs of task 0 after the first generation equal those at the end, bit for bit.
    first = runner.plan.trackers["generation-log"].generations[0].state
    final = runner.model.state_dict()
    path = runner.model._frozen_paths[0]
    for layer, mods in enumerate(path):
        for m in mods:
            for name in ("weight", "bias"):
                key = f"grid.{layer}.{m}.0.{name}"
                assert torch.equal(first[key], final[key].cpu())
    assert torch.equal(first["heads.0.weight"], final["heads.0.weight"].cpu())
    gen0 = build_grid(GridOptions(**runner.plan.model_spec.options), runner.plan.info)
    gen0.load_state_dict(first)
    assert torch.equal(logits_of(gen0, runner.test_sets[0]), logits_of(runner.model, runner.test_sets[0]))


def test_frozen_parameters_leave_the_optimizer(task_il):
    _, runner, _ = task_il
    optimized = {id(p) for group in runner.optimizer.param_groups for p in group["params"]}
    frozen = [p for p in runner.model.parameters() if not p.requires_grad]
    assert frozen and optimized.isdisjoint(id(p) for p in frozen)
    assert all(id(p) not in {id(q) for q in frozen} for p in runner.optimizer.state)


def test_checkpoint_round_trip_rebuilds_the_model_and_the_population(task_il):
    _, runner, tmp = task_il
    spec, state, strategy_state, _ = checkpoint.load(tmp / "ckpt")
    assert spec.name == "pathnet"
    component = PluginHost().component("model", spec.name, "test")
    from lifelong import options

    model = component.factory(options.validate(component.options, spec.options, "test"), spec.info)
    model.load_state_dict(state)
    for exp, test_set in runner.test_sets.items():
        assert torch.equal(logits_of(model, test_set), logits_of(runner.model, test_set)), exp
    saved = strategy_state["pathnet"]["tournament"]
    live = runner.plan.strategies["pathnet"].tournament
    assert torch.equal(saved["population"], torch.from_numpy(live.population))


def test_pathnet_refuses_to_compose_with_replay(run):
    with pytest.raises(ConfigError, match="does not compose"):
        run(["learner.strategies=['pathnet', 'replay']"])


def test_a_backbone_without_prepare_is_a_clear_error(run):
    with pytest.raises(ConfigError, match="prepare"):
        run(["learner.strategies=['pathnet']", "strategy.pathnet.backbone=true"])


def test_a_frozen_backbone_is_layer_zero_and_its_features_are_cached(run):
    summary, runner = run(
        [*TASK_IL, "model.name=featurized", "strategy.pathnet.backbone=true"],
        host=PluginHost(plugins=["tests.fixtures.model_members"]),
    )
    model = runner.model
    assert model.grid[0][0][0].in_features == 16  # the backbone's features, not the 64 pixels
    tested = sum(len(t) for t in runner.test_sets.values())
    # one probe sample (the grid's input shape) + each stream and test sample once
    assert model.backbone.prepared_samples == 1 + summary["samples_seen"] + tested
    assert summary["bwt"] == 0.0


@pytest.mark.slow
def test_generations_reach_mlflow_and_serve_with_frozen_paths(tmp_path, monkeypatch):
    from tests.conftest import run_pipeline

    uri = "sqlite:///" + str(tmp_path / "store.db")
    monkeypatch.chdir(tmp_path)
    summary, runner = run_pipeline(tmp_path, [*TASK_IL, "tracking.trackers=['mlflow']", f"tracking.mlflow.tracking_uri={uri}"])
    assert "errors" not in summary["trackers"]["mlflow"], summary["trackers"]["mlflow"].get("errors")
    assert [g["version"] for g in summary["generations"]] == [1, 2, 3, 4, 5]
    mlflow.set_tracking_uri(uri)
    try:
        served = mlflow.pyfunc.load_model("models:/lifelong/1")  # generation 0: only task 0 learned
        test_set = runner.test_sets[0]
        predicted = served.predict({"x": test_set.x.numpy(), "task": test_set.task.numpy()})
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_array_equal(predicted, logits_of(runner.model, test_set).argmax(dim=1).numpy())


@pytest.mark.parametrize("oracle,inference,least", [
    ("classifier", "sample", 0.6), ("classifier", "batch", 0.6), ("entropy", "sample", 0.4), ("entropy", "batch", 0.4)])
def test_task_free_class_incremental_run_infers_the_task(run, oracle, inference, least):
    summary, runner = run(
        ["learner.strategies=['pathnet']", f"strategy.pathnet.oracle={oracle}", f"strategy.pathnet.inference={inference}"]
    )
    model = runner.model
    model.eval()
    hits, correct = [], []
    for exp, test_set in runner.test_sets.items():
        logits, chosen = model.infer(test_set.x)
        hits.append((chosen == exp).float().mean().item())
        predicted = logits.argmax(dim=1)
        correct.append((predicted == test_set.y).float().mean().item())
        # a head predicts only the classes it was trained on: those of the chosen task
        assert bool(model.head_classes[chosen].gather(1, predicted[:, None]).all())
    # the pipeline's class-incremental accuracy is the accuracy of these task-inferred predictions
    assert summary["accuracy_matrix"][-1] == pytest.approx(correct, abs=1e-6)
    print(oracle, inference, "picked right:", hits)
    # Five tasks: chance is 0.2. The task classifier must reach the 0.6 (bench/pathnet.py:
    # 0.88-0.91 on Split-Digits); lowest entropy is weaker, but must beat chance clearly.
    assert np.mean(hits) > least, hits


def test_conv_modules_learn_images_and_never_forget(run):
    summary, runner = run([*TASK_IL, "strategy.pathnet.block=conv", "strategy.pathnet.width=16", "learner.epochs=6"])
    assert isinstance(runner.model.grid[0][0][0], torch.nn.Conv2d)
    matrix = summary["accuracy_matrix"]
    assert all(row[i] == matrix[i][i] for i in range(len(matrix)) for row in matrix[i:])
    assert summary["acc"] > 0.7


def test_a_task_ends_at_every_boundary_the_pipeline_reports(run):
    summary, runner = run(
        ["learner.strategies=['pathnet']", "learner.optimizer=sgd", "learner.lr=0.05",
         "boundary.detector=window", "boundary.batches=6", "strategy.pathnet.population=4",
         "strategy.pathnet.tournament_batches=2"]
    )
    windows = len(summary["generations"])
    assert windows == 8  # 43 batches in windows of 6: more boundaries than the reader's 5 experiences
    assert int(runner.model.frozen_tasks) == windows and runner.model.capacity == 16


def test_more_boundaries_than_heads_is_a_clear_error(run):
    from lifelong.errors import UserError

    with pytest.raises(UserError, match="max_tasks"):
        run(["learner.strategies=['pathnet']", "strategy.pathnet.max_tasks=2"])
