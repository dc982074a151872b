"""Naive fine-tuning: plain SGD on the stream, nothing against forgetting (the lower bound)."""

from __future__ import annotations


class Naive:
    """Implements no hook: the kernel's step alone is fine-tuning.

    >>> Naive().state_dict()
    {}
    """

    data_parallel = "the kernel's step: gradients all-reduced over ranks"

    def __init__(self, options=None):
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
