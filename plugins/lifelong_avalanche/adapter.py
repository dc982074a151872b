"""Avalanche 0.6.0's training plugins (SI, MAS, EWC, RWalk, GEM, A-GEM, LwF, LFL, MIR) inside a lifelong run.

**Design.** The adapter drives an Avalanche plugin's callbacks from lifelong's own loop, through a
small shim object (:class:`StrategyShim`) that looks like Avalanche's ``SupervisedTemplate`` to the
plugin: ``model``, ``optimizer``, ``device``, ``mbatch``/``mb_x``/``mb_y``/``mb_task_id``,
``mb_output``, ``loss``, ``_criterion``, ``clock``, ``experience`` (``dataset``, ``task_label``,
``classes_in_this_experience``), ``is_training``, ``train_epochs``, ``train_mb_size``, ``plugins``.
It does *not* train Avalanche's strategy template per experience, because the template owns its
own DataLoader loop over a finished experience: that would bypass lifelong's per-batch streaming,
the reader's prefetch thread, boundary detectors (window, loss drift) that end an experience
mid-stream, composition with lifelong's other strategies, and the step that never synchronises
with the device. Here the stream stays lifelong's; the plugin only sees the callbacks.

Callbacks, in the order Avalanche's ``SGDUpdate.training_epoch`` calls them:

============================  ==================================================================
lifelong hook                 Avalanche callbacks
============================  ==================================================================
``on_run_start``              ``before_training`` (the run is one ``train`` call)
first batch of a span         ``before_training_exp``, ``before_training_epoch``
``augment_batch``             ``before_training_iteration``, ``before_forward`` (stream batch)
``extra_loss``                ``after_forward``, ``before_backward`` (training batch and logits)
``before_optimizer_step``     ``after_backward``, ``before_update`` (GEM/A-GEM project gradients)
``after_step``                ``after_update``, ``after_training_iteration``
``on_boundary``                ``after_training_epoch``, ``after_training_exp``
============================  ==================================================================

- **The loss.** Plugins add their penalty to ``strategy.loss`` in ``before_backward`` (in place).
  The shim's ``loss`` is a copy of the training batch's cross-entropy that stays in the autograd
  graph (MIR differentiates it), and ``extra_loss`` returns what the plugins added (``loss − CE``):
  the kernel sums it with its own cross-entropy, so the gradient is Avalanche's exactly. If no
  plugin touched the loss (checked by identity and autograd's version counter, no device read),
  the hook returns None.
- **The experience's data.** SI, MAS, EWC, GEM, A-GEM, LwF and MIR read ``strategy.experience.dataset``
  in ``after_training_exp``. A stream has no dataset, so the adapter keeps the span's stream samples
  itself: ``after_step`` puts each first-pass stream batch into a uniform reservoir of at most
  ``experience_samples`` samples on the training device (no host synchronisation), and at the
  boundary it becomes an Avalanche classification dataset (x, y, task label) on the CPU, which is
  what plugins build their DataLoaders over. With ``experience_samples`` at least the experience's
  size it is the whole experience, in stream order, as in Avalanche.
- **Task labels.** Class- and domain-incremental runs give every sample task label 0 (Avalanche's
  default). Task-incremental runs (one head per task) wrap the model in an Avalanche
  ``MultiTaskModule`` whose ``forward(x, task_labels)`` calls lifelong's ``forward(x, task)``, so
  ``avalanche_forward`` in the plugins picks each sample's head, and LwF distils every known head.
- **Epochs.** With ``learner.epochs > 1`` lifelong replays a span inside the boundary and its hooks
  do not tell where an extra epoch begins before its first batch, so the plugin sees the span as
  one Avalanche epoch of ``epochs × batches`` iterations (``clock.train_exp_epochs`` counts one).
  None of the supported plugins implements an epoch callback.
- **Host synchronisation.** Lifelong's own step never reads the device; Avalanche plugins do (SI
  copies weights and gradients to the CPU every iteration, A-GEM and GEM test a dot product on the
  host, MAS tests ``if not strategy.loss``). That cost is theirs, and the benchmark shows it.
- **Refused plugins.** Plugins that replace the training DataLoader or need the template's own
  loop (ReplayPlugin, GDumbPlugin, BiCPlugin, GSS_greedyPlugin, …) are refused by name with the
  reason, before training, pointing at lifelong's ``replay`` strategy (see
  :mod:`lifelong_avalanche.catalogue`).
- **State.** Avalanche plugins have no ``state_dict``; :mod:`lifelong_avalanche.state` writes
  their attributes (tensors, ``ParamData``, the previous model, memories) into the generation's
  strategy state, and names the attributes it leaves out.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lifelong import hookimpl, resources
from lifelong.errors import ConfigError, UserError
from lifelong.types import Batch
from lifelong_avalanche import catalogue, state

log = logging.getLogger(__name__)

WHERE = "strategy.avalanche"
AVALANCHE_VERSION = "0.6.0"
INSTALL_HINT = (
    "pip install '.[avalanche]' in the lifelong checkout (or pip install 'avalanche-lib==0.6.0'; lifelong "
    "is installed from its checkout, not from a package index). Avalanche imports torchvision, which must be "
    "the build that matches your torch: install torch and torchvision together first "
    "(bench/avalanche_env.sh builds a working environment: torch 2.14.1 with torchvision 0.29.1; see docs/avalanche.md)"
)


@dataclass
class AvalancheOptions:
    plugin: str = field(
        default="",
        metadata={"help": "Avalanche 0.6.0 plugin class, e.g. SynapticIntelligencePlugin (the Plugin suffix and case are optional)"},
    )
    args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "keyword arguments of the plugin's constructor, e.g. {si_lambda = 1.0}"}
    )
    experience_samples: int = field(
        default=10000,
        metadata={"help": "stream samples per experience kept for the plugin's end-of-experience work (a uniform reservoir on the device)"},
    )

    def check(self) -> None:
        if not self.plugin:
            raise ValueError(f"plugin: name the Avalanche plugin to use; supported: {catalogue.valid_names()}")
        why = catalogue.problem(self.plugin)
        if why is not None:
            raise ValueError(f"plugin: {why}")
        if self.experience_samples < 1:
            raise ValueError(f"experience_samples must be at least 1, got {self.experience_samples}")


def import_avalanche() -> Any:
    """``avalanche.training.plugins``, or a UserError with the install hint."""
    try:
        import avalanche  # noqa: F401  (first, alone: a missing Avalanche fails here)
        import avalanche.training.plugins as plugins
        from avalanche.training.plugins.clock import Clock  # noqa: F401
    except ImportError as exc:
        raise UserError(f"{WHERE}: Avalanche is not importable ({exc}). Install it: {INSTALL_HINT}") from None
    except Exception as exc:  # a torchvision that does not match torch fails with other errors on import
        raise UserError(f"{WHERE}: importing Avalanche failed ({type(exc).__name__}: {exc}). {INSTALL_HINT}") from None
    version = getattr(avalanche, "__version__", "?")
    if not version.startswith(AVALANCHE_VERSION.rsplit(".", 1)[0] + "."):
        warnings.warn(f"lifelong_avalanche is written against Avalanche {AVALANCHE_VERSION}; found {version}", stacklevel=2)
    return plugins


def make(options: AvalancheOptions) -> AvalancheAdapter:
    """The factory of the ``avalanche`` strategy: import Avalanche, build the plugin, wrap it."""
    module = import_avalanche()
    name = catalogue.canonical(options.plugin)
    cls = getattr(module, name, None)
    if cls is None:  # the catalogue is for 0.6.0; another version may lack a class
        raise ConfigError(f"{WHERE}.plugin", f"Avalanche {module.__name__} has no {name}; supported: {catalogue.valid_names()}")
    try:
        plugin = cls(**options.args)
    except Exception as exc:  # TypeError for a wrong keyword, AssertionError for Avalanche's own checks
        detail = str(exc) or type(exc).__name__
        raise ConfigError(f"{WHERE}.args", f"{name}(**{options.args!r}) failed: {detail}") from None
    return AvalancheAdapter(options, plugin)


# -- what plugins see ---------------------------------------------------------------------------------


class SpanExperience:
    """``strategy.experience``: the span being trained on; its dataset exists from the span's end on."""

    def __init__(self, index: int, dataset: Any = None, tasks: list[int] | None = None, classes: list[int] | None = None):
        self.current_experience = index
        self._dataset = dataset
        self.task_labels = tasks or [0]
        self.task_label = self.task_labels[0]
        self.classes_in_this_experience = classes or []
        self.origin_stream = None

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            raise RuntimeError(
                "lifelong_avalanche: the experience's dataset is known only at its end in a stream; "
                "this plugin reads it before (not supported)"
            )
        return self._dataset


