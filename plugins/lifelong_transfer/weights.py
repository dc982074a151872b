"""Loading weights safely: safetensors, or ``torch.load(weights_only=True)``; pickles only when asked.

``load_state(path)`` returns a flat ``{name: tensor}`` dict from

- a ``.safetensors`` file (never executes anything);
- a PyTorch file (``.pt``, ``.pth``, ``.bin`` …) read with ``torch.load(weights_only=True)``, which
  only rebuilds tensors and plain containers. A checkpoint that nests the weights under
  ``state_dict``, ``model_state_dict`` or ``model`` is unwrapped.

A file that holds other pickled objects (a whole pickled ``nn.Module``, a custom class) is
refused with a message naming the file and the option that allows it, because unpickling it can
run arbitrary code from the file. ``allow_pickle=True`` (the user's explicit choice) loads it with
``weights_only=False`` and takes the ``state_dict()`` of a pickled module.

>>> import tempfile, torch
>>> from safetensors.torch import save_file
>>> path = tempfile.mkdtemp() + "/w.safetensors"
>>> save_file({"weight": torch.ones(2)}, path)
>>> load_state(path)["weight"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lifelong.errors import UserError

_NESTED = ("state_dict", "model_state_dict", "model")


def load_state(path: str | Path, allow_pickle: bool = False, option: str = "model.allow_pickle") -> dict[str, torch.Tensor]:
    """The tensors of a weights file, on the CPU; see the module docstring. ``option`` names the switch in messages."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"weights file {str(path)!r} is not a readable safetensors file: {exc}") from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"weights file {str(path)!r} holds pickled Python objects, not just tensors, so it was not loaded: "
                f"unpickling it can run arbitrary code from the file (torch.load(weights_only=True) refused it: "
                f"{reason}). Convert it to safetensors, or if you trust its source set {option} = true"
            ) from None
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any failure of an arbitrary pickle is the file's problem
            raise UserError(f"weights file {str(path)!r} could not be unpickled: {type(exc).__name__}: {exc}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"weights file {str(path)!r} is not a PyTorch or safetensors file: {exc}") from None
    return _state_of(loaded, path)


def _state_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, torch.nn.Module):
        return dict(loaded.state_dict())
    if isinstance(loaded, dict):
        for key in _NESTED:
            inner = loaded.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
            if isinstance(inner, torch.nn.Module):
                return dict(inner.state_dict())
        # A checkpoint may carry metadata (an epoch number) beside the weights: the tensors are the state.
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise UserError(
        f"weights file {str(path)!r} holds a {type(loaded).__name__}, not a state_dict (a mapping of names to "
        f"tensors, possibly under {', '.join(repr(k) for k in _NESTED)})"
    )


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """``module.load_state_dict(state)`` with mismatches reported as one UserError naming ``source``."""
    own = module.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape: {', '.join(wrong[:3])}")
    if strict and missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:5])}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:5])}")
    if problems:
        hint = "" if wrong or not strict else " (set strict = false to load the tensors that match)"
        raise UserError(f"{source} does not fit the model: {'; '.join(problems)}{hint}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
