"""Learning without Forgetting (Li & Hoiem 2017): keep the outputs close to the previous generation's.

At each boundary a frozen copy of the model becomes the teacher. Every later batch adds
``α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`` (Hinton's temperature-scaled distillation;
``T²`` keeps its gradients on the scale of the cross-entropy's), averaged over the batch's samples.
It is exactly zero while the model still equals its teacher (for models without dropout or
BatchNorm, whose training-mode outputs differ from the teacher's eval-mode ones).

Which outputs are distilled, by scenario:

- one head (class- and domain-incremental): only the logits of classes the teacher was trained
  on, softmaxed among themselves. The teacher's logits for classes it never saw carry no
  knowledge, and distilling them would hold the new classes down (the same choice as Avalanche's
  "active units"). Seen classes are marked on the device in ``after_step`` (an ``index_fill_``,
  no host read) and turned into an index once per boundary.
- one head per task (task-incremental): as in the paper, the old tasks' heads on the new data. The
  batch is evaluated under every task the teacher knew (one forward of ``len(batch) × old tasks``
  samples through student and teacher), each head's KL summed, then averaged over samples.
- an anomaly detector (:mod:`lifelong.objective`), whose outputs are reconstructions, not
  logits: ``α·‖student − teacher‖²`` per sample, averaged over the batch (its outputs anchored to
  the teacher's).

>>> import torch
>>> from lifelong.types import Batch
>>> from lifelong_strategies.lwf import LwF, LwFOptions
>>> model = torch.nn.Linear(4, 3)
>>> lwf = LwF(LwFOptions(alpha=1.0, temperature=2.0))
>>> batch = Batch(x=torch.randn(8, 4), y=torch.tensor([0, 1] * 4))
>>> lwf.after_step(batch)
>>> lwf.on_boundary(model)
>>> lwf.extra_loss(batch, model(batch.x), model).item()  # the model equals its teacher
0.0
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lifelong import hookimpl
from lifelong.learner import forward
from lifelong.objective import is_detector
from lifelong.types import Batch


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


@dataclass
class LwFOptions:
    alpha: float = field(default=1.0, metadata={"help": "weight α of the distillation loss"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T of teacher and student"})

    def check(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must not be negative, got {self.alpha}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # logits / T overflows float32 near 0
            raise ValueError(f"temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {self.temperature}")


class LwF:
    """Distils from the model of the last boundary; tracks the classes and tasks it was trained on."""

    data_parallel = "each rank distils its own batches from the replicated previous model"

    def __init__(self, options: LwFOptions | None = None):
        self.options = options or LwFOptions()
        self.model: torch.nn.Module | None = None
        self.teacher: torch.nn.Module | None = None
        self.multi_head = False
        self.classes: torch.Tensor | None = None  # bool per class of a head: seen in the stream
        self.tasks: torch.Tensor | None = None  # bool per task: seen in the stream
        self.old_classes: torch.Tensor | None = None  # indices the teacher knows (one head)
        self.old_tasks: torch.Tensor | None = None  # task ids the teacher knows (task heads)
        self._pending: dict[str, Any] | None = None  # state loaded before the model was known
        self.detector = False

    @hookimpl
    def on_run_start(self, run) -> None:
        self.model = run.model
        self.multi_head = run.info.num_tasks > 1
        # An anomaly detector's outputs are reconstructions, not logits: they are anchored by squared error.
        self.detector = is_detector(run.model)
        self.classes = None if self.detector else torch.zeros(run.info.num_classes, dtype=torch.bool, device=run.device)
        self.tasks = torch.zeros(run.info.num_tasks, dtype=torch.bool, device=run.device)
        if self._pending is not None:
            self.load_state_dict(self._pending)

    @hookimpl
    def after_step(self, batch: Batch) -> None:
        if self.classes is not None:  # None when used outside a run: then every logit is distilled
            self.classes.index_fill_(0, batch.y, True)
        if batch.task is not None and self.tasks is not None:
            self.tasks.index_fill_(0, batch.task, True)

    @hookimpl
    def on_boundary(self, model: torch.nn.Module) -> None:
        self.teacher = _frozen_copy(model)
        # One host read per boundary: the index of what the teacher knows.
        self.old_classes = None if self.classes is None else self.classes.nonzero().flatten()
        self.old_tasks = self.tasks.nonzero().flatten() if self.multi_head else None

    @hookimpl
    def extra_loss(self, batch: Batch, outputs: torch.Tensor, model: torch.nn.Module) -> torch.Tensor | None:
        if self.teacher is None or not self.options.alpha:
            return None
        if self.detector:
            with torch.no_grad():
                target = forward(self.teacher, batch.x, batch.task)
            return self.options.alpha * F.mse_loss(outputs, target, reduction="sum") / len(batch)
        if self.multi_head:
            old = self.old_tasks
            x = batch.x.repeat(len(old), *[1] * (batch.x.dim() - 1))  # task-major copies of the batch
            task = old.repeat_interleave(len(batch))
            student = forward(model, x, task)
            with torch.no_grad():
                target = forward(self.teacher, x, task)
        else:
            with torch.no_grad():
                target = forward(self.teacher, batch.x, batch.task)
            student = outputs
            if self.old_classes is not None:
                student, target = student.index_select(1, self.old_classes), target.index_select(1, self.old_classes)
        t = self.options.temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(target / t, dim=1), reduction="sum", log_target=True)
        return self.options.alpha * t * t * kl / len(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "classes": self.classes,
            "tasks": self.tasks,
            # what the teacher knows, fixed at the last boundary (classes above keep growing after it)
            "old_classes": self.old_classes,
            "old_tasks": self.old_tasks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.model is None:  # the teacher needs the model's architecture: wait for on_run_start
            self._pending = state
            return
        self._pending = None
        device = next(self.model.parameters()).device
        known = {name: state.get(f"old_{name}") for name in ("classes", "tasks")}
        if state.get("teacher") is not None and "old_classes" not in state:  # saved before old_* were kept
            known = {name: state.get(name) for name in ("classes", "tasks")}
        for name in ("classes", "tasks"):
            if state.get(name) is not None:
                setattr(self, name, state[name].to(device))
        if state.get("teacher") is not None:
            teacher = copy.deepcopy(self.model)
            teacher.load_state_dict(state["teacher"])
            self.teacher = _frozen_copy(teacher)
            old_classes, old_tasks = known["classes"], known["tasks"]
            if old_classes is not None and old_classes.dtype == torch.bool:
                old_classes = old_classes.nonzero().flatten()
            if old_tasks is not None and old_tasks.dtype == torch.bool:
                old_tasks = old_tasks.nonzero().flatten()
            self.old_classes = None if old_classes is None else old_classes.to(device)
            self.old_tasks = old_tasks.to(device) if self.multi_head and old_tasks is not None else None


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher
