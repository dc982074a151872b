"""The run context handed to ``on_run_start``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lifelong.types import Batch, ModelSpec, StreamInfo


@dataclass
class Run:
    """What strategies and trackers may read when a run starts; the kernel owns all of it."""

    model: torch.nn.Module
    optimizer: Any
    device: torch.device
    info: StreamInfo
    model_spec: ModelSpec
    config: dict[str, Any]
    seed: int
    plugin_versions: dict[str, str | None]
    warmup: Batch | None = None  # the first stream samples, when the model asked for them (warmup_samples)
