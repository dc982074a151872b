"""Small helpers shared by the benchmark scripts (run as ``python bench/NAME.py``, so importable as ``common``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


# The benchmarks' shared model and optimizer: MLP [256, 256], Adam at lr 1e-3, batch 32.
MLP_ADAM = [
    "model.name='mlp'",
    "model.hidden=[256, 256]",
    "learner.optimizer='adam'",
    "learner.lr=0.001",
    "learner.batch_size=32",
]


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure (creating its folder) and free it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> str:
    """The machine's 1/5/15-minute load, recorded with results taken on shared machines."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"
