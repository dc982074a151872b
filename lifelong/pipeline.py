"""The public entry to a run: :func:`build` a validated :class:`Plan` (``lifelong.plan``), then
execute it with a :class:`Runner` (``lifelong.session``), which returns the summary.

The kernel's modules, one job each: ``plan`` (validate and build), ``session`` (the loop, its
checkpoints and signals), ``span`` (the stream since the last boundary), ``testsets`` (held-out
data), ``checkpoint`` (the on-disk format), ``rng`` (generator states), ``report`` (table, heatmap).
"""

from lifelong.plan import Plan, build, seed_everything
from lifelong.session import Runner

__all__ = ["Plan", "Runner", "build", "seed_everything"]
