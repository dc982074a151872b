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
dropout): in closed form for Linear, Conv2d and BatchNorm layers, from one forward and one
backward per chunk (see ``_closed_form_fisher``; the true Fisher draws its labels from that same
forward's logits), and with ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``) in
memory-bounded chunks for every other parameter. An anomaly detector (:mod:`lifelong.objective`)
has no predictive distribution to draw labels from: its Fisher is the empirical Fisher of its own
per-sample training loss (the reconstruction error), by ``torch.func`` for every parameter,
whatever ``fisher`` says. ``fisher = "true"`` draws ``y`` from the model's predictive distribution
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

from lifelong import hookimpl, resources
from lifelong.learner import forward
from lifelong.objective import is_detector, kept, sample_losses
from lifelong.types import Batch
from lifelong_strategies.anchors import Named, QuadraticAnchor, trainable

# Per-sample gradients of one chunk hold chunk × parameters numbers. On a CPU they are kept near
# cache size (16 MiB in float32), measured faster than larger chunks; accelerators get 32× that.
GRADIENT_ELEMENTS = 2**22
# The closed forms keep each covered layer's input and output for a chunk: up to 64 MiB of them on a
# CPU (about 140 28×28 images through the cnn), 32× that on accelerators.
ACTIVATION_ELEMENTS = 2**24
CHUNK = 1024  # samples per chunk at most


@dataclass
class EWCOptions:
    lambda_: float = field(default=100.0, metadata={"key": "lambda", "help": "penalty strength λ in (λ/2)·Σ F·(θ − θ*)²"})
    mode: Literal["separate", "online"] = field(default="separate", metadata={"help": "one penalty per past experience, or one running Fisher (online EWC)"})
    gamma: float = field(default=1.0, metadata={"help": "online mode: decay of the running Fisher, F ← γ·F + F_new"})
    fisher: Literal["true", "empirical"] = field(default="true", metadata={"help": "labels for the Fisher: sampled from the model (true) or the stream's (empirical)"})
    fisher_samples: int = field(default=1000, metadata={"help": "stream samples per experience the Fisher is estimated on (a uniform reservoir)"})

    def check(self) -> None:
        # lambda and gamma are finite numbers already: lifelong.options refuses NaN and infinity
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
    Fisher), from the logits of the forward pass the closed forms use anyway; with ``y`` given they
    are those labels (the empirical Fisher). Linear, Conv2d and BatchNorm layers use the closed forms
    of :func:`_closed_form_fisher`; every other parameter gets its per-sample gradients from
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
        if is_detector(model):  # no predictive distribution: the empirical Fisher of the model's own loss
            chunk = max(1, min(CHUNK, GRADIENT_ELEMENTS // sum(p.numel() for p in params.values())))
            for start in range(0, n, chunk):
                _per_sample_fisher(model, {k: p.detach() for k, p in params.items()}, x[start : start + chunk], None, None, fisher)
            return {name: f.div_(n).detach() for name, f in fisher.items()}
        scale = 1 if x.device.type == "cpu" else 32
        forms, per_sample = _closed_forms(model, x[:2], None if task is None else task[:2])
        covered = {name for names in forms.values() for name in names if name}
        rest = {name: p.detach() for name, p in params.items() if name not in covered}
        chunk = min(CHUNK, max(1, ACTIVATION_ELEMENTS * scale // max(per_sample, 1)))
        if rest:
            chunk = min(chunk, max(1, GRADIENT_ELEMENTS * scale // sum(p.numel() for p in rest.values())))
        for start in range(0, n, chunk):
            xs = x[start : start + chunk]
            ts = None if task is None else task[start : start + chunk]
            ys = None if y is None else y[start : start + chunk]
            ys = _closed_form_fisher(model, forms, xs, ys, ts, fisher, generator, GRADIENT_ELEMENTS * scale)
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
        outputs = functional_call(model, ({**frozen, **params}, buffers), args)
        return sample_losses(model, x[None], outputs, None if y is None else y[None]).sum()

    in_dims = (None, 0, None if y is None else 0, None if task is None else 0)
    grads = vmap(grad(loss), in_dims=in_dims)(params, x, y, task)
    for name, g in grads.items():  # once per chunk at a boundary, not per batch
        fisher[name].add_(g.square().sum(0))


def _closed_form_fisher(model, forms: dict, x, y, task, fisher: Named, generator, budget: int) -> torch.Tensor:
    """One forward (and one backward) over the chunk; adds Σ_n g_n² of every layer in ``forms``.

    Returns the labels: ``y``, or labels drawn from this forward's logits when ``y`` is None.

    Every closed form layer computes ``out = f(θ, a)`` from its input ``a``, so a sample's gradient
    of its parameters follows from ``a_n`` and ``δ_n``, the gradient of the loss at the layer's
    output for that sample; the ``δ_n`` are the rows of one batched backward of the summed loss
    (samples do not interact in eval mode), taken at the layers' outputs only (no parameter
    gradient is computed by autograd):

    - Linear: ``g_n = δ_n·a_nᵀ``, so ``Σ_n g_n² = (δ²)ᵀ·(a²)``: one matmul, per-sample gradients
      never materialised (by ``vmap`` they cost N × parameters memory traffic: 8–13× a training
      epoch on an MLP, measured; this costs less than one epoch);
    - Conv2d: ``g_n = δ_n·unfold(a_n)ᵀ`` (δ_n as output channels × positions), a batched matmul per
      group, in sub-chunks of ``budget`` numbers; bias ``Σ_positions δ_n``;
    - BatchNorm in eval mode (running statistics: an affine map per channel): weight
      ``Σ_positions δ_n·â_n`` with ``â = (a − mean)/√(var + ε)``, bias ``Σ_positions δ_n``.
    """
    saved: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(module, args, out):
        saved[module] = (args[0].detach(), out)  # the Fisher must not join the autograd graph (see above)

    handles = [module.register_forward_hook(keep) for module in forms]
    try:
        with torch.set_grad_enabled(bool(forms)):
            logits = forward(model, x, task)
    finally:
        for handle in handles:
            handle.remove()
    if y is None:  # the true Fisher: labels from the model's predictive distribution
        y = torch.multinomial(F.softmax(logits.detach(), dim=1), 1, generator=generator).squeeze(1)
    if not forms:
        return y
    loss = F.cross_entropy(logits, y, reduction="sum")
    modules = list(forms)
    deltas = torch.autograd.grad(loss, [saved[m][1] for m in modules], allow_unused=True)
    with torch.no_grad():
        for module, d in zip(modules, deltas):
            if d is None:  # the layer does not reach the loss (an unused head)
                continue
            a = saved[module][0]
            weight, bias = forms[module]
            if isinstance(module, torch.nn.Linear):
                d2 = d.square()
                if weight:
                    fisher[weight].addmm_(d2.T, a.square())
                if bias:
                    fisher[bias].add_(d2.sum(0))
                continue
            d = d.flatten(2) if d.dim() > 2 else d.unsqueeze(2)  # (samples, channels, positions)
            if bias:
                fisher[bias].add_(d.sum(2).square().sum(0))
            if not weight:
                continue
            if isinstance(module, torch.nn.Conv2d):
                _conv_weight_fisher(module, a, d, fisher[weight], budget)
            else:  # BatchNorm
                a = a.flatten(2) if a.dim() > 2 else a.unsqueeze(2)
                a_hat = (a - module.running_mean[:, None]) * torch.rsqrt(module.running_var + module.eps)[:, None]
                fisher[weight].add_((d * a_hat).sum(2).square().sum(0))
    return y


def _conv_weight_fisher(conv: torch.nn.Conv2d, a: torch.Tensor, d: torch.Tensor, out: torch.Tensor, budget: int) -> None:
    """Add Σ_n g_n² of a Conv2d weight: ``g_n = δ_n·unfold(a_n)ᵀ`` per group, in sub-chunks of ``budget``.

    ``a``: the layer's input (samples, C, H, W); ``d``: the loss gradient at its output (samples,
    out channels, positions).
    """
    groups, channels = conv.groups, d.shape[1]
    k = conv.weight[0].numel()  # (in channels / groups) × kernel positions
    step = max(1, budget // (groups * k * d.shape[2] + channels * k))
    for i in range(0, a.shape[0], step):
        u = F.unfold(a[i : i + step], conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (s, C·kh·kw, L)
        s, _, positions = u.shape
        delta = d[i : i + step].reshape(s, groups, channels // groups, positions)
        g = torch.matmul(delta, u.view(s, groups, k, positions).transpose(-1, -2))  # (s, groups, out / groups, k)
        out.add_(g.square().sum(0).view_as(out))  # (groups, out / groups, k) is the weight's layout


BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def _closed_forms(model: torch.nn.Module, x: torch.Tensor, task: torch.Tensor | None) -> tuple[dict, int]:
    """``{module: (weight name or None, bias name or None)}`` for the layers :func:`_closed_form_fisher` is exact for.

    Returns them with the numbers their inputs and outputs hold per sample. A probe forward checks
    that each is called once, on an input whose first dimension is the batch (Linear: (samples,
    features); Conv2d: (samples, channels, H, W) with zero padding given as numbers; BatchNorm: using
    running statistics), that neither its input nor its output is changed in place later (an in-place
    activation would move the gradient taken at the output), and that its trainable parameters are
    not shared with another module; the others go to ``torch.func``.
    """
    names = {id(p): n for n, p in trainable(model).items()}
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    calls: dict[torch.nn.Module, list] = {}

    def record(module, args, out):
        a = args[0] if args else None
        if isinstance(a, torch.Tensor) and isinstance(out, torch.Tensor):
            calls.setdefault(module, []).append((a, out, a._version, out._version))
        else:
            calls.setdefault(module, []).append(None)

    candidates = [
        m for m in model.modules()
        if type(m) in (torch.nn.Linear, torch.nn.Conv2d, *BATCHNORMS)
        and any(p is not None and id(p) in names for p in (m.weight, m.bias))
    ]
    handles = [m.register_forward_hook(record) for m in candidates]
    try:
        with torch.no_grad():
            forward(model, x, task)
    finally:
        for handle in handles:
            handle.remove()
    forms, per_sample = {}, 0
    for m in candidates:
        seen = calls.get(m, [])
        if len(seen) != 1 or seen[0] is None:
            continue
        a, out, a_version, out_version = seen[0]
        if a._version != a_version or out._version != out_version:
            continue
        if a.dim() == 0 or out.dim() == 0 or a.shape[0] != x.shape[0] or out.shape[0] != x.shape[0]:
            continue
        if type(m) is torch.nn.Linear and a.dim() != 2:
            continue
        if type(m) is torch.nn.Conv2d and (a.dim() != 4 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            continue
        if type(m) in BATCHNORMS and (m.running_mean is None or m.running_var is None or a.dim() < 2):
            continue
        params = [p for p in (m.weight, m.bias) if p is not None and id(p) in names]
        if any(uses[id(p)] != 1 for p in params):
            continue
        forms[m] = tuple(names.get(id(p)) if p is not None else None for p in (m.weight, m.bias))
        per_sample += (a.numel() + out.numel()) // x.shape[0]
    return forms, per_sample


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

    def state_dict(self) -> dict[str, Any]:
        data = self.samples()
        if data is None:
            return {"seen": self.seen}
        x, y, task = data
        return {"seen": self.seen, "x": x, "y": y, **({} if task is None else {"task": task})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        if "x" not in state:
            return
        x, y, task = state["x"], state["y"], state.get("task")
        device = self.generator.device if self.generator is not None else x.device
        k = len(y)
        self.x = x.new_empty((self.capacity + 1, *x.shape[1:]), device=device)
        self.y = y.new_empty(self.capacity + 1, device=device)
        self.task = None if task is None else task.new_empty(self.capacity + 1, device=device)
        self.x[:k].copy_(x)
        self.y[:k].copy_(y)
        if task is not None:
            self.task[:k].copy_(task)


class EWC:
    """EWC penalty in ``extra_loss``, Fisher samples in ``after_step``, consolidation at boundaries."""

    data_parallel = "each rank samples its own share; the Fisher is averaged over ranks at consolidation"

    def __init__(self, options: EWCOptions | None = None):
        self.options = options or EWCOptions()
        self.penalty = QuadraticAnchor()
        self.experiences = 0
        self.model: torch.nn.Module | None = None
        self.generator: torch.Generator | None = None
        self.reservoir = Reservoir(self.options.fisher_samples)
        self.world = None  # a data-parallel run's ranks (lifelong.distributed)

    @hookimpl
    def validate(self, run) -> None:
        """The Fisher samples (a reservoir on the device) and the penalty (importance and anchor per
        parameter, plus the Fisher being computed) must fit on the device."""
        info = run.info
        per_sample = resources.elements(info.input_shape) * resources.FLOAT_BYTES + 16
        parameters = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        resources.require(
            (self.options.fisher_samples + 1) * per_sample + 3 * parameters * resources.FLOAT_BYTES,
            f"ewc's {self.options.fisher_samples:,} Fisher samples of shape {tuple(info.input_shape)} and its "
            f"penalty over {parameters:,} parameters",
            "strategy.ewc.fisher_samples",
            run.device,
        )

    @hookimpl
    def on_run_start(self, run) -> None:
        self.model = run.model
        self.world = getattr(run, "world", None)  # a data-parallel run's ranks (absent from older run contexts)
        self.generator = torch.Generator(device=run.device).manual_seed(run.seed + 7919)
        self.reservoir = Reservoir(self.options.fisher_samples, self.generator)
        self.penalty.bind(run.model)

    @hookimpl
    def after_step(self, batch: Batch, first_pass: bool) -> None:
        if first_pass:  # extra epochs show the same samples again: sample each once
            self.reservoir.add(kept(batch))  # never a sample an anomaly detector's filter left out

    @hookimpl
    def extra_loss(self) -> torch.Tensor | None:
        return self.penalty.penalty(self.options.lambda_) if self.options.lambda_ else None

    @hookimpl
    def on_boundary(self, model: torch.nn.Module) -> None:
        data = self.reservoir.samples()
        if self.world is not None:  # every rank comes here, with or without samples: the average is collective
            self._consolidate_ranks(model, data)
            return
        if data is None:
            return
        x, y, task = data
        labels = y if self.options.fisher == "empirical" else None
        self.consolidate(model, fisher_diagonal(model, x, labels, task, self.generator))
        self.reservoir.clear()

    def _consolidate_ranks(self, model: torch.nn.Module, data: Any) -> None:
        """The Fisher of every rank's samples together: each rank's mean weighted by its sample count."""
        if data is None:
            fisher, count = {n: torch.zeros_like(p) for n, p in trainable(model).items()}, 0
        else:
            x, y, task = data
            labels = y if self.options.fisher == "empirical" else None
            fisher, count = fisher_diagonal(model, x, labels, task, self.generator), len(x)
        combined = self.world.average(fisher, count)
        if combined is not fisher or count:  # unchanged and empty: no rank had a sample
            self.consolidate(model, combined)
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
        # The Fisher samples of the span in hand and the generator make a mid-span checkpoint exact.
        state = {**self.penalty.state_dict(), "experiences": self.experiences, "fisher_samples": self.reservoir.state_dict()}
        if self.generator is not None:
            state["rng"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.penalty.load_state_dict(state)
        self.experiences = int(state["experiences"])
        if self.model is not None:
            self.penalty.bind(self.model)
        if self.generator is not None and "rng" in state:
            self.generator.set_state(state["rng"])
        if "fisher_samples" in state:
            self.reservoir.load_state_dict(state["fisher_samples"])

