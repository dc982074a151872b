"""Data-parallel training on torch.distributed: who this process is among the ranks, and what they agree on.

A run is data-parallel when ``WORLD_SIZE`` is set in the environment, as ``torchrun`` sets it (and
``lifelong run --nproc N``, which spawns the ranks itself). Each rank trains a replica of the model
on its own share of the stream; gradients are all-reduced by PyTorch's ``DistributedDataParallel``
(NCCL on CUDA, gloo on the CPU). Rank 0 alone evaluates, makes generations, writes checkpoints and
talks to trackers.

**The control plane.** Every step starts with one all-reduce of a few integers on a gloo group of
its own (:meth:`World.agree`): whether a rank wants a boundary, a stop or a checkpoint, and how many
samples it trains on. The values are host-side counters, so agreeing on them never waits for the
GPU, and every rank then takes the same decision at the same step. Collective calls therefore
always line up: a boundary (where EWC all-reduces its Fisher) is entered by every rank, a rank with
no batch in a step (its share ran dry, or an experience ended on an uneven number of batches)
still runs a zero-weight backward so the gradient all-reduce has all its members, and each rank's
loss is scaled by its share of the step's samples, so N ranks of batch B compute the gradient of
one batch of N × B (:meth:`World.share`).

**Failure.** Every collective has the process group's timeout (``distributed.timeout``); a rank
that dies closes its connections, and the others fail at their next collective with
:class:`RankLost` instead of hanging. ``--resume`` restarts the job from rank 0's last checkpoint,
which holds every rank's position and state.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from lifelong.errors import ConfigError

INIT_METHOD_ENV = "LIFELONG_INIT_METHOD"  # default env:// (torchrun); --nproc and the tests use file://


@dataclass
class DistributedOptions:
    backend: str = field(default="auto", metadata={"help": "auto (nccl on CUDA, gloo on the CPU), nccl or gloo; used only when WORLD_SIZE is set (torchrun, --nproc)"})
    timeout: float = field(default=300.0, metadata={"help": "seconds a rank waits in a collective (for a dead or stuck rank) before the job stops"})

    def check(self) -> None:
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"backend must be auto, nccl or gloo, got {self.backend!r}")
        if not 1 <= self.timeout <= 86400:
            raise ValueError(f"timeout must be between 1 and 86400 seconds, got {self.timeout}")


class RankLost(RuntimeError):
    """Another rank stopped (died, or failed) while this one waited for it in a collective."""


@dataclass
class World:
    """This process's place among the ranks of a data-parallel run."""

    rank: int
    size: int
    local_rank: int
    backend: str
    control: Any = None  # the gloo group of the control plane

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def agree(self, values: list[int]) -> list[int]:
        """The sum over ranks of each of ``values`` (host integers), one gloo all-reduce."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.int64)
        self._collective(dist.all_reduce, tensor, group=self.control)
        return tensor.tolist()

    def most(self, value: int) -> int:
        """The largest of the ranks' ``value`` (a host integer)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        self._collective(dist.all_reduce, tensor, op=dist.ReduceOp.MAX, group=self.control)
        return int(tensor.item())

    def share(self, samples: int, total: int) -> float:
        """The loss scale of a rank with ``samples`` of the step's ``total``: DDP averages over ranks,
        so scaling each rank's mean loss by ``size × samples / total`` makes the all-reduced gradient
        that of the mean over all the step's samples."""
        return self.size * samples / total if total else 0.0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable), on every rank."""
        box = [value]
        self._collective(dist.broadcast_object_list, box, src=0, group=self.control)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` (picklable) on rank 0, in rank order; None on the others."""
        out = [None] * self.size if self.lead else None
        self._collective(dist.gather_object, value, out, dst=0, group=self.control)
        return out

    def average(self, tensors: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
        """The mean of each tensor over ranks, each rank weighted by ``weight`` (its sample count):
        a rank with weight 0 contributes nothing. On the data-plane group (the tensors' device).
        Returns ``tensors`` unchanged when every weight is 0."""
        names = sorted(tensors)
        if not names:
            return tensors
        flat = torch.cat([tensors[n].reshape(-1).float() * weight for n in names] + [tensors[names[0]].new_full((1,), float(weight))])
        self._collective(dist.all_reduce, flat)
        total = float(flat[-1])  # once per boundary: a host read is fine here
        if total == 0:
            return tensors
        out, offset = {}, 0
        for n in names:
            size = tensors[n].numel()
            out[n] = (flat[offset : offset + size] / total).view_as(tensors[n]).to(tensors[n].dtype)
            offset += size
        return out

    def _collective(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            raise lost(self, exc) if communication_failed(exc) else exc

    def close(self, finished: bool = True) -> None:
        """Leave the process group. After a run that ``finished``, first wait for every rank to get here
        (bounded by the timeout), so no rank tears its connections down while another still uses them."""
        if not dist.is_initialized():
            return
        if finished and self.size > 1:
            try:
                dist.barrier(group=self.control)
            except RuntimeError:  # a rank that failed since: leave anyway
                pass
        dist.destroy_process_group()


# What gloo and NCCL say when a peer is gone: DDP's all-reduce in the backward raises a plain RuntimeError.
_PEER_GONE = ("gloo", "NCCL", "Connection closed", "Connection reset", "Broken pipe", "timed out", "Timed out")


def communication_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because a rank is gone or silent, not a bug of this rank."""
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_GONE))


def lost(world: World, exc: BaseException) -> RankLost:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return RankLost(
        f"rank {world.rank} of {world.size}: another rank stopped or stopped answering ({first}); this rank stops "
        "too. Restart the whole job with --resume to continue from the last checkpoint"
    )


def requested() -> bool:
    """Whether this process was started as one rank of a data-parallel job (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        raise ConfigError(name, f"the environment variable {name}={value!r} is not an integer") from None


def environment() -> tuple[int, int]:
    """(rank, size) as the environment names them (``torchrun``'s RANK and WORLD_SIZE)."""
    size, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    if size < 1 or not 0 <= rank < size:
        raise ConfigError("WORLD_SIZE", f"RANK={rank} must be in [0, WORLD_SIZE={size})")
    return rank, size


def join(options: DistributedOptions, device: torch.device) -> World:
    """Join the process group named by the environment (``torchrun``'s RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank, size = environment()
    local_rank = _env_int("LOCAL_RANK")
    backend = options.backend if options.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend", f"nccl needs CUDA devices, and learner.device is {device.type}")
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE", "this torch build has no torch.distributed")
    timeout = datetime.timedelta(seconds=options.timeout)
    init = os.environ.get(INIT_METHOD_ENV, "env://")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    try:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=size, timeout=timeout, **kwargs)
        control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConfigError("WORLD_SIZE", f"rank {rank} of {size} could not join the process group at {init} ({first})") from None
    return World(rank=rank, size=size, local_rank=local_rank, backend=backend, control=control)


def rank_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``) when training on CUDA; the CPU is shared."""
    if device.type == "cuda" and device.index is None:
        index = _env_int("LOCAL_RANK")
        if index >= torch.cuda.device_count():
            raise ConfigError("LOCAL_RANK", f"local rank {index} has no GPU: {torch.cuda.device_count()} here")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device
