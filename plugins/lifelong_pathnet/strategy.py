"""The ``pathnet`` strategy: evolve paths by tournament while training, freeze the best at each boundary.

On a stream (Fernando et al. 2017 train on labelled tasks; here a task ends at whatever boundary the
pipeline reports: an experience change, a window, a drift detector):

1. ``wrap_model`` replaces the pipeline's model by a :class:`~lifelong_pathnet.grid.PathNetModel`
   (with ``backbone = true`` the pipeline's model becomes its frozen layer 0).
2. Every minibatch trains the genotype whose turn it is in the current binary tournament; its
   fitness is read off that same minibatch's pre-update outputs (accuracy, the paper's measure, or
   negative loss), so evaluating a genotype costs no extra forward pass. The host learns the winner
   once per tournament (every 2·T minibatches), the only device read PathNet adds.
3. At a boundary the best genotype first *settles*: it trains alone for ``settle`` minibatches on
   the task's memory (the last ``memory`` first-pass samples of the task, kept on the device).
   A tournament shares a task's minibatches among many genotypes, so on a short experience the
   winner has had only a fraction of them; the paper trained each task until 99.8 % training
   accuracy, which a stream cannot ask for. Then its modules and the task's head are frozen:
   ``requires_grad`` off and removed from the optimizer with their optimizer state, so no update
   can touch them (and later tasks' paths may read them: the transfer). Every other module is
   re-initialised and the population is drawn afresh.
4. For task-free prediction the task classifier (the grid's ``oracle``) is retrained on
   ``oracle_memory`` samples of every finished task, stored by the strategy (its only memory of
   past tasks; no path ever trains on it).

The optimizer is the learner's, at ``lr`` when given, else ``learner.lr``: the learner's defaults
(Adam, 1e-3) are what docs/pathnet.md measures (the paper's SGD at 0.05 only as a transfer
candidate there). PathNet
protects by construction, so it does not compose with other strategies (replay would train old
samples through the new path and head).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lifelong import hookimpl, resources
from lifelong import options as opts
from lifelong.errors import ConfigError
from lifelong.learner import attach_nonfinite_flag, build_optimizer, flag_nonfinite
from lifelong.types import Batch, ModelSpec
from lifelong_pathnet.evolution import Tournament, path_modules, random_population
from lifelong_pathnet.grid import GridOptions, GridShape, PathNetModel, module_count, task_capacity
from lifelong_pathnet.memory import Exemplars, TaskMemory

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
    settle: int = field(default=300, metadata={"help": "minibatches the winning path trains alone on the task's memory before it is frozen; 0: freeze the last winner as it is (the paper)"})
    memory: int = field(default=2000, metadata={"help": "the current task's last first-pass samples kept on the device for settling"})
    oracle_memory: int = field(default=40, metadata={"help": "samples kept per finished task to train the task classifier (oracle = 'classifier')"})
    oracle_steps: int = field(default=300, metadata={"help": "minibatches of 64 the task classifier trains at each boundary"})

    def check(self) -> None:
        super().check()
        if self.population < 1 or self.tournament_batches < 1:
            raise ValueError("population and tournament_batches must be at least 1")
        for name in ("settle", "oracle_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("memory", "oracle_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
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
        self.modules = options.modules  # resolved from the stream when 0 (module_count)
        self._pending: dict[str, Any] | None = None

    # -- building ---------------------------------------------------------------------------------
    @hookimpl
    def wrap_model(self, model: torch.nn.Module, spec: ModelSpec):
        o = self.options
        shape = {f.name: getattr(o, f.name) for f in dataclasses.fields(GridShape)}
        shape["max_tasks"] = task_capacity(o.max_tasks, spec.info)
        shape["modules"] = self.modules = module_count(o, spec.info)  # stored resolved: a rebuild needs no stream
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
        o = self.options
        per_sample = resources.elements(run.info.input_shape) * resources.FLOAT_BYTES + 8
        exemplars = o.oracle_memory * task_capacity(o.max_tasks, run.info) if o.oracle == "classifier" else 0
        current = o.memory if self._keeps_memory else 0
        resources.require(
            (current + exemplars) * per_sample,
            f"pathnet's memory of {current:,} samples of the current task and {exemplars:,} stored for the task classifier",
            "strategy.pathnet.memory",
            run.device,
        )

    @property
    def _keeps_memory(self) -> bool:
        """Whether the task's samples are needed at its boundary: to settle on, or to pick the classifier's from."""
        return self.options.settle > 0 or self.options.oracle == "classifier"

    @hookimpl
    def on_run_start(self, run) -> None:
        self.optimizer = run.optimizer
        self.device = run.device
        self.rng = np.random.default_rng(run.seed + 104729)
        self.seen_tasks = torch.zeros(self.model.task_segment.shape[0], dtype=torch.bool, device=run.device)
        self.seen_classes = torch.zeros(self.model.num_classes, dtype=torch.bool, device=run.device)
        self.batch_size = run.learner.batch_size
        self.memory = TaskMemory(self.options.memory, run.device)
        self.exemplars = Exemplars(self.options.oracle_memory, run.device)
        self._new_tournament()
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None

    def _new_tournament(self) -> None:
        o = self.options
        population = random_population(o.population, o.layers, o.active, self.modules, self.rng)
        self.tournament = Tournament(population, self.modules, o.tournament_batches, o.rate, self.rng)
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
            if self._keeps_memory:
                self.memory.offer(batch.x, batch.y)
        if self.tournament.record(fitness, compare=lambda a, b: bool(a >= b)):
            self.model.active_path = path_modules(self.tournament.genotype())

    # -- boundaries -------------------------------------------------------------------------------
    @hookimpl
    def on_boundary(self, experience, model) -> None:
        task = self.model.current
        best = self.tournament.genotype(self.tournament.best())
        # one generator per boundary, seeded from the saved numpy one: a resumed run draws the same
        generator = torch.Generator(device=self.device).manual_seed(int(self.rng.integers(2**62)))
        settled = self._settle(best, generator)
        task_ids = self.seen_tasks.nonzero().squeeze(1).tolist()
        classes = self.seen_classes.nonzero().squeeze(1).tolist()
        frozen = self.model.freeze(best, task_ids, classes)
        self._forget_in_optimizer(frozen, drop=True)
        self._forget_in_optimizer(self.model.reinitialize(), drop=False)
        if self.model.oracle is not None:
            self.exemplars.add(task, self.memory, generator)
            self._train_oracle(generator)
        self.memory.clear()
        self.seen_tasks.zero_()
        self.seen_classes.zero_()
        log.info(
            "pathnet: task %d frozen after %d tournaments and %d settling minibatches: path %s (%d of %d modules now frozen)",
            task, self.tournament.state.completed, settled,
            [list(m) for m in path_modules(best)], int(self.model.frozen.sum()), self.model.frozen.numel(),
        )
        self._warn_if_modules_run_out()
        self._new_tournament()

    def _warn_if_modules_run_out(self) -> None:
        """Say so when a layer has fewer unfrozen modules than a path uses: the next task must learn
        through frozen ones (``modules`` counts the stream's experiences, and a window or drift
        detector may report more boundaries than that)."""
        free = int((~self.model.frozen).sum(dim=1).min())  # one host read per boundary
        if free < self.options.active:
            log.warning(
                "pathnet: after task %d a layer has %d unfrozen module(s) of %d and a path uses %d: later tasks learn "
                "mostly through frozen modules; set strategy.pathnet.modules higher (now %d)",
                self.model.current - 1, free, self.modules, self.options.active, self.modules,
            )

    def _settle(self, genotype: np.ndarray, generator: torch.Generator) -> int:
        """Train ``genotype``'s path and the task's head alone on the task's memory, before freezing them.

        The learner's optimizer updates them (the same state the stream's minibatches built), and
        a minibatch whose loss or gradients are not finite is skipped on the device, as the learner
        skips one (:func:`lifelong.learner.flag_nonfinite`). Returns the minibatches trained.
        """
        n = self.memory.filled
        if not n or not self.options.settle:
            return 0
        model = self.model
        model.active_path = path_modules(genotype)
        model.train()

        def loss() -> torch.Tensor:
            x, y = self.memory.gather(torch.randint(n, (min(self.batch_size, n),), generator=generator, device=self.device))
            return F.cross_entropy(model(x), y)

        self._guarded_steps(self.optimizer, self.options.settle, loss)
        return self.options.settle

    def _train_oracle(self, generator: torch.Generator) -> None:
        """Retrain the task classifier on the stored samples of every finished task: its own Adam on
        its own parameters, with the learner's non-finite guard (a stored sample that overflows
        skips the update instead of turning the classifier into NaN)."""
        oracle, x, task = self.model.oracle, self.exemplars.x, self.exemplars.task
        if x is None:
            return
        params = list(oracle.parameters())
        for p in params:
            p.requires_grad_(True)
        adam = build_optimizer("adam", params, 1e-3, 0.0, 0.0)
        attach_nonfinite_flag(adam, torch.zeros((), device=self.device))

        def loss() -> torch.Tensor:
            pick = torch.randint(len(task), (min(64, len(task)),), generator=generator, device=self.device)
            return F.nll_loss(self.model.task_scores(x.index_select(0, pick)), task.index_select(0, pick))

        self._guarded_steps(adam, self.options.oracle_steps, loss)
        for p in params:
            p.requires_grad_(False)
        self.model.oracle_trained(self.model.current)

    def _guarded_steps(self, optimizer: Any, steps: int, loss_of) -> None:
        """``steps`` updates of ``optimizer``, each on the loss ``loss_of()`` returns for a fresh minibatch.
        When the optimizer reads a ``found_inf`` flag (:func:`lifelong.learner.attach_nonfinite_flag`),
        an update whose loss or gradients are not finite is skipped on the device, with no host read."""
        found = getattr(optimizer, "found_inf", None)
        unit = torch.ones((), device=self.device)
        for _ in range(steps):
            loss = loss_of()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if found is not None:
                flag_nonfinite(optimizer, loss, found, unit)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # no gradient outlives the boundary

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
        return {
            "tournament": self.tournament.state_dict(), "seen_tasks": self.seen_tasks, "seen_classes": self.seen_classes,
            "memory": self.memory.state_dict(), "exemplars": self.exemplars.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tournament is None:
            self._pending = state
            return
        self.tournament.load_state_dict(state["tournament"])
        self.seen_tasks.copy_(state["seen_tasks"])
        self.seen_classes.copy_(state["seen_classes"])
        if "memory" in state:  # saved before pathnet kept memories: the task settles on what it sees from now on
            self.memory.load_state_dict(state["memory"])
            self.exemplars.load_state_dict(state["exemplars"])
        self.model.active_path = path_modules(self.tournament.genotype())
