"""A pretrained backbone with a new head, trained by one of three strategies (or ``auto``).

A :class:`Backbone` is a pretrained network without its classifier: ``adapt`` (cheap, parameter-free
input adaptation), ``units`` (its blocks, input side first: the granularity of freezing) and
``features`` (adapted input → one feature vector per sample). :class:`TransferModel` puts a
:class:`~lifelong_models.heads.TaskHeads` on it (one head, or one per task) and uses the kernel's
optional model members:

==================  =======================================  ======================================
strategy            ``prepare`` (once per sample)             ``forward`` (every step)
==================  =======================================  ======================================
feature-extractor   adapt + every block + pooling: features   dropout + head
fine-tune-top       adapt + the frozen blocks, when the       the remaining blocks + head
                    backbone allows caching them and no
                    gradual unfreezing is asked (else: the
                    backbone's cheap adaptation only)
fine-tune-all       the backbone's cheap adaptation only      adapt + every block + head
auto                the backbone's cheap adaptation only      as the strategy it picks
==================  =======================================  ======================================

Image backbones adapt inside ``forward`` under fine-tuning (a resized 224×224 copy of every test
image kept on the device would cost 600 kB per image); text backbones tokenize in ``prepare_host``,
on the kernel's reader thread (``prepare`` passes the token ids through, and still tokenizes raw
bytes where ``prepare_host`` was not called: a served generation).
Frozen blocks have ``requires_grad`` off and stay in eval mode (BatchNorm statistics and dropout
frozen) whatever ``train()`` is called with; with ``train_bn = false`` (default) every backbone
BatchNorm stays in eval mode. ``param_groups`` gives the head ``lr`` and the backbone
``lr × backbone_lr_scale`` (× ``layer_decay`` per block below the top).

``auto`` is decided by :mod:`lifelong_transfer.auto` inside the run (see ``TransferHooks``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import nn

from lifelong import hookimpl
from lifelong.types import ModelSpec, StreamInfo
from lifelong_models.heads import TaskHeads
from lifelong_transfer import auto
from lifelong_transfer.options import FineTuneOptions

FEATURES = -1  # ``cached`` value: prepare computes the whole backbone


class Backbone(nn.Module):
    """A pretrained network without its classifier; subclasses fill in the members below."""

    units: nn.ModuleList  # freezable blocks, input side first; every backbone parameter lives in one
    dim: int  # feature size
    default_frozen: int  # fine-tune-top's frozen blocks when frozen_blocks = -1
    cacheable_prefix: bool = False  # whether prefix()/features(start=k) exist (frozen lower blocks cached by prepare)
    adapt_in_prepare: bool = False  # True: adapt runs in prepare under every strategy (tokenizers)
    # True: adapt is host work (a tokenizer) that the kernel runs on the reader thread through the
    # model's prepare_host; adapt must then pass an already adapted input through unchanged.
    adapt_on_host: bool = False

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Stream input → the backbone's input (parameter-free, deterministic)."""
        raise NotImplementedError

    def features(self, a: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(N, dim) features of adapted input ``a`` (or of units[start-1]'s output when start > 0)."""
        raise NotImplementedError

    def prefix(self, a: torch.Tensor, stop: int) -> torch.Tensor:
        """The output of units[:stop] on adapted input ``a`` (only when ``cacheable_prefix``)."""
        raise NotImplementedError

    def raw_probe(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) "no transfer" features of what ``prepare`` hands on under auto: auto's baseline probe."""
        x = x.float().flatten(1)
        return x


class TransferModel(nn.Module):
    """A backbone and a new head; see the module docstring. ``forward(x)`` or ``forward(x, task)``."""

    def __init__(self, backbone: Backbone, options: FineTuneOptions, info: StreamInfo, spec: ModelSpec):
        super().__init__()
        self.backbone = backbone
        self.head = TaskHeads(backbone.dim, info.num_classes, info.num_tasks)
        self.drop = nn.Dropout(options.dropout)
        self.options = options
        self.info = info
        self.model_spec = spec  # auto writes its decision into spec.options["strategy"]
        n = len(backbone.units)
        top = options.frozen_blocks if options.frozen_blocks >= 0 else backbone.default_frozen
        if top > n:
            raise ValueError(f"frozen_blocks is {top} but this backbone has {n} blocks")
        self.top_frozen = top  # fine-tune-top's frozen block count
        self.strategy = options.strategy  # "auto" until the decision
        self.decision: dict[str, Any] | None = None
        self.cached = self._cache_level(self.strategy)
        self.frozen = n
        self._set_frozen(self._frozen_for(self.strategy))

    # -- strategy state --------------------------------------------------------------------
    def _cache_level(self, strategy: str) -> int:
        """What ``prepare`` computes under ``strategy``: the features, the frozen prefix, or nothing (0)."""
        options = self.options
        if strategy == "feature-extractor" and options.cache:
            return FEATURES
        if strategy == "fine-tune-top" and self.backbone.cacheable_prefix and options.cache and not options.unfreeze_per_boundary:
            return self.top_frozen
        return 0

    @property
    def warmup_samples(self) -> int:
        """The kernel's warm-up window: auto decides on it before anything is prepared, so it can still cache."""
        return self.options.warmup_samples if self.strategy == "auto" else 0

    def _frozen_for(self, strategy: str) -> int:
        n = len(self.backbone.units)
        return {"fine-tune-top": self.top_frozen, "fine-tune-all": 0}.get(strategy, n)

    def _set_frozen(self, frozen: int) -> None:
        self.frozen = frozen
        for i, unit in enumerate(self.backbone.units):
            unit.requires_grad_(i >= frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if mode:
            for unit in self.backbone.units[: self.frozen]:
                unit.eval()
            if not self.options.train_bn:
                for module in self.backbone.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def set_strategy(self, strategy: str) -> None:
        """Switch to ``strategy`` (auto's decision, at run start: nothing is prepared yet, so what
        ``prepare`` caches may change with the freezing)."""
        self.strategy = strategy
        self.cached = self._cache_level(strategy)
        self._set_frozen(self._frozen_for(strategy))
        self.model_spec.options["strategy"] = strategy

    def unfreeze(self, blocks: int) -> int:
        """Unfreeze up to ``blocks`` more blocks, top first (gradual unfreezing); returns how many."""
        lowest = max(self.cached if self.cached > 0 else 0, self.frozen - blocks)
        count = self.frozen - lowest
        if count > 0:
            self._set_frozen(lowest)
        return count

    # -- the kernel's optional members -----------------------------------------------------
    @property
    def prepare_host(self):
        """The host part of ``prepare``, a text backbone's tokenizer (``adapt``), on CPU tensors; None
        for other backbones, which then run exactly as without the member. The kernel runs it on
        the reader thread (see ``register_models``); ``prepare`` passes its output through."""
        return self.backbone.adapt if self.backbone.adapt_on_host else None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone
        if self.cached == FEATURES:
            return backbone.features(backbone.adapt(x))
        if self.cached > 0:
            return backbone.prefix(backbone.adapt(x), self.cached)
        return backbone.adapt(x) if backbone.adapt_in_prepare else x

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        features = x if self.cached == FEATURES else self.features_of(x)
        return self.head(self.drop(features), task)

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of a prepared input (when prepare does not compute them)."""
        a = x if (self.cached > 0 or self.backbone.adapt_in_prepare) else self.backbone.adapt(x)
        return self.backbone.features(a, start=self.cached)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]
        units = self.backbone.units
        n = len(units)
        if self.cached == FEATURES:
            return groups
        if self.strategy == "auto" or self.options.unfreeze_per_boundary:
            # Blocks that may be unfrozen later are in the optimizer from the start (no gradient while frozen).
            first = max(self.cached, 0)
        else:
            first = self.frozen
        scale = self.options.backbone_lr_scale
        if first >= n or scale == 0:
            return groups
        if self.options.layer_decay == 1.0:
            params = [p for unit in units[first:] for p in unit.parameters()]
            groups.append({"params": params, "lr": lr * scale, "name": "backbone"})
        else:
            for i in range(n - 1, first - 1, -1):
                decay = self.options.layer_decay ** (n - 1 - i)
                groups.append({"params": list(units[i].parameters()), "lr": lr * scale * decay, "name": f"backbone.{i}"})
        return groups

    def lifecycle_hooks(self) -> TransferHooks:
        return TransferHooks(self)


def say(message: str) -> None:
    """One line on stderr (the progress bar's stream), so the decision is seen in the console."""
    print(f"lifelong-transfer: {message}", file=sys.stderr, flush=True)


class TransferHooks:
    """The model's lifecycle hooks: auto's warm-up and decision, and gradual unfreezing at boundaries.

    **auto** (see :mod:`lifelong_transfer.auto`). Data size: ``expected_samples``, else the reader's
    batch count × ``learner.batch_size`` (known at ``on_run_start``), per class. Similarity: linear
    probes compare backbone features with the raw inputs on the kernel's warm-up window
    (``run.warmup``, asked for by ``TransferModel.warmup_samples``), so the decision falls at run
    start, before anything is prepared, and the chosen strategy caches as it would if named. Every
    block is in the optimizer from the start (it was built before the decision). The decision is
    printed, written into the model spec (so every generation is rebuilt with the strategy it
    trained with), added to the next metrics as ``transfer/strategy`` (0 feature-extractor,
    1 fine-tune-top, 2 fine-tune-all), ``transfer/similarity``, ``transfer/probe_backbone``,
    ``transfer/probe_raw`` and ``transfer/samples_per_class``, and returned by ``on_run_end``.
    """

    def __init__(self, model: TransferModel):
        self.model = model
        self._report_pending = False
        self.unfrozen: list[dict[str, int]] = []

    @hookimpl
    def on_run_start(self, run) -> None:
        model = self.model
        if model.strategy != "auto":
            return
        expected = model.options.expected_samples
        if not expected:
            batch_size = run.learner.batch_size
            expected = (run.info.num_batches or 0) * batch_size
        classes = run.info.num_classes * max(run.info.num_tasks, 1)
        samples_per_class = expected / classes if expected else None
        features = raw = labels = None
        if run.warmup is not None:  # None only for an empty stream: the similarity stays unknown
            training = model.training
            model.eval()
            with torch.no_grad():
                x = model.prepare(run.warmup.x.to(run.device))
                features = model.features_of(x).float().cpu()
                raw = model.backbone.raw_probe(x).float().cpu()
            model.train(training)
            labels = run.warmup.y.cpu()
        options = model.options
        decision = auto.decide(
            samples_per_class, features, raw, labels,
            large_per_class=options.large_per_class, margin=options.similarity_margin,
        )
        model.decision = decision
        model.set_strategy(decision["strategy"])
        self._report_pending = True
        say("auto picked " + auto.describe(decision))

    @hookimpl
    def on_boundary(self, experience, model) -> None:
        own = self.model
        per = own.options.unfreeze_per_boundary
        if per and own.strategy == "fine-tune-top":
            count = own.unfreeze(per)
            if count:
                self.unfrozen.append({"boundary": experience.index, "blocks": count, "frozen": own.frozen})
                say(f"boundary {experience.index}: unfroze {count} block(s), {own.frozen} still frozen")

    @hookimpl(tryfirst=True)
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        # tryfirst: the keys are added before trackers read the dict (see docs/transfer.md, "logging").
        if not self._report_pending or self.model.decision is None:
            return
        self._report_pending = False
        metrics.update(auto.metrics(self.model.decision))

    @hookimpl
    def on_run_end(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        model = self.model
        result: dict[str, Any] = {"strategy": model.strategy, "frozen_blocks": model.frozen, "blocks": len(model.backbone.units)}
        notes = []
        if model.decision is not None:
            result["auto"] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in model.decision.items()}
            notes.append("auto picked " + auto.describe(model.decision))
        if self.unfrozen:
            result["unfrozen"] = self.unfrozen
            notes.append(f"unfroze {sum(u['blocks'] for u in self.unfrozen)} block(s) at boundaries, {model.frozen} still frozen")
        out: dict[str, Any] = {"transfer": result}
        if notes:
            out["message"] = "transfer: " + "; ".join(notes)  # the CLI prints a result's message
        return out
