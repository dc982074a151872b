"""Experiences of consecutive rows, each with its own held-out test set: how ``shuttle`` and ``windows`` cut a series."""

from __future__ import annotations

import numpy as np

from lifelong.types import StreamInfo
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import holdout


def ordered_experiences(
    info: StreamInfo,
    x: np.ndarray,
    y: np.ndarray,
    offsets: np.ndarray,
    spans: list[tuple[int, int]],
    test_size: float,
    seed: int,
    batch_size: int,
    source: str,
) -> ArrayStream:
    """Rows in source order, experience ``e`` being rows ``spans[e]`` (half-open), each with its own
    held-out test set: ``test_size`` of the experience's rows, stratified by label and drawn with
    ``seed`` (the same rows for the same seed and spans), the rest trained on in source order.
    ``test_size = 0`` holds nothing out (prequential use). Sets ``info.experiences``."""
    rng = np.random.default_rng(seed)
    train, test, where = {}, {}, {}
    for exp, (a, b) in enumerate(spans):
        rows = np.arange(a, b)
        if test_size > 0 and len(rows) > 1:
            kept, held = (np.sort(part) for part in holdout(y[rows], test_size, rng))
            test[exp] = (x[rows[held]], y[rows[held]], None)
            rows = rows[kept]
        train[exp] = (x[rows], y[rows], None)
        where[exp] = offsets[rows]
    info.experiences = list(range(len(spans)))
    return ArrayStream(info, train, test, batch_size, source, where)


def spans_of(n: int, per_experience: int) -> list[tuple[int, int]]:
    """``n`` rows cut into consecutive experiences of ``per_experience`` rows (the last may be
    shorter); 0: one experience."""
    if per_experience <= 0 or per_experience >= n:
        return [(0, n)]
    return [(a, min(a + per_experience, n)) for a in range(0, n, per_experience)]
