"""A multilayer perceptron over flattened inputs, with one head or one head per task."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lifelong import resources
from lifelong.errors import brief
from lifelong.types import StreamInfo
from lifelong_models.heads import TaskHeads

MAX_LAYERS = 1000
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class MLPOptions:
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata={"help": "widths of the hidden layers"})
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = field(default=0.0, metadata={"help": "dropout after each hidden layer"})

    def check(self) -> None:
        if len(self.hidden) > MAX_LAYERS:
            raise ValueError(f"hidden lists {len(self.hidden)} layers; an mlp has at most {MAX_LAYERS}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {brief(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class MLP(nn.Module):
    """``forward(x)`` or, with several heads, ``forward(x, task)``.

    >>> from lifelong.types import StreamInfo
    >>> model = MLP(MLPOptions(hidden=[16]), StreamInfo(input_shape=(1, 8, 8), num_classes=10))
    >>> model(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 10])
    """

    def __init__(self, options: MLPOptions, info: StreamInfo):
        super().__init__()
        width = math.prod(info.input_shape)
        parameters = resources.mlp_parameters(width, options.hidden, info.num_classes * info.num_tasks)
        resources.require(
            2 * parameters * resources.FLOAT_BYTES,
            f"an mlp of {parameters:,} parameters over {width} inputs (weights and gradients)",
            "model.hidden",
        )
        layers: list[nn.Module] = [nn.Flatten()]
        for hidden in options.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[options.activation]()]
            if options.dropout:
                layers.append(nn.Dropout(options.dropout))
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = TaskHeads(width, info.num_classes, info.num_tasks)

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(x), task)
