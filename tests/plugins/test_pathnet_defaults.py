"""PathNet's defaults for streams: a module per task, settling the winner, the task classifier, its memories."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lifelong.config import LearnerOptions
from lifelong.learner import build_optimizer, parameter_groups
from lifelong.types import ModelSpec, StreamInfo
from lifelong_pathnet import PathNet, PathNetOptions
from lifelong_pathnet.evolution import path_modules
from lifelong_pathnet.grid import GridOptions, PathNetModel, module_count
from lifelong_pathnet.memory import Exemplars, TaskMemory


def test_module_count_leaves_every_task_its_own_modules():
    five = StreamInfo((4,), 2, experiences=[0, 1, 2, 3, 4])
    assert module_count(GridOptions(), five) == 18  # N = 3 for 5 tasks, plus 3 spare
    assert module_count(GridOptions(), StreamInfo((4,), 2, experiences=[0, 1])) == 10  # the paper's, for 2 tasks
    assert module_count(GridOptions(), StreamInfo((4,), 2)) == 51  # unknown length: the 16 preallocated heads
    assert module_count(GridOptions(modules=7), five) == 7


def test_defaults_learn_every_task_and_forget_nothing(run):
    """Only ``strategies = ["pathnet"]``: with the paper's 10 modules and no settling the last tasks of
    Split-Digits reached 0.63–0.93 (docs/pathnet.md)."""
    summary, runner = run(["learner.strategies=['pathnet']", "stream.scenario=task"])
    matrix = summary["accuracy_matrix"]
    assert min(matrix[i][i] for i in range(len(matrix))) >= 0.95, matrix
    assert summary["bwt"] == 0.0
    assert runner.model.frozen.shape[1] == 18


def started(options: PathNetOptions, info: StreamInfo) -> PathNet:
    """A pathnet strategy with its grid and the learner's fused Adam, started as the kernel starts it."""
    torch.manual_seed(0)
    strategy = PathNet(options)
    model, _ = strategy.wrap_model(model=None, spec=ModelSpec("none", {}, info))
    optimizer = build_optimizer("adam", parameter_groups(model, 1e-2), 1e-2, 0.0, 0.0)
    optimizer.found_inf = torch.ones(())  # the learner's flag, left set by a skipped stream batch
    strategy.on_run_start(run=SimpleNamespace(
        optimizer=optimizer, device=torch.device("cpu"), seed=0, learner=LearnerOptions(batch_size=8)))
    return strategy


INFO = StreamInfo(input_shape=(6,), num_classes=2, scenario="task", num_tasks=3, experiences=[0, 1, 2])


