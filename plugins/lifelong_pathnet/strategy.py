"""The ``pathnet`` strategy: evolve paths by tournament while training, freeze the best at each boundary.

On a stream (Fernando et al. 2017 train on labelled tasks; here a task ends at whatever boundary the
pipeline reports: an experience change, a window, a drift detector):

1. ``wrap_model`` replaces the pipeline's model by a :class:`~lifelong_pathnet.grid.PathNetModel`
   (with ``backbone = true`` the pipeline's model becomes its frozen layer 0).
2. Every minibatch trains the genotype whose turn it is in the current binary tournament; its
   fitness is read off that same minibatch's pre-update outputs (accuracy, the paper's measure, or
   negative loss), so evaluating a genotype costs no extra forward pass. The host learns the winner
   once per tournament (every 2·T minibatches), the only device read PathNet adds.
3. At a boundary the best genotype's modules and the task's head are frozen: ``requires_grad`` off
   and removed from the optimizer with their optimizer state, so no update can touch them (and
   later tasks' paths may read them: the transfer). Every other module is re-initialised and the
   population is drawn afresh.

The optimizer is the learner's (the paper used SGD; set ``learner.optimizer = "sgd"``), at
``lr`` when given, else ``learner.lr``. PathNet protects by construction, so it does not compose
with other strategies (replay would train old samples through the new path and head).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lifelong import hookimpl
from lifelong import options as opts
from lifelong.errors import ConfigError
from lifelong.types import Batch, ModelSpec
from lifelong_pathnet.evolution import Tournament, path_modules, random_population
from lifelong_pathnet.grid import GridOptions, GridShape, PathNetModel, task_capacity

log = logging.getLogger(__name__)

COMPATIBLE = {"pathnet", "naive"}
MAX_POPULATION = 10_000  # genotypes are drawn one by one on the host at every boundary


@dataclass
class PathNetOptions(GridShape):
    population: int = field(default=64, metadata={"help": "P, genotypes (paper: 64); 1 trains one fixed random path (a control)"})
    tournament_batches: int = field(default=50, metadata={"help": "T, minibatches each genotype of a tournament trains (paper: 50)"})
    mutation_rate: float | None = field(default=None, metadata={"help": "per-element mutation probability; None: 1/(L·N) as in the paper"})
    fitness: Literal["accuracy", "loss"] = field(default="accuracy", metadata={"help": "accuracy (paper) or negative loss over the T minibatches"})
    backbone: bool = field(default=False, metadata={"help": "use the [model] (a frozen feature extractor) as layer 0"})

    def check(self) -> None:
        super().check()
        if self.population < 1 or self.tournament_batches < 1:
            raise ValueError("population and tournament_batches must be at least 1")
        if self.population > MAX_POPULATION:
            raise ValueError(f"population must be at most {MAX_POPULATION:,} genotypes (the paper's is 64), got {self.population}")
        if self.mutation_rate is not None and not 0.0 <= self.mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in [0, 1], got {self.mutation_rate}")

    @property
    def rate(self) -> float:
        return self.mutation_rate if self.mutation_rate is not None else 1.0 / (self.layers * self.active)


class PathNet:
    def __init__(self, options: PathNetOptions):
        self.options = options
        self.model: PathNetModel | None = None
        self.tournament: Tournament | None = None
        self._pending: dict[str, Any] | None = None

    # -- building ---------------------------------------------------------------------------------
    @hookimpl
    def wrap_model(self, model: torch.nn.Module, spec: ModelSpec):
        o = self.options
        shape = {f.name: getattr(o, f.name) for f in dataclasses.fields(GridShape)}
        shape["max_tasks"] = task_capacity(o.max_tasks, spec.info)
        grid = GridOptions(**shape, backbone=spec.to_dict() if o.backbone else None)
        self.model = PathNetModel(grid, spec.info, backbone=model if o.backbone else None)
        if not o.backbone:
            log.info("pathnet: the grid takes the raw input; model %r is not used (backbone = false)", spec.name)
        return self.model, ModelSpec("pathnet", opts.to_dict(grid), spec.info)

    @hookimpl
    def validate(self, run) -> None:
        others = set(run.strategies) - COMPATIBLE
        if others:
            raise ConfigError(
                "learner.strategies",
                f"pathnet protects past tasks by freezing their paths and does not compose with {sorted(others)}",
            )

    @hookimpl
    def on_run_start(self, run) -> None:
        self.optimizer = run.optimizer
        self.device = run.device
        self.rng = np.random.default_rng(run.seed + 104729)
        self.seen_tasks = torch.zeros(self.model.task_segment.shape[0], dtype=torch.bool, device=run.device)
        self.seen_classes = torch.zeros(self.model.num_classes, dtype=torch.bool, device=run.device)
        self._new_tournament()
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None

    def _new_tournament(self) -> None:
        o = self.options
        population = random_population(o.population, o.layers, o.active, o.modules, self.rng)
        self.tournament = Tournament(population, o.modules, o.tournament_batches, o.rate, self.rng)
        self.model.active_path = path_modules(self.tournament.genotype())

    # -- per batch --------------------------------------------------------------------------------
    @hookimpl
    def after_step(self, batch: Batch, outputs: torch.Tensor, first_pass: bool) -> None:
        if self.options.fitness == "accuracy":
            fitness = (outputs.argmax(dim=1) == batch.y).float().mean()
        else:
            fitness = -F.cross_entropy(outputs, batch.y)
        if first_pass:
            self.seen_classes.index_fill_(0, batch.y, True)
            if batch.task is not None:
                self.seen_tasks.index_fill_(0, batch.task, True)
        if self.tournament.record(fitness, compare=lambda a, b: bool(a >= b)):
            self.model.active_path = path_modules(self.tournament.genotype())

    # -- boundaries -------------------------------------------------------------------------------
    @hookimpl
    def on_boundary(self, experience, model) -> None:
        task = self.model.current
        best = self.tournament.genotype(self.tournament.best())
        task_ids = self.seen_tasks.nonzero().squeeze(1).tolist()
        classes = self.seen_classes.nonzero().squeeze(1).tolist()
        frozen = self.model.freeze(best, task_ids, classes)
        self._forget_in_optimizer(frozen, drop=True)
        self._forget_in_optimizer(self.model.reinitialize(), drop=False)
        self.seen_tasks.zero_()
        self.seen_classes.zero_()
        log.info(
            "pathnet: task %d frozen after %d tournaments: path %s (%d of %d modules now frozen)",
            task, self.tournament.state.completed, [list(m) for m in path_modules(best)],
            int(self.model.frozen.sum()), self.model.frozen.numel(),
        )
        self._new_tournament()

    def _forget_in_optimizer(self, params: list[torch.nn.Parameter], drop: bool) -> None:
        """Clear the optimizer state (momentum, Adam moments) of ``params``; with ``drop`` also remove them."""
        ids = {id(p) for p in params}
        for p in params:
            self.optimizer.state.pop(p, None)
        if drop:
            for group in self.optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.tournament is None:
            return dict(self._pending or {})
        return {"tournament": self.tournament.state_dict(), "seen_tasks": self.seen_tasks, "seen_classes": self.seen_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tournament is None:
            self._pending = state
            return
        self.tournament.load_state_dict(state["tournament"])
        self.seen_tasks.copy_(state["seen_tasks"])
        self.seen_classes.copy_(state["seen_classes"])
        self.model.active_path = path_modules(self.tournament.genotype())
