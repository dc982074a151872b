"""ACC, BWT, FWT and forgetting against matrices computed by hand."""

import math

import pytest
import torch

from lifelong import metrics

R = [
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.95],
]
B = [0.1, 0.05, 0.15]


def test_acc_is_the_mean_of_the_last_row():
    assert metrics.acc(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_bwt_compares_the_last_row_with_the_diagonal():
    assert metrics.bwt(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_fwt_compares_the_superdiagonal_with_the_initial_model():
    assert metrics.fwt(R, B) == pytest.approx(((0.1 - 0.05) + (0.3 - 0.15)) / 2)


def test_forgetting_is_the_drop_from_the_best_earlier_accuracy():
    # experience 0: best before the end 0.9, final 0.5; experience 1: best 0.8, final 0.7
    assert metrics.forgetting(R) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)


def test_unknown_entries_are_left_out_and_non_square_matrices_have_no_bwt_fwt():
    lazy = [[0.9, None], [0.7, 0.8]]
    assert metrics.fwt(lazy, [0.5, 0.5]) is None
    assert metrics.bwt(lazy) == pytest.approx(0.7 - 0.9)
    windowed = [[0.9, 0.2, 0.1], [0.8, 0.6, 0.2]]  # 2 generations, 3 experiences
    assert metrics.bwt(windowed) is None and metrics.fwt(windowed, [0, 0, 0]) is None
    assert metrics.acc(windowed) == pytest.approx((0.8 + 0.6 + 0.2) / 3)
    assert metrics.summarize([], [])["acc"] is None


def test_running_metrics_sum_on_the_device_and_reset_the_window():
    running = metrics.RunningMetrics(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    running.update(torch.tensor(0.5), logits, torch.tensor([0, 1, 1]))  # 2 of 3 right
    running.update(torch.tensor(1.0), logits[:1], torch.tensor([1]))  # 0 of 1 right
    first = running.read()
    assert first["loss"] == pytest.approx((0.5 * 3 + 1.0 * 1) / 4)
    assert first["prequential_accuracy"] == pytest.approx(2 / 4)
    second = running.read()
    assert math.isnan(second["loss"]) and second["prequential_accuracy"] == pytest.approx(0.5)


def test_generations_align_with_experiences_only_one_to_one_and_in_order():
    assert metrics.aligned([[0], [1], [2]], [0, 1, 2])
    assert metrics.aligned([[3], [7]], [3, 7])
    assert not metrics.aligned([[0], [1]], [0, 1, 2])  # a generation short
    assert not metrics.aligned([[0], [0, 1], [1, 2]], [0, 1, 2])  # windows straddling experiences
    assert not metrics.aligned([[0], [2], [1]], [0, 1, 2])  # out of order
    assert not metrics.aligned([[0], [0], [1]], [0, 1, 2])  # experience 0 cut in two
    assert not metrics.aligned([], [0])
    assert metrics.aligned([], [])


def test_window_like_spans_with_a_square_matrix_have_no_bwt_fwt_or_forgetting():
    # three windows over three experiences: the matrix is square by coincidence
    spans = [[0], [0, 1], [1, 2]]
    summary = metrics.summarize(R, B, metrics.aligned(spans, [0, 1, 2]))
    assert summary["bwt"] is None and summary["fwt"] is None and summary["forgetting"] is None
    assert summary["acc"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_aligned_spans_give_the_numbers():
    summary = metrics.summarize(R, B, metrics.aligned([[0], [1], [2]], [0, 1, 2]))
    assert summary == {
        "acc": pytest.approx((0.5 + 0.7 + 0.95) / 3),
        "bwt": pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2),
        "fwt": pytest.approx(((0.1 - 0.05) + (0.3 - 0.15)) / 2),
        "forgetting": pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2),
    }
    assert metrics.summarize(R, B) == summary  # the default, until the pipeline passes aligned


def test_recent_prequential_accuracy_covers_the_last_windows_only():
    running = metrics.RunningMetrics(torch.device("cpu"), recent_samples=20)
    right, wrong = torch.tensor([[0.0, 1.0]] * 10), torch.tensor([[1.0, 0.0]] * 10)
    targets = torch.ones(10, dtype=torch.long)
    for outputs in (right, right, right, wrong, wrong):  # five windows of 10 samples
        running.update(torch.tensor(0.5), outputs, targets)
        values = running.read()
    assert values["prequential_accuracy"] == pytest.approx(0.6)
    assert values["prequential_accuracy_recent"] == 0.0  # the last 20 samples were all wrong
    restored = metrics.RunningMetrics(torch.device("cpu"), recent_samples=20)
    restored.load_state_dict(running.state_dict())
    restored.update(torch.tensor(0.5), right, targets)
    assert restored.read()["prequential_accuracy_recent"] == pytest.approx(0.5)


def test_eval_keep_evaluates_only_the_newest_held_out_sets(run):
    summary, _ = run(["learner.eval_keep=2", "learner.epochs=1"])
    last = summary["accuracy_matrix"][-1]
    assert sum(v is not None for v in last) == 2


def test_running_metrics_fold_steps_in_chunks_to_the_same_sums_and_survive_a_checkpoint_mid_chunk():
    """Steps are summed every FOLD steps and at the read: across chunk edges, batch sizes that change,
    skipped steps and extra-epoch steps, the read equals the sums taken step by step; a state taken
    between folds restores to the same read."""
    rng = torch.Generator().manual_seed(0)
    steps = []
    for i in range(2 * metrics.FOLD + 9):
        n = 5 if i % 17 else 3  # a run of equal sizes, then a short batch
        outputs, targets = torch.randn(n, 4, generator=rng), torch.randint(0, 4, (n,), generator=rng)
        loss = torch.tensor(float("nan") if i in (7, 100) else 0.1 * i)
        steps.append((loss, outputs, targets, torch.tensor(1.0 if i in (7, 14, 100, 101) else 0.0), i % 11 != 3))
    running, restored = metrics.RunningMetrics(torch.device("cpu")), metrics.RunningMetrics(torch.device("cpu"))
    for k, (loss, outputs, targets, found, counted) in enumerate(steps):
        running.update(loss, outputs, targets, found, counted=counted)
        if k == metrics.FOLD + 20:  # unfolded steps in hand
            restored.load_state_dict(running.state_dict())
    for loss, outputs, targets, found, counted in steps[metrics.FOLD + 21 :]:
        restored.update(loss, outputs, targets, found, counted=counted)
    counted = [(lo, o, t, f) for lo, o, t, f, c in steps if c]
    n = sum(len(t) for _, _, t, _ in counted)
    loss = sum(float(lo) * len(t) for lo, _, t, f in counted if not f)
    correct = sum(int((o.argmax(1) == t).sum()) for _, o, t, f in counted if not f)
    for read in (running.read(), restored.read()):
        assert read["loss"] == pytest.approx(loss / n, rel=1e-12)
        assert read["window_accuracy"] == correct / n
        assert read["skipped_in_window"] == [i for i, (*_, f) in enumerate(counted) if f]
        assert read["skipped_steps"] == 4  # step 14 was an extra epoch's: counted, not listed