class StrategyShim:
    """What an Avalanche plugin reads and writes as ``strategy``: the template's state, no loop."""

    def __init__(self, plugin: Any, clock: Any):
        self.plugins = [plugin, clock]  # the Clock last, as in Avalanche's template
        self.clock = clock
        self.model: torch.nn.Module | None = None
        self.optimizer: Any = None
        self.device = torch.device("cpu")
        self._criterion = torch.nn.CrossEntropyLoss()
        self.train_epochs = 1
        self.train_mb_size = 32
        self.eval_mb_size = 32
        self.experience: SpanExperience | None = None
        self.adapted_dataset: Any = None
        self.dataloader: Any = None
        self.is_training = True
        self.mbatch: list[torch.Tensor] | None = None
        self.mb_output: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.retain_graph = False
        self.evaluator = None
        self.eval_every = -1
        self.current_eval_stream: list = []
        self._stop_training = False

    @property
    def is_eval(self) -> bool:
        return not self.is_training

    @property
    def mb_x(self) -> torch.Tensor:
        return self.mbatch[0]

    @property
    def mb_y(self) -> torch.Tensor:
        return self.mbatch[1]

    @property
    def mb_task_id(self) -> torch.Tensor:
        return self.mbatch[-1]

    def criterion(self) -> torch.Tensor:
        return self._criterion(self.mb_output, self.mb_y)

    def forward(self) -> Any:
        from avalanche.models.utils import avalanche_forward

        return avalanche_forward(self.model, self.mb_x, self.mb_task_id)

    def stop_training(self) -> None:  # early stopping has no meaning on a stream
        self._stop_training = True

    def trigger(self, event: str) -> None:
        for plugin in self.plugins:
            callback = getattr(plugin, event, None)
            if callback is not None:
                callback(self)


