"""The PathNet super-network: L layers × M modules, a path of at most N modules per layer, a head per task.

A module is a small block: linear + ReLU over vectors, or a 3×3 stride-2 convolution + ReLU over
images (no batch norm: its running statistics would change a frozen module in train mode). The
outputs of a layer's active modules are summed. The output layer is never shared: each task has
its own head.

Frozen state lives in buffers, so checkpoints, generations and served models carry it:
``paths`` (the frozen path of each finished task), ``frozen`` (which modules are read-only),
``frozen_tasks`` (how many tasks are finished), ``task_segment`` (the reader's task id → the
finished task that learned it, for task-incremental evaluation) and ``head_classes`` (the labels
each finished task's head was trained on). Host-side copies of the paths
keep the forward pass free of device reads.

Task-free prediction (no task id at test time) needs a task oracle. The default is a small task
classifier (:attr:`PathNetModel.oracle`: flattened input, or the backbone's features → one hidden
layer → a logit per task), which the pathnet strategy retrains at every boundary on a few stored
samples of each finished task; it is a separate network, never part of a path, so training it
cannot move a frozen path. The alternative is the lowest predictive entropy over the frozen paths'
heads (``oracle = "entropy"``, no stored samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong import resources
from lifelong.errors import UserError
from lifelong.types import StreamInfo
from lifelong_pathnet.evolution import path_modules

Path = tuple[tuple[int, ...], ...]  # the distinct modules of each layer
MAX_MODULES = 10_000  # layers x modules: each is an nn.Module, built one by one
MAX_TASKS = 10_000  # heads preallocated


def grid_parameters(first: int, width: int, layers: int, modules: int, conv: bool, tasks: int, classes: int) -> int:
    """Parameters of a grid whose layer 0 takes ``first`` features (linear) or channels (conv), and its heads.

    >>> from lifelong.types import StreamInfo
    >>> model = PathNetModel(GridOptions(max_tasks=4, modules=10, oracle="entropy"), StreamInfo((1, 8, 8), 10))
    >>> grid_parameters(64, 20, 3, 10, False, 4, 10) == sum(p.numel() for p in model.parameters())
    True
    >>> with_classifier = PathNetModel(GridOptions(max_tasks=4, modules=10), StreamInfo((1, 8, 8), 10))
    >>> total = grid_parameters(64, 20, 3, 10, False, 4, 10) + oracle_parameters(64, 64, 4)
    >>> total == sum(p.numel() for p in with_classifier.parameters())
    True
    """
    kernel = 9 if conv else 1
    block = lambda inputs: inputs * width * kernel + width  # noqa: E731
    return modules * (block(first) + (layers - 1) * block(width)) + tasks * (width * classes + classes)


@dataclass
class GridShape:
    """The grid's options, shared by the ``pathnet`` model component and the ``pathnet`` strategy."""

    layers: int = field(default=3, metadata={"help": "L, layers of modules (the paper's binary MNIST: 3)"})
    modules: int = field(
        default=0,
        metadata={"help": "M, modules per layer; 0: N × (tasks + 1), at least 10 (paper: 10 for 2 tasks), so the last task still finds N unfrozen modules per layer"},
    )
    active: int = field(default=3, metadata={"help": "N, most modules a path uses per layer (paper: 3)"})
    width: int = field(default=20, metadata={"help": "units (linear) or channels (conv) of each module (paper: 20)"})
    block: Literal["linear", "conv"] = field(default="linear", metadata={"help": "linear + ReLU over vectors, or conv 3×3 stride 2 + ReLU over images"})
    max_tasks: int = field(default=0, metadata={"help": "heads preallocated, one per task; 0: the stream's experience count, at least 16"})
    lr: float | None = field(default=None, metadata={"help": "learning rate of the grid; None: learner.lr"})
    inference: Literal["sample", "batch"] = field(
        default="sample",
        metadata={"help": "without task ids, pick a path per sample, or one path per batch (the oracle's mean over the batch: for batches drawn from one task)"},
    )
    oracle: Literal["classifier", "entropy"] = field(
        default="classifier",
        metadata={"help": "task-free path choice: a task classifier retrained at each boundary on oracle_memory stored samples per task, or the head of lowest predictive entropy (no stored samples)"},
    )
    oracle_hidden: int = field(default=64, metadata={"help": "hidden units of the task classifier"})

    def check(self) -> None:
        for name in ("layers", "active", "width", "oracle_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.modules < 0:
            raise ValueError(f"modules must be 0 (from the stream's tasks) or at least 1, got {self.modules}")
        if self.modules and self.active > self.modules:
            raise ValueError(f"active (N={self.active}) cannot exceed modules (M={self.modules})")
        if self.layers * self.modules > MAX_MODULES:
            raise ValueError(
                f"a grid of layers x modules = {self.layers} x {self.modules} is more than {MAX_MODULES:,} modules "
                "(the paper's is 3 x 10)"
            )
        if not 0 <= self.max_tasks <= MAX_TASKS:
            raise ValueError(f"max_tasks must be 0 (from the stream) or 1 to {MAX_TASKS:,}, got {self.max_tasks}")
        if self.lr is not None and self.lr <= 0:  # finite already: lifelong.options refuses NaN and infinity
            raise ValueError(f"lr must be positive (or unset: learner.lr), got {self.lr}")


@dataclass
class GridOptions(GridShape):
    backbone: dict[str, Any] | None = field(default=None, metadata={"help": "ModelSpec of a frozen layer 0 (set by the pathnet strategy)"})


def module_count(options: GridShape, info: StreamInfo) -> int:
    """Modules per layer: the option, else room for every task's own N modules plus N spare, at least 10.

    A task freezes up to N modules per layer; with the paper's 10 (sized for two tasks) the fourth
    of five tasks finds one or two unfrozen modules per layer and learns through frozen ones only
    (measured: a smallest held-out accuracy of 0.81 on Split-Digits with one path trained 20
    epochs, 0.966 with 20 modules; docs/pathnet.md). The tasks counted are the stream's
    experiences when it knows them, else the preallocated heads. A path runs N modules whatever
    M is, so M costs memory, not time.
    """
    if options.modules:
        return options.modules
    tasks = len(info.experiences) if info.experiences else task_capacity(options.max_tasks, info)
    return max(10, options.active * (tasks + 1))


def task_capacity(options_max_tasks: int, info: StreamInfo) -> int:
    """Heads to preallocate: the option, else the stream's experiences or tasks but at least 16.

    A task ends at every boundary the pipeline reports, and a window or drift detector may report
    more boundaries than the reader has experiences; a head is a few hundred weights, so spares
    cost nothing.
    """
    if options_max_tasks:
        return options_max_tasks
    return max(len(info.experiences or []), info.num_tasks, 16)


class PathNetModel(nn.Module):
    """``forward(x)`` / ``forward(x, task)``: the active path while training, frozen paths afterwards.

    In training mode every sample goes through :attr:`active_path` and the head of the task in
    training (:attr:`current`), which the pathnet strategy sets before each minibatch. In eval mode
    a sample with a known task id uses that task's frozen path and head; a sample without one
    (class- or domain-incremental, task-free streams) uses the frozen path whose head is most
    confident, i.e. has the lowest predictive entropy (:meth:`infer`). Before any task is frozen,
    evaluation uses the active path.
    """

    def __init__(self, options: GridOptions, info: StreamInfo, backbone: nn.Module | None = None, where: str = "strategy.pathnet"):
        super().__init__()
        self.options = options
        self.num_classes = info.num_classes
        self.backbone = backbone
        if backbone is not None:
            if getattr(backbone, "prepare", None) is None:
                raise ValueError(
                    "a pathnet backbone must be a model with a frozen prepare() step (e.g. a pretrained "
                    "backbone with strategy = 'feature-extractor'); this one has none"
                )
            for p in backbone.parameters():
                p.requires_grad_(False)
            with torch.no_grad():
                in_shape = tuple(backbone.prepare(torch.zeros(1, *info.input_shape)).shape[1:])
        else:
            in_shape = tuple(info.input_shape)
        self.image = options.block == "conv"
        if self.image and len(in_shape) not in (2, 3):
            raise ValueError(f"block = 'conv' needs image inputs (H, W) or (C, H, W), got {in_shape}")
        width = options.width
        modules = module_count(options, info)
        first = (in_shape[0] if len(in_shape) == 3 else 1) if self.image else math.prod(in_shape)
        tasks = task_capacity(options.max_tasks, info)
        parameters = grid_parameters(first, width, options.layers, modules, self.image, tasks, info.num_classes)
        if options.oracle == "classifier":
            parameters += oracle_parameters(math.prod(in_shape), options.oracle_hidden, tasks)
        resources.require(
            2 * parameters * resources.FLOAT_BYTES,
            f"a pathnet grid of {options.layers} x {modules} modules of width {width} and {tasks} heads: "
            f"{parameters:,} parameters (weights and gradients)",
            where,
        )
        self.grid = nn.ModuleList(
            nn.ModuleList(self._block(first if layer == 0 else width, width) for _ in range(modules))
            for layer in range(options.layers)
        )
        self.heads = nn.ModuleList(nn.Linear(width, info.num_classes) for _ in range(tasks))
        self.register_buffer("paths", torch.zeros(tasks, options.layers, options.active, dtype=torch.long))
        self.register_buffer("frozen", torch.zeros(options.layers, modules, dtype=torch.bool))
        self.register_buffer("frozen_tasks", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_segment", torch.full((max(tasks, info.num_tasks),), -1, dtype=torch.long))
        self.register_buffer("head_classes", torch.zeros(tasks, info.num_classes, dtype=torch.bool))
        self.oracle: nn.Module | None = None
        if options.oracle == "classifier":
            self.oracle = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(in_shape), options.oracle_hidden), nn.ReLU(), nn.Linear(options.oracle_hidden, tasks)
            )
            for p in self.oracle.parameters():
                p.requires_grad_(False)  # trained by the strategy at boundaries, never by the learner's optimizer
            # the finished tasks the oracle was last trained on; fewer than frozen_tasks: use the entropy rule
            self.register_buffer("oracle_tasks", torch.zeros((), dtype=torch.long))
        self._oracle_tasks = 0
        self._frozen_paths: list[Path] = []
        self.active_path: Path = tuple(tuple(range(options.active)) for _ in range(options.layers))
        self.current = 0  # the task in training: its head is trained, its path is active_path

    def _block(self, inputs: int, width: int) -> nn.Module:
        if self.image:
            return nn.Sequential(nn.Conv2d(inputs, width, 3, stride=2, padding=1), nn.ReLU())
        return nn.Sequential(nn.Linear(inputs, width), nn.ReLU())

    @property
    def capacity(self) -> int:
        return len(self.heads)

    @property
    def prepare(self):
        """The backbone's frozen features as the kernel's cached input step (None without a backbone)."""
        return None if self.backbone is None else self.backbone.prepare

    @property
    def prepare_host(self):
        """The backbone's host step (a tokenizer), which the kernel runs on the reader thread."""
        return None if self.backbone is None else getattr(self.backbone, "prepare_host", None)

    def train(self, mode: bool = True) -> PathNetModel:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: no batch-norm statistics may move
        return self

    # -- forward ----------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        h = x
        if self.image:
            if h.dim() == 3:
                h = h.unsqueeze(1)
        else:
            h = h.flatten(1)
        for layer, modules in zip(self.grid, path):
            out = layer[modules[0]](h)
            for m in modules[1:]:
                out = out + layer[m](h)
            h = out
        return h.mean(dim=(2, 3)) if self.image else h

    def path_logits(self, x: torch.Tensor, path: Path, task: int) -> torch.Tensor:
        return self.heads[task](self.features(x, path))

    def frozen_logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """A finished task's logits, restricted to the labels its head was trained on.

        A head only ever saw its own task's labels (class-incremental: 2 of 10 classes), so the
        others are masked out: its prediction stays within what it learned, and :meth:`infer`
        compares confidences over the labels each head knows.
        """
        logits = self.path_logits(x, self._frozen_paths[task], task)
        return logits.masked_fill(~self.head_classes[task], float("-inf"))

    def _check_capacity(self) -> None:
        if self.current >= self.capacity:
            raise UserError(
                f"pathnet has heads for {self.capacity} tasks and the stream goes on after boundary "
                f"{self.current}: set strategy.pathnet.max_tasks higher (or report fewer boundaries)"
            )

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            self._check_capacity()
        if self.training or not self._frozen_paths:
            return self.path_logits(x, self.active_path, self.current)
        if task is None:
            return self.infer(x)[0]
        # Evaluation with task ids (the host reads which tasks are present: evaluation only).
        segment = self.task_segment.index_select(0, task)
        out = x.new_empty(x.shape[0], self.num_classes)
        unknown = segment < 0
        if bool(unknown.any()):  # a task not learned yet: the path and head in training
            rows = unknown.nonzero().squeeze(1)
            out[rows] = self.path_logits(x[rows], self.active_path, self.current)
        for s in segment[~unknown].unique().tolist():
            rows = (segment == s).nonzero().squeeze(1)
            out[rows] = self.frozen_logits(x[rows], s)
        return out

    def task_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The oracle's log-probability of each finished task, (N, finished tasks): training and inference."""
        return F.log_softmax(self.oracle(x)[:, : len(self._frozen_paths)], dim=1)

    @property
    def uses_oracle(self) -> bool:
        """True when the task classifier picks paths: built, chosen, and trained on every finished task."""
        return self.oracle is not None and self.options.oracle == "classifier" and self._oracle_tasks == len(self._frozen_paths)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Task-free prediction: (logits, chosen task) per sample.

        The task is the oracle's most likely finished task (``oracle = "classifier"``, once trained
        on every finished task), else the frozen path whose head has the lowest predictive entropy.
        """
        count = len(self._frozen_paths)
        if self.uses_oracle:
            score = self.task_scores(x).T  # (tasks, N), higher is likelier
            if self.options.inference == "batch":
                chosen = score.mean(dim=1).argmax().expand(x.shape[0])
            else:
                chosen = score.argmax(dim=0)
            out = x.new_empty(x.shape[0], self.num_classes)
            for s in chosen.unique().tolist():  # eval only: the host reads which paths are needed
                rows = (chosen == s).nonzero().squeeze(1)
                out[rows] = self.frozen_logits(x[rows], s)
            return out, chosen
        candidates = torch.stack([self.frozen_logits(x, s) for s in range(count)])
        log_p = F.log_softmax(candidates, dim=2)
        entropy = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(dim=2)  # (tasks, N); masked labels add 0
        if self.options.inference == "batch":
            chosen = entropy.mean(dim=1).argmin().expand(x.shape[0])
        else:
            chosen = entropy.argmin(dim=0)
        logits = candidates.gather(0, chosen.view(1, -1, 1).expand(1, -1, candidates.shape[2])).squeeze(0)
        return logits, chosen

    def oracle_trained(self, tasks: int) -> None:
        """Record that the oracle now knows the first ``tasks`` finished tasks."""
        self.oracle_tasks.fill_(tasks)
        self._oracle_tasks = tasks

    # -- freezing ---------------------------------------------------------------------------------
    def modules_of(self, path: Path) -> list[nn.Module]:
        return [self.grid[layer][m] for layer, mods in enumerate(path) for m in mods]

    def freeze(self, genotype: np.ndarray, task_ids: list[int], classes: list[int] | None = None) -> list[nn.Parameter]:
        """Freeze ``genotype``'s path and the current head as task :attr:`current`; returns the newly frozen parameters.

        ``task_ids``: the reader's task ids seen in the task; ``classes``: the labels its head was
        trained on (None: all).
        """
        task = self.current
        self._check_capacity()
        path = path_modules(genotype)
        newly: list[nn.Parameter] = []
        with torch.no_grad():
            self.paths[task] = torch.as_tensor(genotype, dtype=torch.long)
            for layer, mods in enumerate(path):
                for m in mods:
                    if not bool(self.frozen[layer, m]):
                        self.frozen[layer, m] = True
                        newly += list(self.grid[layer][m].parameters())
            newly += list(self.heads[task].parameters())
            self.frozen_tasks.fill_(task + 1)
            for t in task_ids:
                self.task_segment[t] = task
            if classes is None:
                self.head_classes[task] = True
            else:
                self.head_classes[task, classes] = True
        for p in newly:
            p.requires_grad_(False)
        self._frozen_paths.append(path)
        self.current = task + 1
        return newly

    def reinitialize(self) -> list[nn.Parameter]:
        """Re-initialise every module that is not frozen; returns their parameters."""
        reset: list[nn.Parameter] = []
        frozen = self.frozen.cpu()
        for layer, row in enumerate(self.grid):
            for m, block in enumerate(row):
                if not bool(frozen[layer, m]):
                    block[0].reset_parameters()
                    reset += list(block.parameters())
        return reset

    def trainable(self) -> list[nn.Parameter]:
        """The grid's and heads' unfrozen parameters: what the learner's optimizer updates."""
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith(("backbone.", "oracle."))]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": self.trainable(), "lr": self.options.lr or lr}]

    # -- state ------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.oracle is not None and "oracle_tasks" not in state_dict:
            # stored before the task classifier existed: keep it untrained, inference uses the entropy rule
            state_dict = {**state_dict, **{f"oracle.{k}": v for k, v in self.oracle.state_dict().items()},
                          "oracle_tasks": torch.zeros((), dtype=torch.long)}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._restore_frozen()
        return result

    def _restore_frozen(self) -> None:
        """Rebuild the host-side paths and the requires_grad flags from the frozen buffers."""
        count = int(self.frozen_tasks)
        self._frozen_paths = [path_modules(self.paths[t].cpu().numpy()) for t in range(count)]
        frozen = self.frozen.cpu()
        for layer, row in enumerate(self.grid):
            for m, block in enumerate(row):
                for p in block.parameters():
                    p.requires_grad_(not bool(frozen[layer, m]))
        for t, head in enumerate(self.heads):
            for p in head.parameters():
                p.requires_grad_(t >= count)
        self.current = count
        self._oracle_tasks = int(self.oracle_tasks) if self.oracle is not None else 0


def oracle_parameters(features: int, hidden: int, tasks: int) -> int:
    """Parameters of the task classifier: ``features`` inputs, ``hidden`` units, a logit per task."""
    return features * hidden + hidden + hidden * tasks + tasks


def build_grid(options: GridOptions, info: StreamInfo, components: Any = None) -> PathNetModel:
    """The ``pathnet`` model component: rebuilds a grid (and its backbone) from a stored ModelSpec.

    The backbone is built with the run's ``components`` (the kernel passes them), so a backbone
    from a ``--plugin`` module is found; without them (a direct call), a default plugin host's.
    """
    backbone = None
    if options.backbone is not None:
        from lifelong.components import Components
        from lifelong.types import ModelSpec

        components = components or Components.default()
        backbone = components.build_model(ModelSpec.from_dict(options.backbone), "model.backbone")
    return PathNetModel(options, info, backbone, where="model")
