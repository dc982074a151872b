"""Strategies against forgetting, each one module, composed by listing several."""

from lifelong import hookimpl
from lifelong_strategies.naive import Naive

__version__ = "0.1.0"


@hookimpl
def register_strategies(register):
    register("naive", Naive, help="fine-tuning with no protection against forgetting (lower bound)")
