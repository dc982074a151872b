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
    tail_gap: int | None = None,
) -> ArrayStream:
    """Rows in source order, experience ``e`` being rows ``spans[e]`` (half-open), each with its own
    held-out test set, the rest trained on in source order. ``test_size = 0`` holds nothing out
    (prequential use). Sets ``info.experiences``.

    With ``tail_gap = None`` the test set is ``test_size`` of the experience's rows, stratified by
    label and drawn with ``seed`` (the same rows for the same seed and spans). With an integer it
    is the experience's last ``test_size`` rows, and the ``tail_gap`` rows before them are neither
    trained on nor tested: for sliding windows, the ones that share points with the first test
    window, so that no test point was ever trained on (see :func:`tail_split`)."""
    rng = np.random.default_rng(seed)
    train, test, where = {}, {}, {}
    for exp, (a, b) in enumerate(spans):
        rows = np.arange(a, b)
        if test_size > 0 and len(rows) > 1:
            if tail_gap is None:
                kept, held = (np.sort(part) for part in holdout(y[rows], test_size, rng))
            else:
                kept, held = tail_split(len(rows), test_size, tail_gap)
            test[exp] = (x[rows[held]], y[rows[held]], None)
            rows = rows[kept]
        train[exp] = (x[rows], y[rows], None)
        where[exp] = offsets[rows]
    info.experiences = list(range(len(spans)))
    return ArrayStream(info, train, test, batch_size, source, where)


def tail_split(n: int, test_size: float, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions kept for training and held out, of ``n`` rows in time order: the last
    ``ceil(test_size · n)`` rows (at least one) are held out, the ``gap`` rows before them are
    dropped, and whatever precedes is trained on (possibly nothing: a short experience is then
    only tested).

    >>> [part.tolist() for part in tail_split(10, 0.3, 2)]
    [[0, 1, 2, 3, 4], [7, 8, 9]]
    """
    held = min(n, max(1, int(np.ceil(test_size * n))))
    start = n - held
    return np.arange(max(0, start - gap)), np.arange(start, n)


def spans_of(n: int, per_experience: int) -> list[tuple[int, int]]:
    """``n`` rows cut into consecutive experiences of ``per_experience`` rows (the last may be
    shorter); 0: one experience."""
    if per_experience <= 0 or per_experience >= n:
        return [(0, n)]
    return [(a, min(a + per_experience, n)) for a in range(0, n, per_experience)]
