"""Genotypes and the binary tournament of PathNet (Fernando et al. 2017, section 2.1).

A genotype is an L × N matrix of module indices in [0, M): the modules each layer's path uses
(a repeated index uses that module once). A population of P genotypes evolves by binary
tournaments: two distinct genotypes are each trained for T minibatches, the loser is overwritten
by a copy of the winner, and every element of that copy is mutated with probability
``mutation_rate`` (the paper's 1/(L·N)) by an integer shift drawn uniformly from [−2, 2], wrapped
into [0, M).

Everything here is host-side and small (P·L·N integers): choosing a path never waits on the
device. The random generator is numpy's, seeded by the run, so a tournament sequence is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def random_population(size: int, layers: int, active: int, modules: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` genotypes, each layer's ``active`` indices distinct (a mutation may later repeat one)."""
    population = np.empty((size, layers, active), dtype=np.int64)
    for p in range(size):
        for layer in range(layers):
            population[p, layer] = rng.choice(modules, size=active, replace=False)
    return population


def mutate(genotype: np.ndarray, modules: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``genotype`` with each element shifted by U{−2..2} with probability ``rate``, wrapped."""
    hit = rng.random(genotype.shape) < rate
    shift = rng.integers(-2, 3, size=genotype.shape)
    return np.where(hit, (genotype + shift) % modules, genotype)


def path_modules(genotype: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The distinct modules of each layer, sorted: what a forward pass runs."""
    return tuple(tuple(sorted(set(int(m) for m in row))) for row in genotype)


@dataclass
class TournamentState:
    """Where the tournament stands: the pair, whose turn it is, and the minibatches trained so far."""

    pair: tuple[int, int] = (0, 1)
    turn: int = 0  # 0: the first genotype of the pair trains, 1: the second
    batches: int = 0  # minibatches the genotype in turn has trained
    winner: int | None = None  # the winner of the last completed tournament
    completed: int = 0  # tournaments completed in this task


class Tournament:
    """Runs the binary tournaments of one task over a population.

    The caller trains ``active`` for one minibatch, then calls :meth:`record` with the fitness
    contribution of that minibatch. Fitness values are whatever the caller accumulates (device
    tensors are fine): :meth:`record` only asks for a host decision when a tournament ends, every
    2·T minibatches, through ``compare(fitness_a, fitness_b) -> bool`` (True: a wins).
    """

    def __init__(self, population: np.ndarray, modules: int, batches: int, rate: float, rng: np.random.Generator):
        if len(population) < 1:
            raise ValueError("the population needs at least one genotype")
        self.population = population
        self.modules = modules
        self.batches = batches
        self.rate = rate
        self.rng = rng
        self.state = TournamentState()
        self.fitness: list[Any] = [None, None]  # accumulated fitness of the pair
        self.last_fitness: dict[int, float] = {}  # population index -> fitness of its last evaluation
        self._new_pair()

    @property
    def evolving(self) -> bool:
        return len(self.population) >= 2

    def _new_pair(self) -> None:
        if self.evolving:
            a, b = self.rng.choice(len(self.population), size=2, replace=False)
            self.state.pair = (int(a), int(b))
        else:
            self.state.pair = (0, 0)
        self.state.turn = 0
        self.state.batches = 0
        self.fitness = [None, None]

    @property
    def active(self) -> int:
        """The population index of the genotype that trains on the next minibatch."""
        return self.state.pair[self.state.turn]

    def genotype(self, index: int | None = None) -> np.ndarray:
        return self.population[self.active if index is None else index]

    def record(self, fitness: Any, compare) -> bool:
        """Add one minibatch's fitness for the active genotype; True when the active genotype changed."""
        turn = self.state.turn
        self.fitness[turn] = fitness if self.fitness[turn] is None else self.fitness[turn] + fitness
        self.state.batches += 1
        if not self.evolving or self.state.batches < self.batches:
            return False
        if turn == 0:
            self.state.turn = 1
            self.state.batches = 0
            return True
        a, b = self.state.pair
        fa, fb = torch.stack([torch.as_tensor(self.fitness[0]), torch.as_tensor(self.fitness[1])]).tolist()  # one host read
        a_wins = bool(compare(fa, fb))
        winner, loser = (a, b) if a_wins else (b, a)
        self.last_fitness[a], self.last_fitness[b] = fa, fb
        self.population[loser] = mutate(self.population[winner], self.modules, self.rate, self.rng)
        self.state.winner = winner
        self.state.completed += 1
        self._new_pair()
        return True

    def best(self) -> int:
        """The genotype to freeze: the last tournament's winner, else the one trained so far."""
        if self.state.winner is not None:
            return self.state.winner
        return self.state.pair[0]

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "population": torch.from_numpy(self.population.copy()),
            "pair": list(s.pair),
            "turn": s.turn,
            "batches": s.batches,
            "winner": -1 if s.winner is None else s.winner,
            "completed": s.completed,
            "rng": self.rng.bit_generator.state,
            # the pair's fitness so far, so a checkpoint mid-tournament resumes it exactly
            "fitness": [f for f in self.fitness],
            "last_fitness": {str(k): v for k, v in self.last_fitness.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        population = state["population"]
        if isinstance(population, torch.Tensor):
            population = population.cpu().numpy()
        self.population = np.asarray(population, dtype=np.int64).copy()
        s = self.state
        s.pair = (int(state["pair"][0]), int(state["pair"][1]))
        s.turn, s.batches, s.completed = int(state["turn"]), int(state["batches"]), int(state["completed"])
        s.winner = None if int(state["winner"]) < 0 else int(state["winner"])
        if "fitness" in state:
            self.fitness = list(state["fitness"])
            self.last_fitness = {int(k): float(v) for k, v in state.get("last_fitness", {}).items()}
        else:  # saved before the fitness was kept: a partly evaluated pair restarts its count
            self.fitness = [None, None]
            s.batches = 0
        self.rng.bit_generator.state = state["rng"]
