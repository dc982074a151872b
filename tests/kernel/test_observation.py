"""Strategies observe only applied batches: the deferred (CUDA) path's order, lag and flush, run on the CPU
with events whose completion the test decides."""

from __future__ import annotations

import torch

from lifelong.observation import LAG, Observations
from lifelong.types import Batch


class Events:
    """Stand-ins for torch.cuda.Event: ``done`` says whether the device has passed them."""

    def __init__(self):
        self.done = False
        self.waited = 0

    def __call__(self):
        events = self

        class Event:
            def record(self):
                pass

            def query(self):
                return events.done

            def synchronize(self):
                events.waited += 1

        return Event()


class Observed:
    def __init__(self):
        self.seen: list[int] = []

    def after_step(self, batch, outputs, first_pass):
        self.seen.append(int(batch.x[0, 0]))


def step(i: int) -> Batch:
    return Batch(x=torch.full((2, 1), float(i)), y=torch.zeros(2, dtype=torch.long))


def test_the_deferred_path_hands_over_applied_batches_in_order_at_most_lag_steps_late():
    hooks, events = Observed(), Events()
    observations = Observations(hooks, torch.device("cpu"), events=events)
    skipped = {3}
    for i in range(6):
        observations.add(step(i), torch.zeros(2, 2), True, torch.tensor(1.0 if i in skipped else 0.0))
        # the device is behind: the host waits only for the step LAG back, never more are pending
        assert hooks.seen == [s for s in range(i - LAG + 1) if s not in skipped]
    assert events.waited == 6 - LAG
    observations.flush()  # a boundary or a checkpoint: everything, in order, the skipped batch left out
    assert hooks.seen == [0, 1, 2, 4, 5]


def test_steps_whose_event_has_passed_are_handed_over_at_once():
    hooks, events = Observed(), Events()
    events.done = True
    observations = Observations(hooks, torch.device("cpu"), events=events)
    for i in range(3):
        observations.add(step(i), torch.zeros(2, 2), True, torch.tensor(0.0))
        assert hooks.seen == list(range(i + 1))


def test_the_flag_is_read_from_the_hosts_copy_taken_at_the_step():
    """The learner's flag tensor is the step's own copy; the host copy is what is read later."""
    hooks, events = Observed(), Events()
    observations = Observations(hooks, torch.device("cpu"), events=events)
    flag = torch.tensor(0.0)
    observations.add(step(0), torch.zeros(2, 2), True, flag)
    flag.fill_(1.0)  # written after the step: must not change what step 0 was
    observations.flush()
    assert hooks.seen == [0]


def test_on_the_cpu_a_batch_is_handed_over_when_its_step_returns():
    hooks = Observed()
    observations = Observations(hooks, torch.device("cpu"))
    observations.add(step(0), torch.zeros(2, 2), True, torch.tensor(0.0))
    observations.add(step(1), torch.zeros(2, 2), True, torch.tensor(1.0))
    assert hooks.seen == [0]
