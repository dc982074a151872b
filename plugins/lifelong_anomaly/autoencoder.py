"""The ``autoencoder`` detector: a dense autoencoder over flat, standardised features.

Architecture: ``F → hidden[0] → … → hidden[-1] → latent → hidden[-1] → … → hidden[0] → F``,
linear layers with ``activation`` after every one but the latent and the output layer (the
latent code and the reconstruction are linear). ``F`` is the number of input elements: inputs of
any shape are flattened. Score, loss, threshold and filter: :mod:`lifelong_anomaly.detector`.

>>> from lifelong.types import StreamInfo
>>> model = Autoencoder(AutoencoderOptions(hidden=[16], latent=4), StreamInfo(input_shape=(7,), num_classes=2))
>>> x = torch.randn(5, 7)
>>> from lifelong.objective import NOT_CALIBRATED
>>> model(x).shape, model.anomaly_score(x, model(x)).shape, model.threshold.item() == NOT_CALIBRATED
(torch.Size([5, 7]), torch.Size([5]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lifelong import resources
from lifelong.errors import brief
from lifelong.types import StreamInfo
from lifelong_anomaly.detector import Detector, DetectorOptions

MAX_LAYERS = 100
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class DenseArchitecture:
    hidden: list[int] = field(default_factory=lambda: [64, 32], metadata={"help": "widths of the encoder's hidden layers (the decoder mirrors them)"})
    latent: int = field(default=8, metadata={"help": "width of the latent code (the bottleneck)"})
    activation: Literal["relu", "gelu", "tanh"] = field(default="relu", metadata={"help": "activation after each hidden layer"})

    def check(self) -> None:
        if len(self.hidden) > MAX_LAYERS:
            raise ValueError(f"hidden lists {len(self.hidden)} layers; an autoencoder has at most {MAX_LAYERS} per side")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {brief(self.hidden)}")
        if self.latent < 1:
            raise ValueError(f"latent must be a positive width, got {self.latent}")


@dataclass
class AutoencoderOptions(DetectorOptions, DenseArchitecture):
    """The architecture's options, then the detector's (dataclass fields follow the reversed MRO)."""

    def check(self) -> None:
        DenseArchitecture.check(self)
        DetectorOptions.check(self)


def dense_layers(widths: list[int], activation: type[nn.Module]) -> list[nn.Module]:
    """Linear layers through ``widths``, ``activation`` between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (inputs, outputs) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(inputs, outputs))
        if i < len(widths) - 2:
            layers.append(activation())
    return layers


class Autoencoder(Detector):
    """Dense autoencoder detector; ``forward(x)`` returns the reconstruction (N, F) of the standardised, flattened ``x``."""

    def __init__(self, options: AutoencoderOptions, info: StreamInfo):
        width = math.prod(int(d) for d in info.input_shape)
        super().__init__(options, (width,))
        widths = [width, *options.hidden, options.latent, *reversed(options.hidden), width]
        parameters = sum(resources.linear_parameters(a, b) for a, b in zip(widths, widths[1:]))
        resources.require(
            2 * parameters * resources.FLOAT_BYTES,
            f"an autoencoder of {parameters:,} parameters over {width} inputs (weights and gradients)",
            "model.hidden",
        )
        activation = ACTIVATIONS[options.activation]
        encoder = dense_layers(widths[: len(options.hidden) + 2], activation)
        decoder = dense_layers(widths[len(options.hidden) + 1 :], activation)
        self.network = nn.Sequential(nn.Sequential(*encoder), nn.Sequential(*decoder))