def wrap_model(model: torch.nn.Module, multi_task: bool, features: bool) -> torch.nn.Module:
    """``model`` itself, or a wrapper that Avalanche treats as multi-task and/or as a ``BaseModel``.

    The wrapper holds ``model`` as a submodule (shared parameters), so plugins that walk
    ``named_parameters()`` or deep-copy the model see and copy the real weights.
    """
    if not (multi_task or features):
        return model
    from avalanche.models import BaseModel, MultiTaskModule

    base = MultiTaskModule if multi_task else torch.nn.Module

    class LifelongModel(base, BaseModel):  # type: ignore[misc, valid-type]
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, task_labels: Any = None) -> Any:
            if not multi_task:
                return self.net(x)
            if task_labels is None:
                return self.forward_all_tasks(x)
            if isinstance(task_labels, int):
                return self.forward_single_task(x, task_labels)
            return self.net(x, torch.as_tensor(task_labels, device=x.device))

        def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
            return self.net(x, torch.full((x.shape[0],), int(task_label), dtype=torch.long, device=x.device))

        def get_features(self, x: torch.Tensor) -> torch.Tensor:
            """The input of the last Linear layer (LFL's feature space)."""
            last = [m for m in self.net.modules() if isinstance(m, torch.nn.Linear)][-1]
            seen: list[torch.Tensor] = []
            handle = last.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            try:
                self.net(x)
            finally:
                handle.remove()
            return seen[-1]

    wrapped = LifelongModel(model)
    if multi_task:
        wrapped.known_train_tasks_labels = set()
    return wrapped


