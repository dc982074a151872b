"""Avalanche 0.6.0's training plugins as one lifelong strategy, ``avalanche``.

    [learner]
    strategies = ["avalanche"]
    [strategy.avalanche]
    plugin = "SynapticIntelligencePlugin"
    args = { si_lambda = 1.0 }

Avalanche is imported only when the strategy is built, so this plugin loads (and ``lifelong
plugins`` lists it) without Avalanche installed; selecting it then fails before training with the
install hint. Why the plugins are driven from lifelong's loop through a shim instead of running
Avalanche's strategy template: :mod:`lifelong_avalanche.adapter`. Which plugins are supported or
refused, and why: :mod:`lifelong_avalanche.catalogue` and docs/avalanche.md.
"""

from lifelong import hookimpl
from lifelong_avalanche.adapter import AvalancheAdapter, AvalancheOptions, make

__version__ = "0.1.0"
__all__ = ["AvalancheAdapter", "AvalancheOptions", "make"]


@hookimpl
def register_strategies(register):
    register(
        "avalanche",
        make,
        options=AvalancheOptions,
        help="an Avalanche 0.6.0 training plugin (SI, MAS, EWC, RWalk, GEM, AGEM, LwF, LFL, MIR) driven from lifelong's loop",
    )
