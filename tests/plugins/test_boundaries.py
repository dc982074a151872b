"""Boundary detectors carry their state through a checkpoint (plain JSON, no pickle) and, restored,
decide exactly as the uninterrupted detector does."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lifelong.host import PluginHost
from lifelong.types import Batch
from lifelong_boundaries import ExperienceChange, LossDrift, Window, WindowOptions
from lifelong_boundaries.drift import PAGE_HINKLEY_STATE, DriftOptions


def batch(experience: int) -> Batch:
    return Batch(x=torch.zeros(1, 2), y=torch.zeros(1, dtype=torch.long), experience=experience)


def through_json(state: dict) -> dict:
    """What a checkpoint does to the state: strict JSON out and back."""
    return json.loads(json.dumps(state, allow_nan=False))


def decisions(detector, steps) -> list[bool]:
    out = []
    for step in steps:
        out.append(step(detector))
    return out


def check_resume(make, steps):
    """For every cut point: the restored detector's remaining decisions equal the uninterrupted one's."""
    whole = decisions(make(), steps)
    assert any(whole), "the sequence should make the detector fire"
    for cut in range(len(steps) + 1):
        first = make()
        head = decisions(first, steps[:cut])
        resumed = make()
        resumed.load_state_dict(through_json(first.state_dict()))
        assert head + decisions(resumed, steps[cut:]) == whole, f"cut at {cut}"


def before(experience):
    return lambda detector: detector.before_batch(batch(experience))


def test_experience_change_resumes_with_the_last_experience_id():
    steps = [before(e) for e in [0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 3, 3]]
    check_resume(lambda: ExperienceChange(), steps)
    fresh = ExperienceChange()
    assert fresh.state_dict() == {"last": None}
    fresh.before_batch(batch(4))
    assert fresh.state_dict() == {"last": 4}


def test_window_resumes_with_its_count():
    steps = [before(0) for _ in range(23)]
    check_resume(lambda: Window(WindowOptions(batches=5)), steps)


def loss_drift_steps(seed: int) -> list:
    """Batches and loss reads as the kernel makes them: 3 batches per read, the loss jumping at new regimes."""
    rng = random.Random(seed)
    steps = []
    for level in (0.2, 2.5, 0.3, 3.0, 4.5):
        for _ in range(12):
            steps += [before(0)] * 3
            loss = level + rng.gauss(0, 0.05)
            steps.append(lambda detector, loss=loss: detector.observe({"loss": loss}))
    steps.append(lambda detector: detector.observe({"loss": float("nan")}))  # nothing trained since the last read
    return steps


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("min_batches", [9, 40])  # 40: the test also fires (and resets itself) between boundaries
def test_loss_drift_resumes_its_page_hinkley_test_bit_identically(seed, min_batches):
    options = DriftOptions(threshold=1.0, delta=0.005, warmup=2, min_batches=min_batches)
    steps = loss_drift_steps(seed)
    check_resume(lambda: LossDrift(options), steps)
    assert sum(decisions(LossDrift(options), steps)) >= (3 if min_batches == 9 else 1)


def test_the_loss_drift_state_is_everything_river_keeps():
    detector = LossDrift(DriftOptions(min_batches=0))
    state = detector.state_dict()
    assert state["page_hinkley"]["min_increase"] == "inf"  # river's initial value, kept in strict JSON
    assert through_json(state) == state
    for loss in (0.1, 0.2, 3.0):
        detector.observe({"loss": loss})
    # If a river release adds or renames state, this fails instead of a resumed run silently diverging.
    params = {"min_instances", "delta", "threshold", "alpha", "mode", "_test_drift", "_x_mean"}
    assert set(vars(detector._test)) == params | set(PAGE_HINKLEY_STATE)
    assert set(vars(detector._test._x_mean)) == {"n", "_mean"}


def test_the_loss_drift_help_names_page_hinkley():
    help_text = PluginHost().components["boundary_detector"]["loss-drift"].help
    assert "Page-Hinkley" in help_text and "ADWIN" not in help_text
