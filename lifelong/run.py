"""The typed run context handed to ``validate`` and ``on_run_start``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lifelong.types import Batch, ModelSpec, StreamInfo

if TYPE_CHECKING:
    from lifelong.components import Components
    from lifelong.config import LearnerOptions
    from lifelong.distributed import World
    from lifelong.promotion import PromotionOptions


@dataclass
class Session:
    """Who this run is across processes.

    ``id`` is chosen when a session starts and kept by every resume (``--resume`` continues the
    same session, so trackers can find what they recorded before the crash); ``resumed`` is True in
    a process that continued from a checkpoint of this session; ``step`` is the number of stream
    batches already trained when this process started; ``continues`` describes what the model
    continued from when it did not start from scratch (an MLflow version or a checkpoint of another
    session: ``{"ref": …, "session": …, "generation": …}``), else None.
    """

    id: str
    resumed: bool = False
    step: int = 0
    continues: dict[str, Any] | None = None


@dataclass
class Run:
    """What plugins may read when a run is validated and when it starts; the kernel owns all of it.

    Plugins read typed fields: ``learner`` (the kernel's :class:`~lifelong.config.LearnerOptions`),
    ``info`` (the stream), ``device``, ``seed``, ``strategies`` (the composed strategy names in
    ``learner.strategies`` order), ``session``, and ``components`` to build other registered
    components with the plugin host that started the run. ``config`` is the whole resolved
    pipeline as plain data, for trackers to record; no plugin should take decisions from it.
    ``optimizer`` is None during ``validate`` (it does not exist yet). ``promotion`` holds the
    promotion gate's rules when ``[promotion]`` is on (each generation then carries its verdict
    in ``generation.promotion``), else None. ``checkpoint_dir`` is ``[checkpoint] dir`` when the
    session checkpoints (the MLflow tracker keeps its outbox there), else None. ``world`` is this
    rank's :class:`~lifelong.distributed.World` in a data-parallel run (a strategy that must combine
    what the ranks computed, as EWC its Fisher, uses ``world.average``), else None.
    """

    model: torch.nn.Module
    optimizer: Any
    device: torch.device
    info: StreamInfo
    model_spec: ModelSpec
    learner: LearnerOptions
    session: Session
    components: Components
    config: dict[str, Any]
    plugin_versions: dict[str, str | None] = field(default_factory=dict)
    warmup: Batch | None = None  # the first stream samples, when the model asked for them (warmup_samples)
    promotion: PromotionOptions | None = None
    checkpoint_dir: str | None = None  # [checkpoint] dir when checkpointing is on: a tracker may keep state beside it
    world: World | None = None  # a data-parallel run's ranks (lifelong.distributed), else None

    @property
    def seed(self) -> int:
        return self.learner.seed

    @property
    def strategies(self) -> list[str]:
        return list(self.learner.strategies)
