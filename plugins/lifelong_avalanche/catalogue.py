"""Which Avalanche 0.6.0 plugins the adapter drives, which it refuses, and why; no Avalanche import.

The lists are checked against the plugins' source (``avalanche/training/plugins/*.py`` of 0.6.0):
a plugin is supported when every strategy attribute it reads and every callback it implements
has a faithful counterpart in lifelong's per-batch loop (see :mod:`lifelong_avalanche.adapter`).
It is refused when it needs what a stream cannot give or what lifelong owns: the template's own
DataLoader (replay through ``strategy.dataloader``/``adapted_dataset``), the whole experience before
training on it, the model object at construction time, or Avalanche's evaluation loop.
"""

from __future__ import annotations

from lifelong.errors import brief

# Supported: class name -> one line for the docs and error messages.
SUPPORTED: dict[str, str] = {
    "SynapticIntelligencePlugin": "Synaptic Intelligence (Zenke et al. 2017): path-integral importance, quadratic penalty",
    "MASPlugin": "Memory Aware Synapses (Aljundi et al. 2018): importance from output-norm gradients",
    "EWCPlugin": "Avalanche's EWC (squared minibatch gradients, no ½ in the penalty), separate or online",
    "RWalkPlugin": "Riemannian Walk (Chaudhry et al. 2018): EWC++ Fisher plus path scores",
    "GEMPlugin": "Gradient Episodic Memory (Lopez-Paz & Ranzato 2017): gradient projection by quadprog",
    "AGEMPlugin": "Averaged GEM (Chaudhry et al. 2019): projection on one memory gradient",
    "LwFPlugin": "Avalanche's Learning without Forgetting: distillation on the previous model's active units",
    "LFLPlugin": "Less-Forgetful Learning (Jung et al. 2016): feature distance to the previous model, frozen last layer",
    "MIRPlugin": "Maximally Interfered Retrieval (Aljundi et al. 2019): replay of the most interfered memory samples through the loss",
}

_REPLAY_HINT = (
    "use lifelong's own `replay` strategy (learner.strategies = [\"replay\"], options in [strategy.replay]), "
    "which by default (fill = \"experience-end\") replays past experiences only, as Avalanche's ReplayPlugin "
    "does, from a memory on the training device; it composes with this adapter"
)
_LOADER = "replaces Avalanche's training DataLoader (strategy.dataloader / adapted_dataset) and so needs the template's own loop"

# Refused: class name -> why (completed by the hint where it applies).
REFUSED: dict[str, str] = {
    "ReplayPlugin": f"{_LOADER}; {_REPLAY_HINT}",
    "GDumbPlugin": f"{_LOADER} (it trains on its memory only) and replaces strategy.model; {_REPLAY_HINT}",
    "BiCPlugin": f"{_LOADER}, splits off a validation set from the experience's data and rewrites the loss; {_REPLAY_HINT}",
    "GSS_greedyPlugin": f"{_LOADER}; {_REPLAY_HINT}",
    "CoPEPlugin": f"{_LOADER} and replaces the criterion; {_REPLAY_HINT}",
    "RARPlugin": f"{_LOADER}; {_REPLAY_HINT}",
    "GenerativeReplayPlugin": f"rewrites strategy.mbatch with generated samples inside the template's loop and needs a generator model; {_REPLAY_HINT}",
    "TrainGeneratorAfterExpPlugin": "trains a separate generator strategy after each experience (generative replay); not a plugin of the learner's own loop",
    "CWRStarPlugin": "reads the whole experience's dataset before training on it (class counts) and takes the model object as a constructor argument; a stream knows an experience only at its end",
    "FeatureDistillationPlugin": "needs a model that stores its features in a `features` attribute on every forward (lifelong's cnn uses that name for a submodule)",
    "FromScratchTrainingPlugin": "resets the model and rebuilds the optimizer's parameter groups, which lifelong's learner owns; not a strategy against forgetting",
    "EvaluationPlugin": "evaluation is lifelong's own: the accuracy matrix, ACC/BWT/FWT and the trackers",
    "EarlyStoppingPlugin": "needs Avalanche's periodic evaluation on a validation stream inside the template's loop",
    "LRSchedulerPlugin": "steps a scheduler at Avalanche's epoch and experience ends inside the template's loop; lifelong's learner owns the optimizer",
    "CheckpointPlugin": "lifelong checkpoints every generation itself ([checkpoint] dir)",
    "CurrentDataNCMUpdate": "needs an NCM classifier model and the experience's data before training",
    "MemoryNCMUpdate": "needs an NCM classifier model and a storage policy of the template",
    "NCMOracle": "needs an NCM classifier model and the experience's data before training",
    "CurrentDataFeCAMUpdate": "needs a FeCAM classifier model and the experience's data before training",
    "MemoryFeCAMUpdate": "needs a FeCAM classifier model and a storage policy of the template",
    "FeCAMOracle": "needs a FeCAM classifier model and the experience's data before training",
}


def _key(name: str) -> str:
    key = name.strip().lower()
    return key[: -len("plugin")] if key.endswith("plugin") else key


_BY_KEY = {_key(n): n for n in [*SUPPORTED, *REFUSED]}


def canonical(name: str) -> str | None:
    """The class name ``name`` means: exact, without the ``Plugin`` suffix, any case; None if unknown.

    >>> canonical("SynapticIntelligence"), canonical("agem"), canonical("EWCPlugin"), canonical("Foo")
    ('SynapticIntelligencePlugin', 'AGEMPlugin', 'EWCPlugin', None)
    """
    return _BY_KEY.get(_key(name))


def valid_names() -> str:
    return ", ".join(SUPPORTED)


def problem(name: str) -> str | None:
    """Why ``name`` cannot be used (refused or unknown), or None when it is supported."""
    found = canonical(name)
    if found is None:
        return f"unknown Avalanche plugin {brief(name)}; supported: {valid_names()}"
    if found in REFUSED:
        return f"Avalanche's {found} is not supported by the adapter: it {REFUSED[found]}"
    return None
