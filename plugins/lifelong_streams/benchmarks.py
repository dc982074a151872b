"""Split and permuted benchmarks in the three scenarios, over any labelled image array.

Split: the classes are divided into ``experiences`` groups, one per experience. Permuted: every
experience sees all classes through its own fixed pixel permutation (experience 0 unpermuted).
Scenario (van de Ven & Tolias 2019, "Three scenarios for continual learning"):

- ``class``: one head over all classes seen (split: the original labels; permuted: label +
  classes × experience);
- ``task``: one head per experience, labels local to the experience, the task id given;
- ``domain``: one head shared by all experiences, labels local to the experience, no task id.

Held-out data: by default a stratified random ``test_fraction`` of every class. A data set with an
official test set (Fashion-MNIST) passes ``split=(train_index, test_index)`` instead; everything
else (class groups, labels, permutations) is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lifelong.types import StreamInfo
from lifelong_streams.arrays import ArrayStream


@dataclass
class SplitOptions:
    scenario: Literal["class", "task", "domain"] = field(default="class", metadata={"help": "class, task or domain incremental"})
    experiences: int = field(default=5, metadata={"help": "number of experiences the classes are split into"})
    test_fraction: float = field(default=0.25, metadata={"help": "held-out share of each class, for the accuracy matrix"})
    class_order: list[int] | None = field(default=None, metadata={"help": "class order before splitting; default ascending"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle samples within each experience"})

    def check(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.experiences < 1:
            raise ValueError(f"experiences must be at least 1, got {self.experiences}")


MAX_PERMUTATIONS = 1000


@dataclass
class PermutedOptions:
    scenario: Literal["class", "task", "domain"] = field(default="domain", metadata={"help": "class, task or domain incremental"})
    experiences: int = field(default=5, metadata={"help": "number of permutations (experience 0 is the identity)"})
    test_fraction: float = field(default=0.25, metadata={"help": "held-out share of each class"})
    shuffle: bool = True

    def check(self) -> None:
        SplitOptions.check(self)  # type: ignore[arg-type]
        # each permutation is a full copy of the data set in memory: bound it before anything is built
        if self.experiences > MAX_PERMUTATIONS:
            raise ValueError(f"experiences must be at most {MAX_PERMUTATIONS} (each is a permuted copy of the data), got {self.experiences}")


def holdout(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test index split: ``fraction`` of every class held out."""
    train, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = max(1, int(round(len(idx) * fraction)))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.concatenate(train), np.concatenate(test)


def train_test(
    y: np.ndarray, fraction: float, rng: np.random.Generator, split: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The given ``(train_index, test_index)`` into ``y``, or else a random hold-out of ``fraction``."""
    if split is None:
        return holdout(y, fraction, rng)
    train_idx, test_idx = (np.asarray(idx, dtype=np.int64) for idx in split)
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("split: the train and test indices overlap")
    return train_idx, test_idx


def split_stream(
    x: np.ndarray,
    y: np.ndarray,
    options: SplitOptions,
    batch_size: int,
    seed: int,
    source: str,
    split: tuple[np.ndarray, np.ndarray] | None = None,
) -> ArrayStream:
    """Experiences of disjoint class groups. ``split``: optional (train, test) indices into x, y."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    order = np.array(options.class_order) if options.class_order is not None else classes
    if sorted(order.tolist()) != classes.tolist():
        raise ValueError(f"class_order must be a permutation of the classes {classes.tolist()}, got {order.tolist()}")
    if options.experiences > len(classes):
        raise ValueError(f"experiences ({options.experiences}) exceeds the number of classes ({len(classes)})")
    groups = np.array_split(order, options.experiences)
    per_task = max(len(g) for g in groups)
    train_idx, test_idx = train_test(y, options.test_fraction, rng, split)
    train, test, offsets = {}, {}, {}
    for exp, group in enumerate(groups):
        local = {int(c): i for i, c in enumerate(group)}
        for part, idx, out in (("train", train_idx, train), ("test", test_idx, test)):
            chosen = idx[np.isin(y[idx], group)]
            if part == "train":
                chosen = rng.permutation(chosen) if options.shuffle else np.sort(chosen)
                offsets[exp] = chosen
            labels = y[chosen]
            if options.scenario != "class":
                labels = np.array([local[int(c)] for c in labels], dtype=np.int64)
            task = np.full(len(chosen), exp) if options.scenario == "task" else None
            out[exp] = (x[chosen], labels, task)
    num_classes = len(classes) if options.scenario == "class" else per_task
    names = [str(c) for c in classes] if options.scenario == "class" else None
    info = StreamInfo(
        input_shape=tuple(x.shape[1:]),
        num_classes=num_classes,
        scenario=options.scenario,
        num_tasks=options.experiences if options.scenario == "task" else 1,
        experiences=list(range(options.experiences)),
        class_names=names,
    )
    return ArrayStream(info, train, test, batch_size, source, offsets)


def permuted_stream(
    x: np.ndarray,
    y: np.ndarray,
    options: PermutedOptions,
    batch_size: int,
    seed: int,
    source: str,
    split: tuple[np.ndarray, np.ndarray] | None = None,
) -> ArrayStream:
    """All classes per experience, each under its own pixel permutation. ``split`` as in split_stream."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    n_classes = len(classes)
    flat = x.reshape(len(x), -1)
    train_idx, test_idx = train_test(y, options.test_fraction, rng, split)
    train, test, offsets = {}, {}, {}
    for exp in range(options.experiences):
        perm = np.arange(flat.shape[1]) if exp == 0 else rng.permutation(flat.shape[1])
        for part, idx, out in (("train", train_idx, train), ("test", test_idx, test)):
            chosen = rng.permutation(idx) if (part == "train" and options.shuffle) else np.sort(idx)
            if part == "train":
                offsets[exp] = chosen
            images = flat[chosen][:, perm].reshape((len(chosen), *x.shape[1:]))
            labels = y[chosen] + (n_classes * exp if options.scenario == "class" else 0)
            task = np.full(len(chosen), exp) if options.scenario == "task" else None
            out[exp] = (images, labels, task)
    info = StreamInfo(
        input_shape=tuple(x.shape[1:]),
        num_classes=n_classes * options.experiences if options.scenario == "class" else n_classes,
        scenario=options.scenario,
        num_tasks=options.experiences if options.scenario == "task" else 1,
        experiences=list(range(options.experiences)),
    )
    return ArrayStream(info, train, test, batch_size, source, offsets)
