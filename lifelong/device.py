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


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 autocast needs a CUDA device that computes in bfloat16 (Ampere and later), or the CPU."""
    if precision != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("learner.precision", f"bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use fp32")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError("learner.precision", f"bf16 autocast is supported on cuda and cpu, not {device.type}; use fp32")
