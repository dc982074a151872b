"""Small helpers shared by the benchmark scripts (run as ``python bench/NAME.py``, so importable as ``common``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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


CLOCKS = {"process": time.process_time, "wall": time.perf_counter}


def use_clock(name: str) -> Callable[[], float]:
    """The clock ``name`` (``process``: this process's CPU time; ``wall``), set as the pipeline's own
    training clock too (``lifelong.session.training_clock``), so both sides of a ratio are timed alike.

    On a shared machine wall time measures the other jobs as much as the code; CPU time does not.
    It counts every thread of the process, so a pipeline's helper threads (a reader, a checkpoint
    writer) count against it: conservative for the pipeline.
    """
    from lifelong import session

    clock = CLOCKS[name]
    session.training_clock = clock
    return clock


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


def shell_command(command: str) -> str:
    """``command`` as a reader would type it to reproduce a run: with the OMP_NUM_THREADS it ran under, if any."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={threads} {command}" if threads else command


def git_commit() -> str:
    """``git rev-parse --short HEAD`` of this checkout, with ``+dirty`` when the working tree has uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        run = lambda *cmd: subprocess.run(cmd, check=False, cwd=root, capture_output=True, text=True, timeout=30)
        head = run("git", "rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("git", "status", "--porcelain").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def source_fingerprint() -> str:
    """SHA-256 (12 hex digits) of every .py file under lifelong/ and plugins/ as they are on disk now.

    Other sessions edit and commit the kernel while benchmarks run; scripts record this at their start
    and at their end, so a result measured across a change of the code says so.
    """
    import hashlib

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*(root / "lifelong").rglob("*.py"), *(root / "plugins").rglob("*.py")]):
        digest.update(str(path.relative_to(root)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()[:12]


def provenance(command: str, commit_at_start: str, source_at_start: str) -> dict:
    """What reproduces a result and whether the code moved under it: the command, the commit and the
    source fingerprint at both ends, torch, CPUs, OMP threads and the load at the end."""
    source_at_end = source_fingerprint()
    return {
        "command": command,
        "commit": git_commit(),
        "commit_at_start": commit_at_start,
        "source_fingerprint": [source_at_start, source_at_end],
        "code_changed_during_run": source_at_start != source_at_end,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "load_average_at_end": load_average(),
    }
