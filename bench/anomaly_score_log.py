"""A bench-only plugin for bench/anomaly.py's plot: the strategy ``score-log`` records every stream
batch's pre-update anomaly scores and the threshold at every boundary.

It reads the device every batch, so it is used only in the run that draws the plot, never in a
timed one. Loaded with ``PluginHost(plugins=["anomaly_score_log"])`` (bench/ on ``sys.path``).
"""

from __future__ import annotations

import numpy as np

import lifelong


class ScoreLog:
    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.thresholds: list[tuple[int, float]] = []  # (stream records seen, threshold after that boundary)
        self.seen = 0
        self.model = None

    @lifelong.hookimpl
    def on_run_start(self, run) -> None:
        self.model = run.model

    @lifelong.hookimpl
    def after_step(self, batch, outputs, first_pass) -> None:
        if first_pass:
            self.scores.append(self.model.anomaly_score(batch.x, outputs).cpu().numpy())
            self.seen += len(batch)

    @lifelong.hookimpl
    def on_boundary(self) -> None:  # the model's own hook, which recalibrates the threshold, runs first
        self.thresholds.append((self.seen, float(self.model.threshold)))


LOG = ScoreLog()


@lifelong.hookimpl
def register_strategies(register):
    register("score-log", lambda options: LOG, help="bench only: records pre-update scores and thresholds")
