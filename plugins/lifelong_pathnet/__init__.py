"""PathNet (Fernando et al. 2017): paths evolved through a module grid, each task's best path frozen."""

from lifelong import hookimpl
from lifelong_pathnet.grid import GridOptions, PathNetModel, build_grid
from lifelong_pathnet.strategy import PathNet, PathNetOptions

__version__ = "0.1.0"
__all__ = ["GridOptions", "PathNet", "PathNetModel", "PathNetOptions"]


@hookimpl
def register_strategies(register):
    register(
        "pathnet", PathNet, options=PathNetOptions,
        help="PathNet: tournament-evolved paths through a module grid, each task's best path frozen",
    )


@hookimpl
def register_models(register):
    register("pathnet", build_grid, options=GridOptions, help="the PathNet module grid (built by the pathnet strategy)")
