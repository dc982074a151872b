"""Choosing the training device."""

from __future__ import annotations

import torch

from lifelong.errors import ConfigError


def resolve(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must name an available device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError("learner.device", f"{name!r} is not a device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("learner.device", f"{name!r} requested but CUDA is not available here (use 'auto' or 'cpu')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("learner.device", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("learner.device", "'mps' requested but MPS is not available here")
    return device
