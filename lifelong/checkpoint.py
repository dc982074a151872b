"""Atomic checkpoints of a generation: weights and strategy tensors in safetensors, the rest in JSON.

Layout of one checkpoint directory::

    gen-0003/
      model.safetensors       the model's state_dict
      strategies.safetensors  every tensor of every strategy's state_dict, keys "<strategy>/<path>"
      meta.json               model spec, generation facts, the non-tensor parts of strategy state
    LATEST                    the name of the newest complete checkpoint

Each checkpoint is written to a temporary directory and renamed into place, and ``LATEST`` is
replaced atomically after it, so a crash never leaves a half-written checkpoint behind ``LATEST``.
Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lifelong.errors import UserError
from lifelong.types import Generation, ModelSpec

_TENSOR = "__tensor__"


def to_cpu(obj: Any) -> Any:
    """A copy of a nested state with every tensor detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace each tensor in a nested state with a reference, collecting the tensors by key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {str(k): split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save(directory: str | Path, generation: Generation) -> Path:
    """Write ``generation`` under ``directory`` atomically; returns the checkpoint's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"gen-{generation.index:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
    tensors: dict[str, torch.Tensor] = {}
    strategy_meta = split_tensors(generation.strategy_state, "", tensors)
    save_file({k: v.contiguous() for k, v in generation.state.items()}, str(tmp / "model.safetensors"))
    save_file(tensors, str(tmp / "strategies.safetensors"))
    meta = {
        "index": generation.index,
        "parent": generation.parent,
        "experiences_covered": generation.experiences_covered,
        "accuracy": {str(k): v for k, v in generation.accuracy.items()},
        "model_spec": generation.model_spec.to_dict(),
        "strategy_state": strategy_meta,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    final = directory / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = directory / ".LATEST.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, directory / "LATEST")
    return final


def load(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint directory (or a parent holding ``LATEST``): spec, weights, strategy state, meta."""
    path = Path(path)
    if (path / "LATEST").is_file():
        path = path / (path / "LATEST").read_text().strip()
    if not (path / "meta.json").is_file():
        raise UserError(f"{str(path)!r} is not a lifelong checkpoint (no meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    strategy_state = join_tensors(meta["strategy_state"], load_file(str(path / "strategies.safetensors")))
    return ModelSpec.from_dict(meta["model_spec"]), state, strategy_state, meta
