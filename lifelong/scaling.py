"""Input scaling kept inside the model: running per-feature standardisation (``normalize = "standard"``).

A reader that offers ``normalize`` sets :attr:`lifelong.types.StreamInfo.normalize`; every model
the kernel builds from a stream info (:func:`lifelong.components.construct`: the run's model,
an initializer's architecture, a served or continued generation) is then wrapped in
:class:`Standardize`. Its statistics are **buffers of the model** (``input_count``,
``input_mean``, ``input_m2``), so everything that already carries a model's ``state_dict`` carries
them too, with no machinery of its own: generations (MLflow ``weights.safetensors``),
checkpoints and ``--resume``, the promotion gate's champion swap, the ``file`` and ``mlflow``
initializers. A served generation therefore applies exactly the scaling it was trained with:
the statistics frozen at its boundary.

**What is counted.** The statistics grow from each *stream* batch once, after its optimizer step,
through the model's own lifecycle hook ``after_step`` (``first_pass``): never from replayed
samples (``augment_batch``), extra epochs (``learner.epochs > 1``), held-out sets or served
requests. The update is a parallel (Chan et al. 1979) merge of the batch's mean and sum of
squared deviations into the running ones, in float64, on the training device: a few tensor ops
per batch, no host synchronisation.

**What is applied.** ``forward(x, *args)`` feeds the inner model ``(x - mean) / std`` with the
statistics as of now (population variance, as scikit-learn's ``StandardScaler``), per input
element: per feature for flat inputs, per pixel for images. Before any sample the transform is
the identity (the first batch trains and is scored on raw inputs; prequential accuracy never
sees statistics of the batch it predicts). A feature whose standard deviation is zero (constant
so far) is only centred, not divided, as scikit-learn does, so a served value that differs from
the constant does not explode.

**Refused.** A model with a ``prepare`` step (a frozen pretrained backbone expects the raw inputs
its weights were trained on, and brings its own input normalisation): UserError, exit status 2.

>>> import torch
>>> from lifelong.types import StreamInfo
>>> model = standardized(torch.nn.Identity(), StreamInfo(input_shape=(2,), num_classes=2, normalize="standard"))
>>> model(torch.tensor([[1.0, 10.0]])).tolist()   # no sample yet: the identity
[[1.0, 10.0]]
>>> model.update(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
>>> model(torch.tensor([[1.0, 10.0], [3.0, 40.0]])).tolist()
[[0.0, -1.0], [2.0, 2.0]]
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pluggy
import torch
from torch import nn

from lifelong import hookimpl
from lifelong.errors import UserError
from lifelong.objective import is_detector
from lifelong.types import Batch, StreamInfo

NORMALIZE = ("none", "standard")  # the values readers offer; "none" is StreamInfo.normalize = None

# The optional model members of ``register_models`` that a wrapper must pass through (besides
# ``lifecycle_hooks``, which it composes, and ``prepare``, which it refuses). A member that takes
# raw inputs must NOT be added here: it would bypass the scaling.
DELEGATED = frozenset({"param_groups", "model_spec", "warmup_samples", "continues", "continued_state"})

# sklearn's StandardScaler: a standard deviation below this is taken as zero (the feature is only centred).
TINY_STD = 10 * torch.finfo(torch.float64).eps


def normalize_value(option: str) -> str | None:
    """A reader's ``normalize`` option as :attr:`StreamInfo.normalize` (``"none"`` is None)."""
    return None if option == "none" else option


def standardized(model: nn.Module, info: StreamInfo, where: str = "model") -> nn.Module:
    """``model`` wrapped in :class:`Standardize` when ``info.normalize`` asks for it, else ``model``.

    Idempotent at the top: a model that is a Standardize already (an initializer's architecture,
    wrapped when it was built) is returned as it is, so scaling is applied once. So is an anomaly
    detector (:func:`lifelong.objective.is_detector`): its score is defined in the standardised
    space it keeps itself (its loss and score take raw inputs), so a second scaling outside would
    only make the wrapper's raw inputs disagree with its own. Raises UserError
    for an unknown ``normalize`` (a third-party reader's, or an edited ``model.json``) and for a
    model with a ``prepare`` step.
    """
    kind = info.normalize
    if kind is None or kind == "none":
        return model
    if kind != "standard":
        raise UserError(
            f"{where}: the stream asks for normalize = {kind!r}, which lifelong does not know; "
            f"the choices are {', '.join(repr(k) for k in NORMALIZE)} (stream.normalize)"
        )
    if isinstance(model, Standardize) or is_detector(model):
        return model
    if getattr(model, "prepare", None) is not None:
        raise UserError(
            f"stream.normalize = 'standard' cannot be used with this model ({where}): it has a frozen prepare() "
            "step (a pretrained backbone), which expects the raw inputs its weights were trained on and "
            "normalises them itself. Set stream.normalize = 'none' for it"
        )
    return Standardize(model, tuple(int(d) for d in info.input_shape))