class SpanSamples:
    """A uniform reservoir (algorithm R) of at most ``capacity`` stream samples, on the device.

    Filled per batch without host synchronisation: sample ``t`` of the span takes slot ``t`` while
    the reservoir fills, then a uniform slot in ``[0, t]``, kept if below ``capacity``; rejected
    samples go to one spare row. Two samples of one batch drawing the same slot resolve in an
    unspecified order (a negligible bias).
    """

    def __init__(self, capacity: int, generator: torch.Generator | None):
        self.capacity = capacity
        self.generator = generator
        self.seen = 0
        self.x = self.y = self.t = None

    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        n, cap = y.shape[0], self.capacity
        if self.x is None:
            self.x = x.new_empty((cap + 1, *x.shape[1:]))
            self.y = y.new_empty(cap + 1)
            self.t = t.new_empty(cap + 1)
        if self.seen + n <= cap:
            self.x[self.seen : self.seen + n] = x
            self.y[self.seen : self.seen + n] = y
            self.t[self.seen : self.seen + n] = t
        else:
            position = torch.arange(self.seen, self.seen + n, device=y.device)
            draw = (torch.rand(n, device=y.device, generator=self.generator) * (position + 1)).long()
            slot = torch.where(position < cap, position, torch.minimum(draw, position))
            slot = torch.where(slot < cap, slot, cap)
            self.x.index_copy_(0, slot, x)
            self.y.index_copy_(0, slot, y)
            self.t.index_copy_(0, slot, t)
        self.seen += n

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Copies of the samples on the CPU (once per boundary), and an empty reservoir.

        Copies, never views: plugins keep the dataset (A-GEM's and MIR's memories are subsets of it)
        while the reservoir's storage is reused for the next span (``.cpu()`` of a CPU tensor is the
        tensor itself).
        """
        if self.x is None or not self.seen:
            return None
        k = min(self.seen, self.capacity)
        out = tuple(t[:k].to("cpu", copy=True) for t in (self.x, self.y, self.t))
        self.seen = 0
        return out


# -- the lifelong strategy ------------------------------------------------------------------------------


class AvalancheAdapter:
    """A lifelong strategy that runs one Avalanche plugin's callbacks; see the module docstring."""

    def __init__(self, options: AvalancheOptions, plugin: Any):
        from avalanche.training.plugins.clock import Clock

        self.options = options
        self.plugin = plugin
        self.name = type(plugin).__name__
        self.shim = StrategyShim(plugin, Clock())
        self.model: torch.nn.Module | None = None  # lifelong's model (the shim's may wrap it)
        self.task_aware = False
        self.samples: SpanSamples | None = None
        self.in_span = False
        self.experiences = 0
        self._pending: dict[str, Any] | None = None
        self._last_classes: list[int] = []  # of the last batch before a loaded state was saved
        self.skipped: list[str] = []

    def _check_heads(self, num_tasks: int) -> None:
        if self.name == "LFLPlugin" and num_tasks > 1:
            raise ConfigError(
                WHERE,
                "LFLPlugin freezes the model's last Linear layer after the first experience, and lifelong's "
                "task-incremental models hold every task's head in that one layer, so later tasks could not "
                "be learned: use it with stream.scenario = 'class' or 'domain'",
            )

    @hookimpl
    def validate(self, run) -> None:
        """An unusable combination fails before training (and before trackers open a run); so does a
        reservoir of ``experience_samples`` that cannot fit on the device."""
        self._check_heads(run.info.num_tasks)
        per_sample = resources.elements(run.info.input_shape) * resources.FLOAT_BYTES + 16
        resources.require(
            (self.options.experience_samples + 1) * per_sample,
            f"a reservoir of {self.options.experience_samples:,} samples of shape {tuple(run.info.input_shape)}",
            f"{WHERE}.experience_samples",
            run.device,
        )

    @hookimpl
    def on_run_start(self, run) -> None:
        info = run.info
        self.task_aware = info.num_tasks > 1
        learner = run.learner
        shim = self.shim
        self.model = run.model
        shim.model = wrap_model(run.model, multi_task=self.task_aware, features=self.name == "LFLPlugin")
        shim.optimizer = run.optimizer
        shim.device = torch.device(run.device)
        shim.train_epochs = learner.epochs
        shim.train_mb_size = learner.batch_size
        shim.eval_mb_size = learner.eval_batch_size
        generator = torch.Generator(device=run.device).manual_seed(run.seed + 104729)
        self.samples = SpanSamples(self.options.experience_samples, generator)
        shim.is_training = True
        shim.trigger("before_training")
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    def _task(self, batch: Batch) -> torch.Tensor:
        if batch.task is not None:
            return batch.task
        return torch.zeros_like(batch.y)

    @hookimpl
    def augment_batch(self, batch: Batch) -> None:
        shim = self.shim
        if not self.in_span:
            self.in_span = True
            shim.experience = SpanExperience(self.experiences)
            shim.trigger("before_training_exp")
            self._copy_si_snapshots("anchor")
            shim.trigger("before_training_epoch")
        shim.mbatch = [batch.x, batch.y, self._task(batch)]
        training = self.model.training
        shim.trigger("before_training_iteration")
        self._copy_si_snapshots("old_theta")
        shim.trigger("before_forward")
        if self.model.training != training:  # RWalk puts the model in eval mode for its extra backward
            self.model.train(training)
        return None

    def _copy_si_snapshots(self, which: str) -> None:
        """Work around Avalanche 0.6.0's SI on the CPU (the fix its CUDA path gets by accident).

        ``SynapticIntelligencePlugin.extract_weights`` stores ``param.detach().cpu().flatten()``:
        on a CUDA device a copy, on the CPU a *view of the live parameter*. The optimizer then
        updates the "old" weights along with the live ones, so the path integral Σ g·Δθ is zero and
        the anchor moves with the model: SI does nothing on the CPU, in Avalanche's own template too
        (tests/plugins/test_avalanche_adapter.py shows it). Copying the two snapshots it takes by view
        (the experience's start weights and each iteration's pre-update weights) restores the
        algorithm; the snapshots a plugin takes after the update are used at once and need no copy.
        """
        if self.name != "SynapticIntelligencePlugin" or self.shim.device.type != "cpu":
            return
        plugin = self.plugin
        params = plugin.ewc_data[0] if which == "anchor" else plugin.syn_data["old_theta"]
        for data in params.values():
            data.data = data.data.clone()

    @hookimpl
    def extra_loss(self, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | None:
        shim = self.shim
        shim.mbatch = [batch.x, batch.y, self._task(batch)]
        shim.mb_output = outputs
        shim.trigger("after_forward")
        ce = F.cross_entropy(outputs, batch.y)
        loss = ce.clone()  # in the graph (MIR differentiates it); plugins add to it in place
        version = loss._version
        shim.loss = loss
        training = self.model.training
        shim.trigger("before_backward")
        if self.model.training != training:  # LFL puts the model in eval mode for its features
            self.model.train(training)
        if shim.loss is loss and loss._version == version:
            return None
        added = shim.loss - ce
        return added.reshape(()) if added.numel() == 1 else added.sum()

    @hookimpl
    def before_optimizer_step(self) -> None:
        self.shim.trigger("after_backward")
        self.shim.trigger("before_update")

    @hookimpl
    def after_step(self, batch: Batch, first_pass: bool) -> None:
        self.shim.trigger("after_update")
        self.shim.trigger("after_training_iteration")
        if first_pass:
            self.samples.add(batch.x.detach(), batch.y, self._task(batch))

    @hookimpl
    def on_boundary(self) -> None:
        shim = self.shim
        data = self.samples.take()
        if data is None:  # a span without first-pass samples (never from the kernel's loop)
            self.in_span = False
            return
        x, y, t = data
        tasks = sorted(set(t.tolist()))
        classes = sorted(set(y.tolist()))
        shim.experience = SpanExperience(self.experiences, state.make_dataset(x, y, t), tasks, classes)
        shim.adapted_dataset = shim.experience.dataset
        if self.task_aware:
            shim.model.known_train_tasks_labels |= set(tasks)
        shim.trigger("after_training_epoch")
        shim.trigger("after_training_exp")
        self.experiences += 1
        self.in_span = False
        shim.adapted_dataset = None

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The plugin's attributes and the clock, as tensors and JSON (see :mod:`lifelong_avalanche.state`)."""
        if self.shim.model is None:
            return dict(self._pending or {})
        values, skipped = state.snapshot(self.plugin)
        clock, _ = state.snapshot(self.shim.clock)
        self.skipped = skipped
        return {
            "plugin": self.name,
            "avalanche": values,
            "clock": clock,
            "experiences": self.experiences,
            "known_tasks": sorted(getattr(self.shim.model, "known_train_tasks_labels", ())),
            "last_classes": self._last_classes if self.shim.mbatch is None else sorted(set(self.shim.mb_y.tolist())),
            "skipped": skipped,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (before the run starts: kept until the model is known)."""
        if saved.get("plugin") != self.name:
            raise ValueError(f"the saved state is of Avalanche's {saved.get('plugin')}, this strategy runs {self.name}")
        if self.shim.model is None:
            self._pending = saved
            return
        self._load(saved)

    def _load(self, saved: dict[str, Any]) -> None:
        copier = state.module_copier(self.shim.model)
        missed = state.restore(self.plugin, saved["avalanche"], copier)
        state.restore(self.shim.clock, saved["clock"], copier)
        self.experiences = int(saved["experiences"])
        if self.task_aware:
            self.shim.model.known_train_tasks_labels = {int(t) for t in saved.get("known_tasks", [])}
        self._last_classes = [int(c) for c in saved.get("last_classes", [])]
        state.after_load(self.plugin, self.shim, self._last_classes)
        lost = sorted({*saved.get("skipped", []), *missed})
        if lost:
            log.info("avalanche %s: state restored except %s (fresh values)", self.name, ", ".join(lost))
