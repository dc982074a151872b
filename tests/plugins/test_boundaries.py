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


# -- windows of seconds ------------------------------------------------------------------------------------
class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def timed_window(clock: Clock, **options) -> Window:
    window = Window(WindowOptions(**options))
    window.clock = clock
    return window


def arrivals(window: Window, clock: Clock, times: list[float], offset: float = 0.0) -> list[bool]:
    out = []
    for t in times:
        clock.now = t + offset
        out.append(window.before_batch(batch(0)))
    return out


# a burst, a pause longer than a window, a slow trickle: boundaries before the batches at 10.0, 25.0 and 35.0
TIMES = [0.0, 1.0, 2.0, 9.9, 10.0, 11.0, 25.0, 26.0, 30.0, 34.0, 34.9, 35.0, 36.0]
EXPECTED = [False, False, False, False, True, False, True, False, False, False, False, True, False]


def test_a_window_of_seconds_ends_before_the_first_batch_that_arrives_after_it():
    clock = Clock()
    assert arrivals(timed_window(clock, batches=0, seconds=10.0), clock, TIMES) == EXPECTED


def test_batches_and_seconds_combined_whichever_comes_first_restarts_both():
    clock = Clock()
    window = timed_window(clock, batches=3, seconds=10.0)
    #            batch 3 of the window ↓        time ↓ (2 batches in)    batch 3 ↓ (the count restarted at 25)
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 25.0, 26.0, 27.0, 28.0]
    assert arrivals(window, clock, times) == [False, False, False, True, False, True, False, False, True]


def test_a_window_of_seconds_resumes_with_its_elapsed_time_not_the_time_it_was_down():
    """Cut after every batch: the state goes through JSON into a detector whose clock reads 1000 s
    later (the run was down that long), loaded right away; the decisions that follow are the
    uninterrupted ones. A detector that kept clock readings would end the window at once."""
    for cut in range(1, len(TIMES)):
        clock = Clock()
        first = timed_window(clock, batches=0, seconds=10.0)
        head = arrivals(first, clock, TIMES[:cut])
        state = through_json(first.state_dict())  # the checkpoint, taken as the batch at TIMES[cut - 1] ends
        later = Clock(TIMES[cut - 1] + 1000.0)
        resumed = timed_window(later, batches=0, seconds=10.0)
        resumed.load_state_dict(state)
        assert head + arrivals(resumed, later, TIMES[cut:], offset=1000.0) == EXPECTED, f"cut at {cut}"


def test_the_window_reads_a_checkpoint_from_before_time_windows():
    uninterrupted = Window(WindowOptions(batches=5))
    expected = decisions(uninterrupted, [before(0)] * 23)
    for seen in range(24):
        resumed = Window(WindowOptions(batches=5))
        resumed.load_state_dict({"seen": seen})  # the state's old form: batches since the start
        assert expected[:seen] + decisions(resumed, [before(0)] * (23 - seen)) == expected, f"seen {seen}"


@pytest.mark.parametrize(
    "options, message",
    [({"batches": 0}, "set batches or seconds"), ({"seconds": -1.0}, "0 or more"), ({"batches": -2}, "0 or more")],
)
def test_window_options_need_batches_or_seconds(options, message):
    with pytest.raises(ValueError, match=message):
        WindowOptions(**options).check()


def test_a_pipeline_ends_generations_by_seconds(tmp_path):
    """The real loop, with a clock that advances 1 s per reading: windows of 4 s (batches off)."""
    from lifelong import config, pipeline
    from tests.conftest import QUIET

    overrides = ["tracking.trackers=[]", "boundary.detector='window'", "boundary.batches=0", "boundary.seconds=4"]
    raw = config.load(None, [*QUIET, *overrides, "learner.epochs=1", "learner.max_batches=18", "learner.batch_size=32"])
    plan = pipeline.build(PluginHost(), raw, tmp_path / "dead_letters.jsonl")
    ticks = iter(range(10**6))
    plan.detector.clock = lambda: float(next(ticks))  # read once per batch: no checkpoints here
    summary = pipeline.Runner(plan).execute()
    # boundaries before batches 4, 8, 12, 16 (4 s after each window's first batch), and the end
    assert len(summary["generations"]) == 5 and summary["generations"][0]["samples"] == 4 * 32
