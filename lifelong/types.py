"""The values that flow through a run: batches, stream descriptions, experiences and generations.

This module does not import torch at import time (only :meth:`Batch.concat` needs it, and imports
it there): ``lifelong/__init__.py`` re-exports these types, and processes that only need the
descriptions (:class:`ModelSpec`, :class:`StreamInfo`), such as the MLflow outbox writer, would
otherwise pay torch's import (about 1.5 s of CPU) for nothing. Annotations are strings
(``from __future__ import annotations``), so ``torch.Tensor`` in them costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Scenario = Literal["class", "task", "domain"]
SCENARIOS: tuple[str, ...] = ("class", "task", "domain")


@dataclass
class Batch:
    """One minibatch of the stream.

    ``x`` has shape (N, ...), ``y`` holds N class indices (within the task's head in the
    task-incremental scenario). ``task`` holds N task ids when the scenario uses them (replay may
    mix tasks in one batch, so it is per sample), else None. ``experience`` is the experience id the
    reader assigned; a batch never spans two experiences. ``source``/``start``/``stop`` locate the
    batch in its source (file and record offsets, half-open) for dead letters and generation tags.
    ``position`` is where the stream stands right after this batch, as plain JSON data, for
    readers that can resume (see :class:`lifelong.readers.Reader`); None for readers that cannot.
    A sample without a label holds ``NO_LABEL`` (-1, :mod:`lifelong.objective`) in ``y``.
    ``weight`` is set by the kernel on the stream batch handed to ``after_step`` when an anomaly
    detector's contamination filter weighed its samples (1 kept, 0 left out of the update): a
    memory must not store a sample of weight 0. None: every sample counts.
    """

    x: torch.Tensor
    y: torch.Tensor
    experience: int = 0
    task: torch.Tensor | None = None
    source: str = ""
    start: int = 0
    stop: int = 0
    position: Any = None
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        return Batch(
            x=self.x.to(device, non_blocking=non_blocking),
            y=self.y.to(device, non_blocking=non_blocking),
            experience=self.experience,
            task=None if self.task is None else self.task.to(device, non_blocking=non_blocking),
            source=self.source,
            start=self.start,
            stop=self.stop,
            position=self.position,
            weight=None if self.weight is None else self.weight.to(device, non_blocking=non_blocking),
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Join batches sample-wise; the first batch's experience and offsets describe the result."""
        if len(batches) == 1:
            return batches[0]
        import torch  # here, not at the top: see the module docstring

        first = batches[0]
        tasks = [b.task for b in batches]
        if any(t is None for t in tasks) and not all(t is None for t in tasks):
            raise ValueError("cannot concatenate batches with and without task ids")
        return Batch(
            x=torch.cat([b.x for b in batches]),
            y=torch.cat([b.y for b in batches]),
            experience=first.experience,
            task=None if tasks[0] is None else torch.cat(tasks),  # type: ignore[arg-type]
            source=first.source,
            start=first.start,
            stop=first.stop,
            position=first.position,
        )


@dataclass
class StreamInfo:
    """What a reader tells the kernel before the first batch, so models can be built and validated.

    ``num_classes`` is the size of one output head: all classes in the class- and
    domain-incremental scenarios, the classes of one task in the task-incremental one.
    ``num_tasks`` is the number of heads (1 unless ``scenario == "task"``). ``experiences`` lists the
    experience ids in stream order when known in advance (benchmarks), else None.
    ``num_batches`` sizes the progress bar when known. ``class_names`` maps head indices to labels.
    ``feature_names`` names the input's features in order, for flat inputs whose reader knows them
    (a csv header): served generations then match named inputs by name.
    ``normalize`` is the input scaling the reader asks for: None (raw inputs) or ``"standard"``
    (running per-feature standardisation, kept as statistics inside the model; see
    :mod:`lifelong.scaling`). It is part of the stream's description, so every ModelSpec that
    rebuilds a generation (serving, ``--resume``, continuing) rebuilds the same scaling.
    ``labels`` is False when the training stream carries no labels (an npz without ``y``, a csv
    without a label column): its batches hold ``NO_LABEL`` (-1, :mod:`lifelong.objective`) in ``y``,
    and only a model that learns without labels (an anomaly detector) can train on it.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    scenario: Scenario = "class"
    num_tasks: int = 1
    experiences: list[int] | None = None
    num_batches: int | None = None
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    normalize: str | None = None
    labels: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "scenario": self.scenario,
            "num_tasks": self.num_tasks,
            "experiences": self.experiences,
            "num_batches": self.num_batches,
            "class_names": self.class_names,
            "feature_names": self.feature_names,
            "normalize": self.normalize,
            "labels": self.labels,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> StreamInfo:
        return StreamInfo(
            input_shape=tuple(data["input_shape"]),
            num_classes=int(data["num_classes"]),
            scenario=data.get("scenario", "class"),
            num_tasks=int(data.get("num_tasks", 1)),
            experiences=data.get("experiences"),
            num_batches=data.get("num_batches"),
            class_names=data.get("class_names"),
            feature_names=data.get("feature_names"),
            normalize=data.get("normalize"),  # absent in specs written before scaling existed: raw inputs
            labels=bool(data.get("labels", True)),
        )


@dataclass
class ModelSpec:
    """How to rebuild a model: the model component's name, its resolved options and the stream info."""

    name: str
    options: dict[str, Any]
    info: StreamInfo

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options, "info": self.info.to_dict()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelSpec:
        return ModelSpec(data["name"], dict(data["options"]), StreamInfo.from_dict(data["info"]))


@dataclass
class Experience:
    """The span of stream one generation was trained on, handed to consolidation hooks."""

    index: int  # 0, 1, 2 … in the order boundaries were reached
    experience_ids: list[int]  # reader experience ids seen in the span
    batches: int
    samples: int
    offsets: dict[str, list[int]]  # source -> [first offset, last offset (exclusive)]


@dataclass
class Generation:
    """A consolidated model: what trackers log and register, and what a service promotes or serves.

    ``state`` holds CPU copies taken at the boundary, so trackers can write them on their own
    threads while training goes on. ``session`` is the id of the session that made it (kept across
    resumes); ``parent`` the index of the previous generation of the session; ``continues``, on the
    first generation of a session whose model continued from an earlier one (an MLflow version or a
    checkpoint), where that model came from: ``{"ref", "session", "generation"}``. The kernel keeps
    no reference to a generation once trackers and the checkpoint writer have it.
    """

    index: int
    parent: int | None
    experience: Experience
    experiences_covered: list[int]
    accuracy: dict[int, float]  # test experience id -> the run's metric after this generation (accuracy, or a detector's ROC-AUC)
    model_spec: ModelSpec
    state: dict[str, torch.Tensor]
    strategy_state: dict[str, dict[str, Any]]
    records: dict[str, Any] = field(default_factory=dict)  # filled by trackers, e.g. model version
    session: str = ""
    continues: dict[str, Any] | None = None
    # The promotion gate's verdict when ``[promotion]`` is on (lifelong.promotion.Verdict.to_dict), else None.
    promotion: dict[str, Any] | None = None
    # The name of the metric in ``accuracy`` ("accuracy", or "roc_auc" for an anomaly detector) and every
    # metric of the run by name ({"roc_auc": {...}, "pr_auc": {...}}; see lifelong.objective).
    metric: str = "accuracy"
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
