"""A boundary where the training loss rises, detected by river's Page-Hinkley test (Page 1954).

For task-free streams that carry no experience ids: when the loss on incoming batches jumps, the
data has probably changed, so the current model is consolidated into a generation first.
The test sees the host-side running metrics the kernel reads every ``learner.log_every`` batches
(the per-batch loop never synchronises for it), so lower ``log_every`` for finer detection.

Page-Hinkley in ``up`` mode was chosen over ADWIN after measuring both on Split-Digits: with a
few dozen observations per experience ADWIN found no change at all, Page-Hinkley found the jump of
the loss at a new experience within one or two reads. It detects a rise of the mean since the
last boundary, so a new task whose loss starts below the current regime's mean goes unnoticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lifelong.types import Batch

# What river 0.26's drift.PageHinkley keeps between updates, besides its constructor parameters
# (which come from DriftOptions) and ``_test_drift`` (chosen by ``mode``): the state a checkpoint
# carries, attribute by attribute, so that no pickle is needed. ``_x_mean`` is a stats.Mean
# (``n``, ``_mean``).
PAGE_HINKLEY_STATE = ("_drift_detected", "_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease")


def _float_to_json(x: float) -> float | str:
    """Finite floats as they are (JSON keeps them exactly), inf/-inf/nan as strings (strict JSON has none)."""
    return x if math.isfinite(x) else repr(float(x))


@dataclass
class DriftOptions:
    threshold: float = field(default=1.0, metadata={"help": "Page-Hinkley threshold on the cumulative rise of the loss"})
    delta: float = field(default=0.005, metadata={"help": "rise tolerated per observation before it counts"})
    warmup: int = field(default=4, metadata={"help": "observations after a boundary before the test may fire"})
    min_batches: int = field(default=20, metadata={"help": "no boundary sooner than this many batches after the last"})

    def check(self) -> None:
        # threshold and delta are finite already (lifelong.options refuses NaN and infinity)
        if self.threshold <= 0 or self.delta < 0:
            raise ValueError(f"threshold must be positive and delta non-negative, got {self.threshold}, {self.delta}")
        if self.warmup < 0 or self.min_batches < 0:
            raise ValueError(f"warmup and min_batches must be 0 or more, got {self.warmup}, {self.min_batches}")


class LossDrift:
    """Boundary when the running training loss rises significantly.

    >>> detector = LossDrift(DriftOptions(min_batches=0))
    >>> any(detector.observe({"loss": 0.1}) for _ in range(30))
    False
    >>> any(detector.observe({"loss": 3.0}) for _ in range(3))
    True
    """

    def __init__(self, options: DriftOptions):
        self.options = options
        self._test = self._new_test()
        self._since = 0

    def _new_test(self):
        from river import drift  # imported here: river.drift costs ~2 s, paid only when this detector runs

        o = self.options
        return drift.PageHinkley(min_instances=o.warmup, delta=o.delta, threshold=o.threshold, mode="up")

    def before_batch(self, batch: Batch) -> bool:
        self._since += 1
        return False

    def state_dict(self) -> dict:
        """Batches since the last boundary and the Page-Hinkley test's full state, as plain JSON."""
        test = self._test
        state = {name.lstrip("_"): getattr(test, name) for name in PAGE_HINKLEY_STATE}
        state["drift_detected"] = bool(state["drift_detected"])
        for name in ("sum_increase", "sum_decrease", "min_increase", "max_decrease"):
            state[name] = _float_to_json(float(state[name]))
        state["mean_n"] = _float_to_json(float(test._x_mean.n))
        state["mean"] = _float_to_json(float(test._x_mean._mean))
        return {"since": self._since, "page_hinkley": state}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; the test keeps this detector's options."""
        self._since = int(state["since"])
        ph = state["page_hinkley"]
        test = self._new_test()
        test._drift_detected = bool(ph["drift_detected"])
        for name in ("sum_increase", "sum_decrease", "min_increase", "max_decrease"):
            setattr(test, f"_{name}", float(ph[name]))
        test._x_mean.n = float(ph["mean_n"])
        test._x_mean._mean = float(ph["mean"])
        self._test = test

    def observe(self, metrics: dict[str, float]) -> bool:
        loss = metrics.get("loss")
        if loss is None or loss != loss:  # NaN: nothing trained since the last read
            return False
        self._test.update(loss)
        if self._test.drift_detected and self._since >= self.options.min_batches:
            self._since = 0
            self._test = self._new_test()  # measure the next rise from the new regime
            return True
        return False