def separable(n: int, task: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    x[:, task] += 3.0  # each task's inputs sit apart along their own axis: a task classifier can tell them
    return x, (x[:, 3 + task] > 0).long()


def test_settling_trains_the_winning_path_and_skips_what_is_not_finite():
    strategy = started(PathNetOptions(settle=50, population=4, tournament_batches=2), INFO)
    model = strategy.model
    x, y = separable(64, 0, 0)
    strategy.memory.offer(x, y)
    best = strategy.tournament.genotype(strategy.tournament.best())
    on_path = model.modules_of(path_modules(best))
    before = [p.detach().clone() for m in on_path for p in m.parameters()]
    head = model.heads[0].weight.detach().clone()
    strategy._settle(best, torch.Generator().manual_seed(0))
    # the learner's stale found_inf flag did not veto the updates: the path and its head moved
    assert not all(torch.equal(a, p) for a, m in zip(before, on_path) for p in m.parameters())
    assert not torch.equal(head, model.heads[0].weight)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy > 0.9
    # a memory of non-finite inputs: every update is skipped on the device, nothing turns NaN
    strategy.memory.clear()
    strategy.memory.offer(torch.full((16, 6), float("nan")), torch.zeros(16, dtype=torch.long))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    strategy._settle(best, torch.Generator().manual_seed(0))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_task_memory_is_kept_only_when_a_boundary_needs_it():
    from lifelong.types import Batch

    x, y = separable(8, 0, 0)
    batch = Batch(x=x, y=y, task=torch.zeros(8, dtype=torch.long))
    for options, kept in ((PathNetOptions(settle=0, oracle="entropy"), 0), (PathNetOptions(settle=0), 8), (PathNetOptions(oracle="entropy"), 8)):
        strategy = started(options, INFO)
        strategy.after_step(batch=batch, outputs=torch.zeros(8, 2), first_pass=True)
        assert strategy.memory.seen == kept, options


def test_the_task_classifier_picks_each_finished_tasks_path():
    strategy = started(PathNetOptions(settle=20, population=4, tournament_batches=2, oracle_memory=30), INFO)
    model = strategy.model
    for task in range(3):
        x, y = separable(40, task, task)
        strategy.memory.offer(x, y)
        strategy.on_boundary(experience=None, model=model)
    assert len(strategy.exemplars) == 90 and model.uses_oracle
    assert not any(p.requires_grad for p in model.oracle.parameters())  # never in the learner's optimizer
    assert not {id(p) for p in model.oracle.parameters()} & {id(p) for p in model.trainable()}
    model.eval()
    picked = []
    for task in range(3):
        x, _ = separable(200, task, 100 + task)  # unseen samples of each task
        _, chosen = model.infer(x)
        picked.append((chosen == task).float().mean().item())
    assert min(picked) > 0.9, picked
    model.options.oracle = "entropy"  # the other rule stays available on the same model
    assert not model.uses_oracle
    # a stored sample that overflows skips the classifier's updates; it never turns NaN
    strategy.exemplars.x[0] = float("inf")
    strategy._train_oracle(torch.Generator().manual_seed(1))
    assert all(torch.isfinite(p).all() for p in model.oracle.parameters())


def test_running_out_of_unfrozen_modules_is_said(caplog):
    strategy = started(PathNetOptions(modules=4, active=2, layers=1, settle=0, population=2, tournament_batches=1), INFO)
    with caplog.at_level("WARNING", logger="lifelong_pathnet.strategy"):
        strategy.tournament.population[:] = [[0, 1]]
        strategy.on_boundary(experience=None, model=strategy.model)
        assert "unfrozen" not in caplog.text  # 2 of 4 left: a path still has room
        strategy.tournament.population[:] = [[2, 3]]
        strategy.on_boundary(experience=None, model=strategy.model)
    assert "a layer has 0 unfrozen module(s) of 4" in caplog.text and "strategy.pathnet.modules higher" in caplog.text


def test_a_grid_stored_before_the_task_classifier_loads_and_infers_by_entropy():
    model = PathNetModel(GridOptions(layers=2, modules=4, active=2, width=5), INFO)
    model.freeze(np.array([[0, 1], [2, 2]]), task_ids=[0])
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("oracle")}
    copy = PathNetModel(GridOptions(layers=2, modules=4, active=2, width=5), INFO)
    copy.load_state_dict(old)
    assert not copy.uses_oracle
    copy.eval()
    logits, chosen = copy.infer(torch.randn(5, 6))
    assert chosen.tolist() == [0] * 5 and torch.isfinite(logits.logsumexp(dim=1)).all()


def test_task_memory_keeps_the_last_samples_and_round_trips():
    memory = TaskMemory(5, torch.device("cpu"))
    for start in range(0, 12, 3):  # 12 samples in batches of 3: the last 5 are 7..11
        x = torch.arange(start, start + 3, dtype=torch.float32)[:, None]
        memory.offer(x, x.squeeze(1).long())
    assert memory.filled == 5 and sorted(memory.y.tolist()) == [7, 8, 9, 10, 11]
    copy = TaskMemory(5, torch.device("cpu"))
    copy.load_state_dict(memory.state_dict())
    more = torch.tensor([[12.0], [13.0]])
    memory.offer(more, more.squeeze(1).long())
    copy.offer(more, more.squeeze(1).long())
    assert torch.equal(copy.y, memory.y) and torch.equal(copy.x, memory.x)  # the ring continues where it was
    assert sorted(copy.y.tolist()) == [9, 10, 11, 12, 13]
    big = TaskMemory(3, torch.device("cpu"))
    big.offer(torch.arange(7.0)[:, None], torch.arange(7))  # one batch larger than the memory
    assert sorted(big.y.tolist()) == [4, 5, 6] and big.seen == 7


def test_exemplars_keep_a_few_of_each_task():
    memory = TaskMemory(50, torch.device("cpu"))
    exemplars = Exemplars(4, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for task in range(3):
        memory.clear()
        memory.offer(torch.full((20, 2), float(task)), torch.zeros(20, dtype=torch.long))
        exemplars.add(task, memory, g)
    assert exemplars.task.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(exemplars.x[:, 0], exemplars.task.float())
    copy = Exemplars(4, torch.device("cpu"))
    copy.load_state_dict(exemplars.state_dict())
    assert torch.equal(copy.x, exemplars.x) and len(copy) == 12


@pytest.mark.parametrize("bad", [{"settle": -1}, {"memory": 0}, {"oracle_memory": 0}, {"oracle_hidden": 0}, {"modules": -1}])
def test_bad_pathnet_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PathNetOptions(**bad).check()
