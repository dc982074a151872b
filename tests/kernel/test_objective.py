"""The detection objective: ranking metrics against scikit-learn, the kernel's loss, the filter and memories."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from lifelong import ranking
from lifelong.learner import Learner, build_optimizer
from lifelong.metrics import RunningMetrics
from lifelong.objective import NO_LABEL, Detection, is_detector, kept
from lifelong.types import Batch, StreamInfo
from lifelong_strategies.ewc import fisher_diagonal
from lifelong_strategies.replay import Replay, ReplayOptions


class TinyDetector(torch.nn.Module):
    """A linear autoencoder: score = squared reconstruction error; filter = score above the threshold."""

    def __init__(self, features: int = 4, threshold: float = float("inf")):
        super().__init__()
        self.encode = torch.nn.Linear(features, 2)
        self.decode = torch.nn.Linear(2, features)
        self.register_buffer("threshold", torch.tensor(threshold))

    def forward(self, x):
        return self.decode(self.encode(x))

    def sample_loss(self, x, outputs):
        return (outputs - x).square().mean(dim=1)

    def anomaly_score(self, x, outputs):
        return (outputs - x).square().mean(dim=1)

    def sample_weights(self, x, scores):
        return (scores <= self.threshold).float()


# -- ranking metrics --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_roc_and_pr_auc_match_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounded: many ties
    assert ranking.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert ranking.pr_auc(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_ranking_metrics_are_undefined_on_one_class_and_ignore_missing_labels():
    assert ranking.roc_auc([0.1, 0.2], [0, 0]) is None
    assert ranking.pr_auc([0.1, 0.2], [1, 1]) is None
    # samples without a label (-1) are not counted
    assert ranking.roc_auc([0.1, 0.9, 5.0], [0, 1, NO_LABEL]) == 1.0


def test_threshold_figures_count_flags_above_the_threshold():
    stats = ranking.at_threshold([0.1, 0.2, 0.9, 0.3, 0.8], [0, 0, 1, 1, 0], threshold=0.5)
    # flags: 0.9 (anomaly, TP), 0.8 (normal, FP); missed: 0.3 (FN); normals 0.1 0.2 (TN)
    assert stats["precision"] == 0.5 and stats["recall"] == 0.5
    assert stats["false_alarm_rate"] == pytest.approx(1 / 3)
    assert stats["f1"] == pytest.approx(0.5)


def test_the_streaming_histogram_auc_is_close_to_the_exact_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    # reconstruction errors: small positive numbers spread over decades
    scores = np.exp(3 * rng.normal(size=5000) + 2.0 * labels - 8)
    histogram = ranking.ScoreHistogram(torch.device("cpu"))
    for start in range(0, 5000, 64):
        histogram.add(torch.tensor(scores[start : start + 64]), torch.tensor(labels[start : start + 64]))
    histogram.add(torch.tensor([1e9, 0.5]), torch.tensor([NO_LABEL, NO_LABEL]))  # not counted
    assert histogram.auc() == pytest.approx(roc_auc_score(labels, scores), abs=0.002)
    assert int(histogram.counts[: 2 * ranking.BINS].sum()) == 5000


# -- the kernel's loss and metrics for a detector -----------------------------------------------------
def test_a_detector_trains_on_its_own_loss_without_labels():
    torch.manual_seed(0)
    model = TinyDetector()
    assert is_detector(model)
    optimizer = build_optimizer("adam", list(model.parameters()), 0.01, 0.0, 0.0)
    hooks = SimpleNamespace(
        augment_batch=lambda batch: [], extra_loss=lambda **kw: [], before_optimizer_step=lambda **kw: None,
        after_step=lambda **kw: None,
    )
    learner = Learner(model, optimizer, hooks, torch.device("cpu"))
    x = torch.randn(64, 2) @ torch.randn(2, 4)  # rank-2 data: a 2-d bottleneck reconstructs it
    batch = Batch(x=x, y=torch.full((64,), NO_LABEL))
    before = model.sample_loss(x, model(x)).mean().item()
    for _ in range(300):
        learner.step(Batch(x=x, y=batch.y))
    after = model.sample_loss(x, model(x)).mean().item()
    assert after < 0.05 * before
    read = learner.metrics.read()
    assert "prequential_accuracy" not in read and np.isnan(read["prequential_roc_auc"])  # no labelled sample


def test_the_filter_keeps_samples_above_the_threshold_out_of_the_loss():
    model = TinyDetector(threshold=1.0)
    x = torch.zeros(4, 4)
    x[3] = 100.0  # scores far above the threshold
    outputs = model(x)
    loss, weights, scores = Detection().loss(model, Batch(x=x, y=torch.full((4,), NO_LABEL)), outputs)
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.0]
    expected = model.sample_loss(x[:3], outputs[:3]).mean()
    assert loss.item() == pytest.approx(expected.item())


def test_prequential_roc_auc_counts_labelled_pre_update_scores():
    metrics = RunningMetrics(torch.device("cpu"), detector=True)
    metrics.update(torch.tensor(1.0), torch.zeros(4, 4), torch.tensor([0, 0, 1, 1]), scores=torch.tensor([0.1, 0.2, 0.9, 0.8]))
    assert metrics.read()["prequential_roc_auc"] == 1.0


# -- memories never store a sample the filter left out --------------------------------------------------
def test_kept_replaces_left_out_samples_with_kept_ones_of_the_batch():
    x = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 4)
    batch = Batch(x=x, y=torch.full((8,), NO_LABEL), weight=torch.tensor([1, 1, 0, 1, 0, 1, 1, 0.0]))
    stored = kept(batch)
    assert len(stored) == 8
    rows = set(stored.x[:, 0].tolist())
    assert rows <= {0.0, 1.0, 3.0, 5.0, 6.0}
    assert stored.x[[0, 1, 3, 5, 6], 0].tolist() == [0.0, 1.0, 3.0, 5.0, 6.0]  # kept samples keep their place


def test_replay_memory_holds_no_injected_anomaly():
    torch.manual_seed(0)
    replay = Replay(ReplayOptions(memory=50, replay_batch=8, fill="stream"))
    replay.on_run_start(SimpleNamespace(info=StreamInfo((4,), 2, labels=False), device=torch.device("cpu"), seed=0))
    for _ in range(40):
        x = torch.randn(16, 4)
        anomalous = torch.rand(16) < 0.2
        x[anomalous] = 1000.0  # injected anomalies, scored above the threshold by the filter
        replay.after_step(Batch(x=x, y=torch.full((16,), NO_LABEL), weight=(~anomalous).float()), None, first_pass=True)
    memory = replay.buffer.x[: replay.filled]
    assert replay.filled == 50
    assert memory.abs().max().item() < 100.0  # not one anomaly stored
    # without the weights (the filter off) they would be: the same stream stores some
    replay2 = Replay(ReplayOptions(memory=50, replay_batch=8, fill="stream"))
    replay2.on_run_start(SimpleNamespace(info=StreamInfo((4,), 2, labels=False), device=torch.device("cpu"), seed=0))
    x = torch.full((64, 4), 1000.0)
    replay2.after_step(Batch(x=x, y=torch.full((64,), NO_LABEL)), None, first_pass=True)
    assert replay2.buffer.x[: replay2.filled].abs().max().item() == 1000.0


def test_replay_refuses_class_balanced_for_a_detector():
    replay = Replay(ReplayOptions(policy="class-balanced"))
    run = SimpleNamespace(info=StreamInfo((4,), 2, labels=False), device=torch.device("cpu"), model=TinyDetector())
    with pytest.raises(ValueError, match="class-balanced"):
        replay.validate(run)


# -- EWC's Fisher of a reconstruction loss ----------------------------------------------------------------
def test_ewc_fisher_of_a_detector_is_the_empirical_fisher_of_its_loss():
    torch.manual_seed(0)
    model = TinyDetector()
    x = torch.randn(6, 4)
    fisher = fisher_diagonal(model, x, None, None)
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(6):  # per-sample gradients by hand
        model.zero_grad()
        model.sample_loss(x[i : i + 1], model(x[i : i + 1])).sum().backward()
        for name, p in model.named_parameters():
            expected[name] += p.grad.square() / 6
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-7)
    assert any(f.abs().sum() > 0 for f in fisher.values())