class Standardize(nn.Module):
    """``inner`` fed standardised inputs; the running statistics are this module's buffers.

    See the module docstring for what is counted and what is applied. The optional model members
    the kernel reads (:data:`DELEGATED`) come from ``inner`` unless set on the wrapper itself (an
    initializer sets ``model_spec`` and ``continues`` on the model it returns);
    ``lifecycle_hooks()`` is the statistics' own hook composed with ``inner``'s.
    """

    def __init__(self, inner: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        self.inner = inner
        # float64: a stream's running sums must not lose the small variances of large-valued features
        self.register_buffer("input_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("input_mean", torch.zeros(input_shape, dtype=torch.float64))
        self.register_buffer("input_m2", torch.zeros(input_shape, dtype=torch.float64))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            if name in DELEGATED:
                return getattr(self._modules["inner"], name)
            raise

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.inner(self.scale(x), *args, **kwargs)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with the statistics as of now, in ``x``'s float dtype; identity before any sample."""
        if not x.is_floating_point():
            x = x.float()
        # Count 0: m2 and mean are 0, so std is 0 and the divisor falls back to 1 (the identity).
        std = (self.input_m2 / self.input_count.clamp(min=1.0)).sqrt()
        divisor = torch.where(std > TINY_STD, std, torch.ones_like(std))
        return (x - self.input_mean.to(x.dtype)) / divisor.to(x.dtype)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the samples ``x`` (N, *input_shape) into the running statistics (Chan's parallel update).

        Device-side only: ``n`` is the batch's length, known on the host, and every other value stays
        a tensor, so a training step is never synchronised by it.
        """
        n = x.shape[0]
        if n == 0:
            return
        batch = x.to(torch.float64)
        batch_mean = batch.mean(dim=0)
        batch_m2 = (batch - batch_mean).square().sum(dim=0)
        count = self.input_count
        total = count + n
        delta = batch_mean - self.input_mean
        self.input_mean.add_(delta * (n / total))
        self.input_m2.add_(batch_m2 + delta.square() * (count * n / total))
        count.copy_(total)

    def statistics(self) -> dict[str, torch.Tensor]:
        """CPU copies of the count, mean and (population) standard deviation, for reports and tests (synchronises)."""
        std = (self.input_m2 / self.input_count.clamp(min=1.0)).sqrt()
        return {"count": self.input_count.cpu(), "mean": self.input_mean.cpu(), "std": std.cpu()}

    def lifecycle_hooks(self) -> ScalingHooks:
        inner = getattr(self._modules["inner"], "lifecycle_hooks", None)
        return ScalingHooks(self, inner() if inner is not None else None)


class ScalingHooks:
    """The wrapper's lifecycle hooks: ``after_step`` feeds the statistics, then every hook of the
    inner model's own hooks object runs as it would have on its own.

    The kernel registers one hooks object per model (``model:hooks``), so the inner model's hook
    implementations are forwarded from here: each becomes an attribute of this object that calls
    it, carrying its hookimpl options and signature (pluggy reads them through ``__wrapped__``).
    The inner ``after_step``, if any, is called from this one, after the statistics are updated.
    """

    def __init__(self, model: Standardize, inner: Any = None):
        self.model = model
        self.inner = inner
        self._inner_after_step = None
        if inner is None:
            return
        parser = pluggy.PluginManager("lifelong")
        for name in dir(inner):
            if name.startswith("_") or parser.parse_hookimpl_opts(inner, name) is None:
                continue
            target = getattr(inner, name)
            if name == "after_step":
                self._inner_after_step = target
            else:
                setattr(self, name, _forwarder(target))

    @hookimpl
    def after_step(self, batch: Batch, outputs: torch.Tensor, first_pass: bool) -> None:
        if first_pass:  # each stream sample once: not again in the extra epochs
            self.model.update(batch.x)
        if self._inner_after_step is not None:
            arguments = {"batch": batch, "outputs": outputs, "first_pass": first_pass}
            names = inspect.signature(self._inner_after_step).parameters  # a hook may take fewer arguments
            self._inner_after_step(**{n: arguments[n] for n in names})


def _forwarder(target: Any) -> Any:
    """A plain function calling the bound hook ``target``, with its signature and hookimpl marker."""

    @functools.wraps(target)
    def forward(*args: Any, **kwargs: Any) -> Any:
        return target(*args, **kwargs)

    return forward
