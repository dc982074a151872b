"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), separate or online (Schwarz et al. 2018).

After each experience the diagonal Fisher information ``F`` of the model is estimated on up to
``fisher_samples`` of the experience's stream samples, and later training pays
``(λ/2)·Σ_k Σ_i F_k,i·(θ_i − θ*_k,i)²`` for moving important weights away from their values ``θ*_k``
at the end of experience ``k``.

- ``mode = "separate"``: one penalty per past experience, each with its own Fisher and anchor.
  Kept as one quadratic, exactly: ``Σ_k F_k(θ − θ*_k)² = A(θ − m)² + c`` with ``A = Σ_k F_k``,
  ``m = Σ_k F_k θ*_k / A`` (the Fisher-weighted mean of the anchors) and ``c = Σ_k F_k(θ*_k − m)²``,
  updated at each consolidation. So the per-batch cost does not grow with the number of
  experiences, and memory stays two vectors of the model's size (completing the square instead of
  expanding ``θ²A − 2θB + C`` avoids cancellation when ``θ`` is near the anchors).
- ``mode = "online"`` (Progress & Compress): one running Fisher ``F ← γ·F + F_new``, anchored at
  the weights of the last consolidation.

The Fisher is the mean over samples of the squared per-sample gradient of ``−log p(y|x)`` (not
squared minibatch gradients), with the model in eval mode (BatchNorm running statistics, no
dropout): in closed form for Linear layers (one matmul per layer, see ``_linear_fisher``), and
with ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``) in memory-bounded chunks for
every other parameter. ``fisher = "true"`` draws ``y`` from the model's predictive distribution
(the Fisher information of the model); ``"empirical"`` uses the stream labels. The samples are a
uniform reservoir (Vitter's algorithm R) of the experience's stream batches (first pass only, so
extra epochs do not count a sample twice), kept on the training device (``fisher_samples`` inputs
of memory) and filled without host synchronisation.

>>> import lifelong_strategies.ewc as ewc
>>> strategy = ewc.EWC(ewc.EWCOptions(lambda_=100.0, mode="online", gamma=0.9))
>>> strategy.state_dict()["experiences"]
0
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from lifelong import hookimpl
from lifelong.learner import forward
from lifelong.types import Batch
from lifelong_strategies.anchors import Named, QuadraticAnchor, trainable

# Per-sample gradients of one chunk hold chunk × parameters numbers. On a CPU they are kept near
# cache size (16 MiB in float32), measured faster than larger chunks; accelerators get 32× that.
GRADIENT_ELEMENTS = 2**22
CHUNK = 1024  # samples per chunk when every parameter has the closed form (memory: activations only)


@dataclass
class EWCOptions:
    lambda_: float = field(default=100.0, metadata={"key": "lambda", "help": "penalty strength λ in (λ/2)·Σ F·(θ − θ*)²"})
    mode: Literal["separate", "online"] = field(default="separate", metadata={"help": "one penalty per past experience, or one running Fisher (online EWC)"})
    gamma: float = field(default=1.0, metadata={"help": "online mode: decay of the running Fisher, F ← γ·F + F_new"})
    fisher: Literal["true", "empirical"] = field(default="true", metadata={"help": "labels for the Fisher: sampled from the model (true) or the stream's (empirical)"})
    fisher_samples: int = field(default=1000, metadata={"help": "stream samples per experience the Fisher is estimated on (a uniform reservoir)"})

    def check(self) -> None:
        if self.lambda_ < 0:
            raise ValueError(f"lambda must not be negative, got {self.lambda_}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.fisher_samples < 1:
            raise ValueError(f"fisher_samples must be at least 1, got {self.fisher_samples}")


def fisher_diagonal(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    task: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Named:
    """Mean over samples of the squared per-sample gradient of ``−log p(y|x)``, by parameter name.

    With ``y`` None the labels are drawn from the model's own predictive distribution (the true
    Fisher); with ``y`` given they are those labels (the empirical Fisher). Linear layers use the
    closed form of :func:`_linear_fisher`; every other parameter gets its per-sample gradients from
    ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``).
    """
    params = trainable(model)
    fisher = {n: torch.zeros_like(p, memory_format=torch.contiguous_format) for n, p in params.items()}
    n = x.shape[0]
    if n == 0 or not params:
        return fisher
    was_training = model.training
    model.eval()  # BatchNorm running statistics, no dropout: samples are independent
    try:
        linears = _closed_form_linears(model, x[:2], None if task is None else task[:2])
        covered = {name for names in linears.values() for name in names if name}
        rest = {name: p.detach() for name, p in params.items() if name not in covered}
        budget = GRADIENT_ELEMENTS * (1 if x.device.type == "cpu" else 32)
        chunk = max(1, budget // sum(p.numel() for p in rest.values())) if rest else CHUNK
        for start in range(0, n, chunk):
            xs = x[start : start + chunk]
            ts = None if task is None else task[start : start + chunk]
            if y is None:
                with torch.no_grad():
                    probs = F.softmax(forward(model, xs, ts), dim=1)
                ys = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                ys = y[start : start + chunk]
            if linears:
                _linear_fisher(model, linears, xs, ys, ts, fisher)
            if rest:
                _per_sample_fisher(model, rest, xs, ys, ts, fisher)
    finally:
        model.train(was_training)
    return {name: f.div_(n).detach() for name, f in fisher.items()}


def _per_sample_fisher(model, params: Named, x, y, task, fisher: Named) -> None:
    """Add Σ_n g_n² over the chunk, from per-sample gradients by ``torch.func``."""
    buffers = dict(model.named_buffers())
    # Every other parameter enters detached too: a live one would tie the Fisher to the autograd
    # graph and keep this consolidation's activations alive for the rest of the run.
    frozen = {name: p.detach() for name, p in model.named_parameters() if name not in params}

    def loss(params, x, y, task):
        args = (x[None],) if task is None else (x[None], task[None])
        return F.cross_entropy(functional_call(model, ({**frozen, **params}, buffers), args), y[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0, None if task is None else 0))(params, x, y, task)
    for name, g in grads.items():  # once per chunk at a boundary, not per batch
        fisher[name].add_(g.square().sum(0))


def _linear_fisher(model, linears: dict, x, y, task, fisher: Named) -> None:
    """Add Σ_n g_n² over the chunk for Linear layers, without materialising per-sample gradients.

    A sample's gradient of a Linear weight is the outer product ``δ_n·a_nᵀ`` of the gradient at the
    layer's output and its input, so ``Σ_n (δ_n·a_nᵀ)² = (δ²)ᵀ·(a²)``: one matmul. The ``δ_n`` are
    the rows of one batched backward of the summed loss, since samples do not interact in eval mode.
    (Per-sample gradients by ``vmap`` cost N × parameters memory traffic: 8–13× a training epoch
    on an MLP, measured; this costs less than one epoch.)
    """
    inputs, outputs = [], []

    def keep(module, args, out):
        inputs.append(args[0].detach())  # the Fisher must not join the autograd graph (see above)
        outputs.append(out)

    handles = [module.register_forward_hook(keep) for module in linears]
    try:
        loss = F.cross_entropy(forward(model, x, task), y, reduction="sum")
    finally:
        for handle in handles:
            handle.remove()
    deltas = torch.autograd.grad(loss, outputs, allow_unused=True)
    for (weight, bias), a, d in zip(linears.values(), inputs, deltas):
        if d is None:  # the layer does not reach the loss (an unused head)
            continue
        d2 = d.square()
        fisher[weight].addmm_(d2.T, a.square())
        if bias:
            fisher[bias].add_(d2.sum(0))


def _closed_form_linears(model: torch.nn.Module, x: torch.Tensor, task: torch.Tensor | None) -> dict:
    """``{module: (weight name, bias name or None)}`` for the Linear layers :func:`_linear_fisher` is exact for.

    A probe forward checks each is called once, on a (samples, features) input, and that its
    parameters are trainable and not shared with another module; the others go to ``torch.func``.
    """
    names = {id(p): n for n, p in trainable(model).items()}
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    calls: dict[torch.nn.Module, list] = {}
    candidates = [m for m in model.modules() if type(m) is torch.nn.Linear and id(m.weight) in names]
    handles = [m.register_forward_hook(lambda m, args, out: calls.setdefault(m, []).append(args[0].shape)) for m in candidates]
    try:
        with torch.no_grad():
            forward(model, x, task)
    finally:
        for handle in handles:
            handle.remove()
    linears = {}
    for m in candidates:
        shapes = calls.get(m, [])
        bias = m.bias
        if len(shapes) != 1 or len(shapes[0]) != 2 or shapes[0][0] != x.shape[0]:
            continue
        if uses[id(m.weight)] != 1 or (bias is not None and uses[id(bias)] != 1):
            continue
        linears[m] = (names[id(m.weight)], names.get(id(bias)) if bias is not None else None)
    return linears


class Reservoir:
    """A uniform sample of at most ``capacity`` stream samples (algorithm R), on the device.

    Vectorised per batch: sample ``t`` (counting from 0) takes slot ``t`` while the reservoir fills,
    then a uniform slot in ``[0, t]``, kept if below ``capacity``. Rejected samples are written to
    one spare row instead of being filtered out, so nothing reads the device. Two samples of one
    batch drawing the same slot resolve in an unspecified order (a negligible bias).
    """

    def __init__(self, capacity: int, generator: torch.Generator | None = None):
        self.capacity = capacity
        self.generator = generator
        self.seen = 0
        self.x = self.y = self.task = None

    def add(self, batch: Batch) -> None:
        n, cap, device = len(batch), self.capacity, batch.y.device
        if self.x is None:
            self.x = batch.x.new_empty((cap + 1, *batch.x.shape[1:]))
            self.y = batch.y.new_empty(cap + 1)
            self.task = None if batch.task is None else batch.task.new_empty(cap + 1)
        t = torch.arange(self.seen, self.seen + n, device=device)
        draw = (torch.rand(n, device=device, generator=self.generator) * (t + 1)).long()
        slot = torch.where(t < cap, t, torch.minimum(draw, t))  # minimum: float rounding up to t + 1
        slot = torch.where(slot < cap, slot, cap)  # the spare row
        self.x.index_copy_(0, slot, batch.x)
        self.y.index_copy_(0, slot, batch.y)
        if self.task is not None and batch.task is not None:
            self.task.index_copy_(0, slot, batch.task)
        self.seen += n

    def samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        if self.x is None:
            return None
        k = min(self.seen, self.capacity)
        return self.x[:k], self.y[:k], None if self.task is None else self.task[:k]

    def clear(self) -> None:
        self.seen = 0


class EWC:
    """EWC penalty in ``extra_loss``, Fisher samples in ``after_step``, consolidation at boundaries."""

    def __init__(self, options: EWCOptions | None = None):
        self.options = options or EWCOptions()
        self.penalty = QuadraticAnchor()
        self.experiences = 0
        self.model: torch.nn.Module | None = None
        self.generator: torch.Generator | None = None
        self.reservoir = Reservoir(self.options.fisher_samples)

    @hookimpl
    def on_run_start(self, run) -> None:
        self.model = run.model
        self.generator = torch.Generator(device=run.device).manual_seed(run.seed + 7919)
        self.reservoir = Reservoir(self.options.fisher_samples, self.generator)
        self.penalty.bind(run.model)

    @hookimpl
    def after_step(self, batch: Batch, first_pass: bool) -> None:
        if first_pass:  # extra epochs show the same samples again: sample each once
            self.reservoir.add(batch)

    @hookimpl
    def extra_loss(self) -> torch.Tensor | None:
        return self.penalty.penalty(self.options.lambda_) if self.options.lambda_ else None

    @hookimpl
    def on_experience_end(self, model: torch.nn.Module) -> None:
        data = self.reservoir.samples()
        if data is None:
            return
        x, y, task = data
        labels = y if self.options.fisher == "empirical" else None
        self.consolidate(model, fisher_diagonal(model, x, labels, task, self.generator))
        self.reservoir.clear()

    def consolidate(self, model: torch.nn.Module, fisher: Named) -> None:
        """Fold in the Fisher of the experience just ended, anchored at the current weights."""
        online = self.options.mode == "online"
        theta = {n: p.detach() for n, p in trainable(model).items()}
        old_f, old_m = self.penalty.importance or {}, self.penalty.anchor
        gamma = self.options.gamma if online else 1.0
        importance = {n: gamma * f for n, f in old_f.items()}  # parameters gone from the model keep their terms
        anchor = dict(old_m)
        constant = self.penalty.constant
        for n, f in fisher.items():  # a loop over parameters, but once per boundary
            if n not in old_f or old_f[n].shape != f.shape:  # new (or reshaped): its first penalty
                importance[n], anchor[n] = f.clone(), theta[n].clone()
                continue
            a, total = importance[n], importance[n] + f
            if online:
                m = theta[n].clone()
            else:  # A(θ − m)² + c: moving the mean adds A(m_old − m)², the new term F(θ* − m)²
                m = torch.where(total > 0, (a * old_m[n] + f * theta[n]) / total, theta[n])
                constant = constant + (a * (old_m[n] - m).square() + f * (theta[n] - m).square()).sum()
            importance[n], anchor[n] = total, m
        self.penalty.set(model, importance, anchor, 0.0 if online else constant)
        self.experiences += 1

    def state_dict(self) -> dict[str, Any]:
        return {**self.penalty.state_dict(), "experiences": self.experiences}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.penalty.load_state_dict(state)
        self.experiences = int(state["experiences"])
        if self.model is not None:
            self.penalty.bind(self.model)

