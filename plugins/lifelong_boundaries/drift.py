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

from dataclasses import dataclass, field
from lifelong.types import Batch


@dataclass
class DriftOptions:
    threshold: float = field(default=1.0, metadata={"help": "Page-Hinkley threshold on the cumulative rise of the loss"})
    delta: float = field(default=0.005, metadata={"help": "rise tolerated per observation before it counts"})
    warmup: int = field(default=4, metadata={"help": "observations after a boundary before the test may fire"})
    min_batches: int = field(default=20, metadata={"help": "no boundary sooner than this many batches after the last"})

    def check(self) -> None:
        if self.threshold <= 0 or self.delta < 0:
            raise ValueError(f"threshold must be positive and delta non-negative, got {self.threshold}, {self.delta}")


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
