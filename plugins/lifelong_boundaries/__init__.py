"""Boundary detectors: experience change, fixed windows, and drift on the training loss."""

from lifelong import hookimpl
from lifelong_boundaries.detectors import ExperienceChange, Window, WindowOptions
from lifelong_boundaries.drift import DriftOptions, LossDrift

__version__ = "0.1.0"


@hookimpl
def register_boundary_detectors(register):
    register("experience-change", ExperienceChange, help="a boundary where the reader's experience id changes")
    register("window", Window, options=WindowOptions, help="a boundary every N batches (task-free streams)")
    register("loss-drift", LossDrift, options=DriftOptions, help="a boundary where ADWIN detects drift in the training loss")
