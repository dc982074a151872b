"""A small convolutional network for image streams, with one head or one head per task."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lifelong import resources
from lifelong.errors import brief
from lifelong.types import StreamInfo
from lifelong_models.heads import TaskHeads

MAX_BLOCKS = 1000


@dataclass
class CNNOptions:
    channels: list[int] = field(default_factory=lambda: [32, 64], metadata={"help": "output channels of each conv block (conv 3×3, BN, ReLU, 2×2 max-pool)"})
    hidden: int = field(default=128, metadata={"help": "width of the dense layer before the head"})

    def check(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {brief(self.channels)}")
        if len(self.channels) > MAX_BLOCKS:
            raise ValueError(f"channels lists {len(self.channels)} blocks; a cnn has at most {MAX_BLOCKS}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {self.hidden}")


def cnn_parameters(in_channels: int, channels: list[int], hidden: int, outputs: int) -> int:
    """Parameters of :class:`CNN`: conv 3×3 with bias and BatchNorm (weight, bias) per block, dense, head.

    >>> cnn_parameters(1, [32, 64], 128, 10) == sum(p.numel() for p in CNN(CNNOptions(), StreamInfo((8, 8), 10)).parameters())
    True
    """
    total, width = 0, in_channels
    for out in channels:
        total += width * out * 9 + out + 2 * out
        width = out
    return total + resources.linear_parameters(width, hidden) + resources.linear_parameters(hidden, outputs)


class CNN(nn.Module):
    """Conv blocks, global average pooling, a dense layer, then the head(s).

    Inputs are (N, C, H, W), or (N, H, W) for grey images. Global pooling makes it independent of
    the image size, so one architecture serves 8×8 digits and 28×28 Fashion-MNIST.
    """

    def __init__(self, options: CNNOptions, info: StreamInfo):
        super().__init__()
        if len(info.input_shape) not in (2, 3):
            raise ValueError(f"the cnn model needs image input (H, W) or (C, H, W), the stream gives {info.input_shape}")
        in_channels = info.input_shape[0] if len(info.input_shape) == 3 else 1
        parameters = cnn_parameters(in_channels, options.channels, options.hidden, info.num_classes * info.num_tasks)
        resources.require(
            2 * parameters * resources.FLOAT_BYTES,
            f"a cnn of {parameters:,} parameters (weights and gradients)",
            "model",
        )
        blocks: list[nn.Module] = []
        for out_channels in options.channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dense = nn.Sequential(nn.Linear(in_channels, options.hidden), nn.ReLU())
        self.head = TaskHeads(options.hidden, info.num_classes, info.num_tasks)

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.dense(self.features(x)), task)
