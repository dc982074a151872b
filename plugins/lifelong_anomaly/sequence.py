"""The ``sequence-autoencoder`` detector: a 1-D convolutional autoencoder over windows of a time series.

Input: windows of shape ``(window, channels)`` (the ``windows`` reader's samples; a 1-D shape
``(window,)`` is one channel). They are standardised per element (each position of each
channel has its own running mean and variance: for sliding windows these all converge to the
channel's statistics) and fed as ``(channels, window)`` to:

- **encoder:** for each entry ``c`` of ``channels``, ``Conv1d(·, c, kernel, stride=2,
  padding=kernel // 2)`` then ``activation``: each halves the length (rounding up);
- **bottleneck:** flatten, ``Linear(·, latent)`` (linear code), ``Linear(latent, ·)``,
  ``activation``, unflatten: the code is ``latent`` numbers per window, whatever its length, so
  the network cannot copy its input through;
- **decoder:** the encoder mirrored with ``ConvTranspose1d(·, ·, kernel, stride=2,
  padding=kernel // 2, output_padding=0 or 1)`` (the padding that restores each encoder layer's
  input length exactly, odd or even), ``activation`` after each but the last, which outputs
  ``channels`` of the input (linear).

``forward(x)`` returns the reconstruction of the standardised window, shape (N, window,
channels). Score, loss, threshold and filter: :mod:`lifelong_anomaly.detector`.

>>> from lifelong.types import StreamInfo
>>> model = SequenceAutoencoder(SequenceOptions(channels=[8], latent=4), StreamInfo(input_shape=(25, 2), num_classes=2))
>>> x = torch.randn(3, 25, 2)
>>> model(x).shape, model.anomaly_score(x, model(x)).shape
(torch.Size([3, 25, 2]), torch.Size([3]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lifelong import resources
from lifelong.errors import brief
from lifelong.types import StreamInfo
from lifelong_anomaly.autoencoder import ACTIVATIONS
from lifelong_anomaly.detector import Detector, DetectorOptions

MAX_LAYERS = 16
MAX_KERNEL = 1025


@dataclass
class ConvArchitecture:
    channels: list[int] = field(default_factory=lambda: [32, 16], metadata={"help": "output channels of the encoder's stride-2 convolutions (the decoder mirrors them)"})
    kernel: int = field(default=5, metadata={"help": "convolution kernel size (odd)"})
    latent: int = field(default=16, metadata={"help": "width of the latent code of a window (the bottleneck)"})
    activation: Literal["relu", "gelu", "tanh"] = field(default="relu", metadata={"help": "activation after each hidden layer"})

    def check(self) -> None:
        if not 1 <= len(self.channels) <= MAX_LAYERS:
            raise ValueError(f"channels must list 1 to {MAX_LAYERS} convolution widths, got {brief(self.channels)}")
        if any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive, got {brief(self.channels)}")
        if not (1 <= self.kernel <= MAX_KERNEL and self.kernel % 2 == 1):
            raise ValueError(f"kernel must be an odd size in [1, {MAX_KERNEL}], got {self.kernel}")
        if self.latent < 1:
            raise ValueError(f"latent must be a positive width, got {self.latent}")


@dataclass
class SequenceOptions(DetectorOptions, ConvArchitecture):
    """The architecture's options, then the detector's (dataclass fields follow the reversed MRO)."""

    def check(self) -> None:
        ConvArchitecture.check(self)
        DetectorOptions.check(self)


def window_shape(info: StreamInfo) -> tuple[int, int]:
    """(window, channels) of the stream's samples; ValueError for any other shape."""
    shape = tuple(int(d) for d in info.input_shape)
    if len(shape) == 1:
        shape = (shape[0], 1)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(
            f"sequence-autoencoder takes windows of shape (window, channels), as the windows reader makes; "
            f"the stream's samples have shape {list(info.input_shape)} (use the autoencoder model for flat features)"
        )
    return shape  # type: ignore[return-value]


def encoded_length(window: int, layers: int) -> int:
    """Length of a window after ``layers`` stride-2 convolutions padded by kernel // 2 (odd kernel)."""
    for _ in range(layers):
        window = (window - 1) // 2 + 1
    return window


def network_parameters(options: SequenceOptions, window: int, channels: int) -> int:
    """Parameters of :class:`SequenceNetwork` (counted before it is built, to refuse sizes that do not fit)."""
    widths = [channels, *options.channels]
    convolutions = sum(2 * a * b * options.kernel + a + b for a, b in zip(widths, widths[1:]))  # encoder + decoder
    code = widths[-1] * encoded_length(window, len(options.channels))
    return convolutions + 2 * code * options.latent + code + options.latent


class SequenceNetwork(nn.Module):
    """The conv autoencoder of the module docstring: (N, window, channels) in and out."""

    def __init__(self, options: SequenceOptions, window: int, channels: int):
        super().__init__()
        activation = ACTIVATIONS[options.activation]
        pad = options.kernel // 2
        lengths, widths = [window], [channels, *options.channels]
        encoder: list[nn.Module] = []
        for inputs, outputs in zip(widths, widths[1:]):
            encoder += [nn.Conv1d(inputs, outputs, options.kernel, stride=2, padding=pad), activation()]
            lengths.append(encoded_length(lengths[-1], 1))
        code = widths[-1] * lengths[-1]
        self.encoder = nn.Sequential(*encoder)
        self.bottleneck = nn.Sequential(
            nn.Flatten(), nn.Linear(code, options.latent), nn.Linear(options.latent, code), activation(),
            nn.Unflatten(1, (widths[-1], lengths[-1])),
        )
        decoder: list[nn.Module] = []
        for i in range(len(options.channels), 0, -1):
            # restores length lengths[i-1] from lengths[i]: (L - 1)·2 - 2·pad + kernel + output_padding
            extra = lengths[i - 1] - ((lengths[i] - 1) * 2 - 2 * pad + options.kernel)
            decoder.append(nn.ConvTranspose1d(widths[i], widths[i - 1], options.kernel, stride=2, padding=pad, output_padding=extra))
            if i > 1:
                decoder.append(activation())
        self.decoder = nn.Sequential(*decoder)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.encoder(z.transpose(1, 2))
        return self.decoder(self.bottleneck(h)).transpose(1, 2)


class SequenceAutoencoder(Detector):
    """1-D conv autoencoder detector over windows; ``forward(x)`` returns the reconstruction (N, window, channels)."""

    def __init__(self, options: SequenceOptions, info: StreamInfo):
        window, channels = window_shape(info)
        super().__init__(options, (window, channels))
        parameters = network_parameters(options, window, channels)
        resources.require(
            2 * parameters * resources.FLOAT_BYTES,
            f"a sequence autoencoder of {parameters:,} parameters over windows of {window}×{channels} (weights and gradients)",
            "model.channels",
        )
        self.network = SequenceNetwork(options, window, channels)
