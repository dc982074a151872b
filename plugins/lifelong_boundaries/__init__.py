"""Boundary detectors: experience change, windows of batches or seconds, and drift on the training loss.

Each detector has ``state_dict() -> dict`` and ``load_state_dict(state)``: the state is plain JSON
(numbers, strings, None), so a checkpoint carries it without pickle, and a detector restored from
it makes exactly the decisions the uninterrupted one would have made — except a window of
``seconds``, which carries the time its current window has lasted, not a clock reading, so time
the run was down does not count.
"""

from lifelong import hookimpl
from lifelong_boundaries.detectors import ExperienceChange, Window, WindowOptions
from lifelong_boundaries.drift import DriftOptions, LossDrift

__version__ = "0.1.0"


@hookimpl
def register_boundary_detectors(register):
    register("experience-change", ExperienceChange, help="a boundary where the reader's experience id changes")
    register("window", Window, options=WindowOptions, help="a boundary every N batches or seconds, whichever comes first (task-free streams)")
    register("loss-drift", LossDrift, options=DriftOptions, help="a boundary where a Page-Hinkley test detects a rise of the training loss")
