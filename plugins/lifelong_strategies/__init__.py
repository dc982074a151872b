"""Strategies against forgetting, each one module, composed by listing several."""

from lifelong import hookimpl
from lifelong_strategies.ewc import EWC, EWCOptions
from lifelong_strategies.joint import Joint
from lifelong_strategies.l2 import L2, L2Options
from lifelong_strategies.lwf import LwF, LwFOptions
from lifelong_strategies.naive import Naive
from lifelong_strategies.replay import Replay, ReplayOptions

__version__ = "0.1.0"


@hookimpl
def register_strategies(register):
    register("naive", Naive, help="fine-tuning with no protection against forgetting (lower bound)")
    register("replay", Replay, options=ReplayOptions, help="experience replay from a fixed-size memory")
    register("joint", Joint, help="retrain on everything seen so far: every past sample once per epoch (upper bound)")
    register("ewc", EWC, options=EWCOptions, help="elastic weight consolidation: a Fisher-weighted pull to past weights (separate or online)")
    register("lwf", LwF, options=LwFOptions, help="learning without forgetting: distil the previous generation's soft outputs")
    register("l2", L2, options=L2Options, help="an L2 pull towards the weights of the last consolidation")
