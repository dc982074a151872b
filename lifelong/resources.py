"""Memory estimates for sizes a pipeline sets: refuse, before anything is allocated, what cannot fit.

A size in a pipeline (an MLP's hidden widths, a CNN's channels, a replay memory, a PathNet grid)
decides how much memory the run will take. A size that cannot fit must not reach the allocator:
on Linux a large allocation either fails with a traceback or, with overcommit, succeeds and gets
the process killed by the OOM killer later, mid-run, with no message at all. Components therefore
estimate what a size costs from their options and the stream's description, before building
anything, and call :func:`require`, which raises a :class:`~lifelong.errors.ConfigError` naming the
option, the estimate and the memory available (exit status 2).

What is available: on the CPU, ``MemAvailable`` of ``/proc/meminfo`` (``os.sysconf`` elsewhere),
lowered to the room left under a cgroup memory limit when the process runs in one (a container
sees the host's ``MemAvailable``) and under an address-space limit (``ulimit -v``); on a CUDA
device, its free memory (``torch.cuda.mem_get_info``).
A request is refused when it exceeds :data:`USABLE` (90 %) of that, leaving the rest to the
interpreter, the readers and everything the estimate does not count. Estimates are of what the
component is about to allocate: memory already allocated (by the components built before it) is
already missing from what is available.

>>> format_bytes(3 * 2**30)
'3.0 GiB'
>>> mlp_parameters(64, [256, 256], 10)
85002
>>> require(1024, "a tiny buffer", "strategy.replay.memory")  # fits: returns quietly
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from lifelong.errors import ConfigError

if TYPE_CHECKING:
    import torch

USABLE = 0.9  # share of the available memory a run may plan to use
FLOAT_BYTES = 4  # float32, the training dtype
# A model's parameters in training, as multiples of its weights: the weights, their gradients and
# the optimizer's state (Adam and AdamW: two moments; SGD: a momentum buffer when momentum is set).
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1}


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``3.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, or None without a limit."""
    try:
        root = Path("/sys/fs/cgroup")
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                root = root / line[3:].lstrip("/")
                break
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((root / "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None


def _address_space_room() -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``, RLIMIT_AS), or None without one."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(soft - int(line.split()[1]) * 1024, 0)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return None


def available(device: object = "cpu") -> int | None:
    """Bytes of memory free for a new allocation on ``device`` (a torch.device or its name); None if unknown."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind == "cuda":
        import torch

        try:
            index = getattr(device, "index", None)
            free, _ = torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())
            return int(free)
        except (RuntimeError, AssertionError, ValueError):
            return None
    if kind not in ("cpu", "mps"):  # mps shares the host's memory
        return None
    found = [n for n in (_meminfo_available(), _cgroup_room(), _address_space_room()) if n is not None]
    return min(found) if found else None


def require(nbytes: float, what: str, where: str, device: object = "cpu") -> None:
    """Refuse (ConfigError naming ``where``) ``nbytes`` that would not fit in the memory free on ``device``.

    ``what`` says what the bytes are for, e.g. "model 'mlp': 1.2e9 parameters (weights, gradients,
    optimizer state)". Nothing is refused when the free memory cannot be measured.
    """
    free = available(device)
    if free is None or nbytes <= USABLE * free:
        return
    raise ConfigError(
        where,
        f"{what} needs about {format_bytes(nbytes)}, and only {format_bytes(free)} of memory is available on "
        f"{device} (a run plans with at most {USABLE:.0%} of it): use a smaller size",
    )


def elements(shape: Iterable[int]) -> int:
    """Elements of a tensor of ``shape`` (exact integer arithmetic: never overflows)."""
    return math.prod(int(d) for d in shape)


def linear_parameters(inputs: int, outputs: int) -> int:
    """Weights and biases of ``nn.Linear(inputs, outputs)``."""
    return inputs * outputs + outputs


def mlp_parameters(inputs: int, hidden: Iterable[int], outputs: int) -> int:
    """Parameters of an MLP ``inputs → hidden… → outputs`` (linear layers with biases)."""
    total, width = 0, inputs
    for h in hidden:
        total += linear_parameters(width, h)
        width = h
    return total + linear_parameters(width, outputs)


def training_bytes(parameters: int, optimizer: str = "adam", momentum: float = 0.0) -> int:
    """Bytes a model of ``parameters`` float32 weights needs in training: weights, gradients, optimizer state."""
    states = OPTIMIZER_STATES.get(optimizer, 2)
    if optimizer == "sgd" and not momentum:
        states = 0
    return parameters * FLOAT_BYTES * (2 + states)


def activation_bytes(model: torch.nn.Module, input_shape: tuple[int, ...], num_tasks: int = 1) -> tuple[int, int] | None:
    """(sum, largest) of the bytes one sample's layer outputs take in a forward pass of ``model``.

    Measured on PyTorch's ``meta`` device, which computes shapes and allocates nothing: the
    weights are swapped for meta tensors of their shape (``torch.func.functional_call``), a batch
    of two meta samples goes through, and a forward hook on every leaf module adds up the size of
    its output's first sample. None
    when the model cannot run that way (a model with a ``prepare`` step, a forward that reads
    values on the host): the caller then has no estimate, and refuses nothing.
    """
    import torch

    if getattr(model, "prepare", None) is not None:
        return None
    sizes: list[int] = []

    def hook(module, inputs, output) -> None:
        for out in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(out, torch.Tensor):
                sizes.append(out[0].numel() * out.element_size() if out.dim() else out.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        swapped = {name: torch.empty_like(t, device="meta") for name, t in (*model.named_parameters(), *model.named_buffers())}
        # two samples: BatchNorm in training mode refuses one value per channel (a 1x1 feature map)
        x = torch.zeros((2, *input_shape), device="meta")
        args = (x,) if num_tasks <= 1 else (x, torch.zeros(2, dtype=torch.long, device="meta"))
        with torch.no_grad():
            torch.func.functional_call(model, swapped, args)
    except Exception:  # noqa: BLE001 - any model that cannot run on meta tensors simply has no estimate
        return None
    finally:
        for handle in handles:
            handle.remove()
    return (sum(sizes), max(sizes, default=0))
