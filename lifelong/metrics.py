"""Continual-learning metrics over the accuracy matrix, and running metrics kept on the device.

``R[j][i]`` is the accuracy on experience i's held-out data after generation j. With T
generations over T experiences (one generation per experience), following Lopez-Paz & Ranzato
(2017, "Gradient Episodic Memory for Continual Learning"):

- ACC = 1/T Σ_i R[T-1][i]
- BWT = 1/(T-1) Σ_{i<T-1} (R[T-1][i] − R[i][i])
- FWT = 1/(T-1) Σ_{i≥1} (R[i-1][i] − b_i), b_i the accuracy of the initial model on experience i

and forgetting as in Chaudhry et al. (2018, "Riemannian Walk"): the mean over i < T-1 of
max_{l<T-1} R[l][i] − R[T-1][i]. Entries may be None where an experience's held-out data was not
known yet at that generation; a metric whose terms are all unknown is None.

BWT, FWT and forgetting compare generation i with experience i, so they mean something only when
generations align with experiences: exactly one generation per experience column, generation j
trained on experience ``columns[j]`` alone (:func:`aligned`). Otherwise (window or drift
boundaries, a generation spanning two experiences) :func:`summarize` reports them as None, even
when the matrix happens to be square; ACC is always reported.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple, Optional

import torch

from lifelong.checkpoint import to_cpu
from lifelong.ranking import ScoreHistogram

Matrix = list[list[Optional[float]]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def acc(matrix: Matrix) -> float | None:
    if not matrix:
        return None
    return _mean([v for v in matrix[-1] if v is not None])


def bwt(matrix: Matrix) -> float | None:
    t = len(matrix)
    if t < 2 or any(len(row) != t for row in matrix):
        return None
    last = matrix[-1]
    return _mean([last[i] - matrix[i][i] for i in range(t - 1) if last[i] is not None and matrix[i][i] is not None])


def fwt(matrix: Matrix, initial: list[float | None]) -> float | None:
    t = len(matrix)
    if t < 2 or any(len(row) != t for row in matrix) or len(initial) != t:
        return None
    terms = [
        matrix[i - 1][i] - initial[i] for i in range(1, t) if matrix[i - 1][i] is not None and initial[i] is not None
    ]
    return _mean(terms)


def forgetting(matrix: Matrix) -> float | None:
    t = len(matrix)
    if t < 2:
        return None
    last = matrix[-1]
    terms = []
    for i in range(min(len(last), t) - 1):
        earlier = [matrix[l][i] for l in range(t - 1) if i < len(matrix[l]) and matrix[l][i] is not None]
        if earlier and last[i] is not None:
            terms.append(max(earlier) - last[i])
    return _mean(terms)


def aligned(spans: list[list[int]], columns: list[int]) -> bool:
    """True iff generations align with experiences: one generation per experience column, and
    generation j was trained on exactly experience ``columns[j]`` (``spans[j] == [columns[j]]``).

    ``spans[j]`` is the list of experience ids generation j was trained on, ``columns`` the
    experience ids of the accuracy matrix's columns, in order.
    """
    return len(spans) == len(columns) and all(list(span) == [column] for span, column in zip(spans, columns))


def summarize(matrix: Matrix, initial: list[float | None], aligned: bool = True, metric: str = "accuracy") -> dict[str, float | None]:
    """ACC, BWT, FWT and forgetting; BWT, FWT and forgetting are None unless ``aligned`` (see :func:`aligned`).

    On an accuracy matrix the keys are ``acc``, ``bwt``, ``fwt`` and ``forgetting``; on another
    metric's matrix (a detector's ROC-AUC) the same definitions are named after it:
    ``avg_roc_auc``, ``bwt_roc_auc``, ``fwt_roc_auc``, ``forgetting_roc_auc``.
    """
    values = {
        "acc": acc(matrix),
        "bwt": bwt(matrix) if aligned else None,
        "fwt": fwt(matrix, initial) if aligned else None,
        "forgetting": forgetting(matrix) if aligned else None,
    }
    if metric == "accuracy":
        return values
    return {("avg" if key == "acc" else key) + "_" + metric: value for key, value in values.items()}


def names(metric: str) -> dict[str, str]:
    """Summary keys of a metric's matrix, initial row and headline figures (see :func:`summarize`)."""
    if metric == "accuracy":
        return {"matrix": "accuracy_matrix", "initial": "initial_accuracy", "avg": "acc", "bwt": "bwt", "fwt": "fwt",
                "forgetting": "forgetting", "prequential": "prequential_accuracy", "label": "accuracy", "short": "ACC"}
    return {"matrix": f"{metric}_matrix", "initial": f"initial_{metric}", "avg": f"avg_{metric}", "bwt": f"bwt_{metric}",
            "fwt": f"fwt_{metric}", "forgetting": f"forgetting_{metric}", "prequential": f"prequential_{metric}",
            "label": metric.replace("_", "-").upper(), "short": metric.replace("_", "-").upper()}


def _same_shape(a: _Step, b: _Step) -> bool:
    return a.n == b.n and (a.outputs is None or a.outputs.shape == b.outputs.shape)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


FOLD = 64  # steps a RunningMetrics keeps as separate tensors before summing them on the device
FOLD_ELEMENTS = 1 << 20  # ... or fewer, when their outputs hold more numbers than this (4 MB of float32)


class _Step(NamedTuple):
    """A stream batch's step before it is summed: device tensors, and its sample count from the host."""

    loss: torch.Tensor
    outputs: torch.Tensor | None  # the pre-update logits (None for a detector: its scores go to the histogram)
    targets: torch.Tensor | None
    flag: torch.Tensor
    n: int


class RunningMetrics:
    """Loss and prequential accuracy summed on the device; read to the host only in ``read()``.

    ``update`` adds nothing up per step: it keeps references to the step's loss, its pre-update
    logits and labels and its non-finite flag (:class:`lifelong.learner.Learner`), with no tensor
    operation at all, where summing every step into the totals took fourteen small ones (on a small
    model, a tenth of the step). Every :data:`FOLD` steps (fewer when the logits are large), and at
    ``read()``, they are stacked and summed on the device in a few operations, so the training loop
    never waits for the device and memory stays bounded; ``read`` (every ``log_every`` batches) is
    the one place the host waits. The logits and labels are read later, so nothing may write them
    in place after the step (nothing does: a batch's tensors are fresh, or views of a dataset never
    written). A skipped batch adds no loss and no correct prediction (its samples count as misses).
    Sample counts are known on the host and never touch the device. The fold points depend only on
    the steps since the last read, and a checkpoint keeps the unfolded steps as they are, so a
    resumed run sums in the same order as an uninterrupted one.
    """

    def __init__(self, device: torch.device, recent_samples: int = 1000, detector: bool = False):
        self._loss = torch.zeros((), dtype=torch.float64, device=device)  # Σ loss·n over the window
        self._correct = torch.zeros((), dtype=torch.int64, device=device)  # over the window
        self._skipped = torch.zeros((), dtype=torch.int64, device=device)  # every skipped step of the run
        self._flags: list[torch.Tensor] = []  # folded: the window's stream-batch flags (1: skipped), in chunks
        self._steps: list[_Step] = []  # stream batches not summed yet
        self._extra: list[torch.Tensor] = []  # flags of extra-epoch steps not summed yet
        self._elements = 0  # numbers in the unfolded steps' logits
        self._zero = torch.zeros((), device=device)
        self._n = 0
        self._total_correct = 0
        self._total_n = 0
        self.skipped_steps = 0  # as of the last read
        # (correct, n) of the last read windows covering at least ``recent_samples`` samples: the sliding
        # prequential accuracy of an unbounded stream, where the whole-run figure stops moving.
        self.recent_samples = recent_samples
        self._recent: deque[tuple[int, int]] = deque()
        # an anomaly detector's pre-update scores of labelled stream samples: the prequential ROC-AUC
        self.histogram = ScoreHistogram(device) if detector else None

    def update(
        self,
        loss: torch.Tensor,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        found: torch.Tensor | None = None,
        counted: bool = True,
        scores: torch.Tensor | None = None,
    ) -> None:
        """One step; ``found`` is its non-finite flag (None: finite; the caller's own tensor, read later),
        ``counted`` False for steps that are not a stream batch's first pass (extra epochs), which
        only count towards skipped steps. A detector passes its pre-update anomaly ``scores``,
        counted by label instead of correct predictions."""
        flag = self._zero if found is None else found.detach()
        if not counted:
            self._extra.append(flag)
        else:
            n = targets.shape[0]
            if self.histogram is not None:
                if scores is not None:
                    self.histogram.add(scores, targets)
                self._steps.append(_Step(loss.detach(), None, None, flag, n))
            else:
                self._steps.append(_Step(loss.detach(), outputs.detach(), targets, flag, n))
                self._elements += outputs.numel()
            self._n += n
        if len(self._steps) + len(self._extra) >= FOLD or self._elements >= FOLD_ELEMENTS:
            self._fold()

    def _fold(self) -> None:
        """Sum the unfolded steps into the window's device tensors; no host read."""
        if self._extra:
            self._skipped.add_(torch.stack(self._extra).sum().to(torch.int64))
            self._extra = []
        if not self._steps:
            return
        steps, self._steps, self._elements = self._steps, [], 0
        flags = torch.stack([step.flag for step in steps])
        self._skipped.add_(flags.sum().to(torch.int64))
        self._flags.append(flags)
        applied = 1.0 - flags.double()
        losses = torch.nan_to_num(torch.stack([step.loss for step in steps]).double(), nan=0.0, posinf=0.0, neginf=0.0) * applied
        # one sum per run of steps with equal batch sizes (and logits of one shape): the counts stay on the host
        start = 0
        for i in range(1, len(steps) + 1):
            if i < len(steps) and _same_shape(steps[i], steps[start]):
                continue
            run, n = steps[start:i], steps[start].n
            self._loss.add_(losses[start:i].sum() * n)
            if run[0].outputs is not None:
                hits = torch.cat([step.outputs for step in run]).argmax(dim=1) == torch.cat([step.targets for step in run])
                self._correct.add_((hits.view(len(run), n).sum(dim=1) * applied[start:i].to(torch.int64)).sum())
            start = i

    def state_dict(self) -> dict[str, Any]:
        """The window sums, the unfolded steps and the run's totals, for checkpoints (tensors as CPU copies)."""
        steps = self._steps
        return {
            "loss": to_cpu(self._loss),
            "correct": to_cpu(self._correct),
            "skipped": to_cpu(self._skipped),
            "flags": [to_cpu(flag) for chunk in self._flags for flag in chunk],
            "steps": {
                "loss": [to_cpu(step.loss) for step in steps],
                "outputs": [to_cpu(step.outputs) for step in steps if step.outputs is not None],
                "targets": [to_cpu(step.targets) for step in steps if step.targets is not None],
                "flag": [to_cpu(step.flag) for step in steps],
                "n": [step.n for step in steps],
                "extra": [to_cpu(flag) for flag in self._extra],
            },
            "n": self._n,
            "total_correct": self._total_correct,
            "total_n": self._total_n,
            "skipped_steps": self.skipped_steps,
            "recent": [list(w) for w in self._recent],
            **({"histogram": self.histogram.state_dict()} if self.histogram is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self._loss.device
        self._loss.copy_(state["loss"])
        self._correct.copy_(state["correct"])
        self._n, self._total_correct, self._total_n = int(state["n"]), int(state["total_correct"]), int(state["total_n"])
        if "skipped" in state:  # checkpoints from before the non-finite guard have none
            self._skipped.copy_(state["skipped"])
            self._flags = [torch.stack(list(state["flags"])).to(device)] if state["flags"] else []
            self.skipped_steps = int(state["skipped_steps"])
        steps = state.get("steps")  # checkpoints from before the fold have none: they summed every step
        self._steps, self._extra, self._elements = [], [], 0
        if steps:
            count = len(steps["n"])
            outputs = [t.to(device) for t in steps["outputs"]] or [None] * count
            targets = [t.to(device) for t in steps["targets"]] or [None] * count
            for loss, out, target, flag, n in zip(steps["loss"], outputs, targets, steps["flag"], steps["n"]):
                self._steps.append(_Step(loss.to(device), out, target, flag.to(device), int(n)))
                self._elements += 0 if out is None else out.numel()
            self._extra = [flag.to(device) for flag in steps["extra"]]
        self._recent = deque((int(c), int(n)) for c, n in state.get("recent", []))
        if self.histogram is not None and "histogram" in state:
            self.histogram.load_state_dict(state["histogram"])

    def read(self) -> dict[str, Any]:
        """Window means since the last read, the whole-run prequential accuracy and that of the last
        ``recent_samples`` samples or a little more (whole windows); resets the window.

        ``skipped_in_window`` lists the window's stream batches (0 = the first since the last read)
        that were not applied; ``skipped_steps`` counts every skipped step of the run.
        """
        self._fold()
        flags = torch.cat(self._flags).tolist() if self._flags else []
        loss, correct, n = self._loss.item(), int(self._correct.item()), self._n
        self.skipped_steps = int(self._skipped.item())
        self._loss.zero_()
        self._correct.zero_()
        self._flags = []
        self._n = 0
        self._total_correct += correct
        self._total_n += n
        if n:
            self._recent.append((correct, n))
            while len(self._recent) > 1 and sum(w[1] for w in self._recent) - self._recent[0][1] >= self.recent_samples:
                self._recent.popleft()
        recent_n = sum(w[1] for w in self._recent)
        if self.histogram is not None:  # no accuracy: the prequential ROC-AUC of the scores so far (None: one class seen)
            return {
                "loss": loss / n if n else float("nan"),
                "prequential_roc_auc": _nan_if_none(self.histogram.auc()),
                "skipped_in_window": [i for i, flag in enumerate(flags) if flag],
                "skipped_steps": self.skipped_steps,
            }
        return {
            "loss": loss / n if n else float("nan"),
            "window_accuracy": correct / n if n else float("nan"),
            "prequential_accuracy": self._total_correct / self._total_n if self._total_n else float("nan"),
            "prequential_accuracy_recent": sum(w[0] for w in self._recent) / recent_n if recent_n else float("nan"),
            "skipped_in_window": [i for i, flag in enumerate(flags) if flag],
            "skipped_steps": self.skipped_steps,
        }
