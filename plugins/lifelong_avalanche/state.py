"""An Avalanche plugin's attributes as a lifelong strategy state: tensors plus JSON, never pickles.

Avalanche plugins have no ``state_dict``: their state is their instance attributes. This module
walks them and writes what it can represent in lifelong's checkpoint format (nested dicts and lists
of tensors and JSON scalars, :mod:`lifelong.checkpoint`):

- tensors (with the device they lived on), numbers, strings, None;
- lists, tuples, sets, dicts with any scalar keys, ``defaultdict`` of dict/set/list/int/float;
- Avalanche's ``ParamData`` (importances, anchors: its name, tensor and device);
- ``torch.nn.Module`` attributes (the previous model of LwF and LFL) as their ``state_dict``,
  trainable flags and known task labels, restored into a copy of the strategy's model;
- Avalanche datasets of (x, y, task label) samples (A-GEM's per-experience memories, MIR's
  per-class buffers) as those tensors, restored as Avalanche tensor datasets;
- other objects of Avalanche's own classes (LwF's ``LearningWithoutForgetting``, MIR's storage
  policy and its per-class buffers) attribute by attribute, restored into the fresh plugin's instance
  of the same class, or into a new instance (``cls.__new__``, no ``__init__``) of a class looked up by
  name in Avalanche's own modules only.

Anything else (data loaders and their iterators, storage policies, loggers, functions) is left
out and named under ``skipped``: after loading, those attributes keep the values of the freshly
constructed plugin, and :func:`after_load` rebuilds those that are derived from restored state
(AGEM's memory loader; LFL's frozen last layer of the live model).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Callable

import torch

_FACTORIES: dict[Any, str] = {dict: "dict", set: "set", list: "list", int: "int", float: "float"}
_BY_NAME = {v: k for k, v in _FACTORIES.items()}


class Unencodable(Exception):
    """A value the checkpoint format cannot hold; the attribute is skipped."""


def _is_avalanche(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "avalanche"


def encode(obj: Any) -> Any:
    """``obj`` as nested dicts/lists of tensors and JSON scalars; raises Unencodable."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return {"~tensor": obj.detach(), "device": str(obj.device)}
    if isinstance(obj, torch.device):
        return {"~device": str(obj)}
    if isinstance(obj, torch.Size):
        return {"~size": list(obj)}
    if any(c.__name__ == "AvalancheDataset" for c in type(obj).__mro__) and _is_avalanche(obj):
        return {"~dataset": dataset_tensors(obj)}
    if isinstance(obj, tuple):
        return {"~tuple": [encode(v) for v in obj]}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return {"~set": [encode(v) for v in sorted(obj, key=repr)]}
    if isinstance(obj, dict):
        items = [[encode_key(k), encode(v)] for k, v in obj.items()]
        if isinstance(obj, defaultdict):
            factory = _FACTORIES.get(obj.default_factory)
            if factory is None:
                raise Unencodable(f"defaultdict of {obj.default_factory!r}")
            return {"~defaultdict": factory, "items": items}
        return {"~dict": items}
    if type(obj).__name__ == "ParamData" and _is_avalanche(obj):
        return {"~param": obj.name, "data": obj.data.detach(), "device": str(obj.device)}
    if isinstance(obj, torch.nn.Module):
        return {
            "~module": obj.state_dict(),
            "trainable": [p.requires_grad for p in obj.parameters()],
            "tasks": sorted(getattr(obj, "known_train_tasks_labels", set())),
            "training": obj.training,
        }
    if _is_avalanche(obj) and hasattr(obj, "__dict__"):
        cls = type(obj)
        return {"~attrs": f"{cls.__module__}:{cls.__qualname__}", "values": {k: encode(v) for k, v in vars(obj).items()}}
    raise Unencodable(type(obj).__name__)


def encode_key(key: Any) -> Any:
    if key is None or isinstance(key, (bool, int, float, str)):
        return key
    if isinstance(key, tuple):
        return {"~tuple": [encode_key(k) for k in key]}
    raise Unencodable(f"dict key {key!r}")


def dataset_tensors(dataset: Any) -> dict[str, torch.Tensor]:
    """(x, y, task label) of every sample of an Avalanche classification dataset, in order."""
    from torch.utils.data import DataLoader

    xs, ys, ts = [], [], []
    if len(dataset) and len(dataset[0]) < 3:
        raise Unencodable("not a dataset of (x, y, task label) samples")
    for batch in DataLoader(dataset, batch_size=1024, collate_fn=getattr(dataset, "collate_fn", None)):
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]))
        ts.append(torch.as_tensor(batch[-1]))
    if not xs:
        return {"x": torch.zeros(0), "y": torch.zeros(0, dtype=torch.long), "t": torch.zeros(0, dtype=torch.long)}
    return {"x": torch.cat(xs), "y": torch.cat(ys), "t": torch.cat(ts)}


def make_dataset(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> Any:
    """An Avalanche classification dataset of (x, y, task label), what plugins read as ``experience.dataset``."""
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset

    return _make_taskaware_tensor_classification_dataset(x, y, targets=y, task_labels=t)


def decode(enc: Any, current: Any, module_like: Callable[[], torch.nn.Module]) -> Any:
    """The value ``enc`` encodes. ``current`` is the attribute's present value (objects of Avalanche's
    classes are restored into it); ``module_like()`` gives a fresh copy of the strategy's model."""
    if isinstance(enc, list):
        return [decode(v, None, module_like) for v in enc]
    if not isinstance(enc, dict):
        return enc
    if "~tensor" in enc:
        return enc["~tensor"].to(_device(enc["device"]))
    if "~device" in enc:
        return torch.device(enc["~device"])
    if "~size" in enc:
        return torch.Size(enc["~size"])
    if "~tuple" in enc:
        olds = list(current) if isinstance(current, tuple) and len(current) == len(enc["~tuple"]) else [None] * len(enc["~tuple"])
        return tuple(decode(v, o, module_like) for v, o in zip(enc["~tuple"], olds))
    if "~set" in enc:
        return {decode(v, None, module_like) for v in enc["~set"]}
    if "~dict" in enc or "~defaultdict" in enc:
        items = enc.get("~dict", enc.get("items"))
        out: dict = defaultdict(_BY_NAME[enc["~defaultdict"]]) if "~defaultdict" in enc else {}
        for k, v in items:
            key = decode_key(k)
            old = current.get(key) if isinstance(current, dict) else None
            out[key] = decode(v, old, module_like)
        return out
    if "~param" in enc:
        from avalanche.training.utils import ParamData

        device = _device(enc["device"])
        return ParamData(enc["~param"], init_tensor=enc["data"].to(device), device=device)
    if "~module" in enc:
        module = module_like()
        module.load_state_dict(enc["~module"])
        for p, trainable in zip(module.parameters(), enc["trainable"]):
            p.requires_grad_(trainable)
        if hasattr(module, "known_train_tasks_labels"):
            module.known_train_tasks_labels = set(enc["tasks"])
        module.train(enc["training"])
        return module
    if "~dataset" in enc:
        data = enc["~dataset"]
        return make_dataset(data["x"], data["y"], data["t"])
    if "~attrs" in enc:
        cls = _avalanche_class(enc["~attrs"])
        target = current if type(current) is cls else cls.__new__(cls)  # attributes only, as pickle would, minus code
        missed = restore(target, enc["values"], module_like)
        if missed:
            raise Unencodable(f"{enc['~attrs']}: {', '.join(missed)}")
        return target
    return {k: decode(v, None, module_like) for k, v in enc.items()}  # a plain str-keyed dict (e.g. a state_dict)


def _avalanche_class(name: str) -> type:
    """The class ``module:qualname`` names, only from Avalanche's own modules (never arbitrary code)."""
    import importlib

    module, _, qualname = name.partition(":")
    if module.split(".")[0] != "avalanche" or "." in qualname:
        raise Unencodable(f"not an Avalanche class: {name}")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        raise Unencodable(f"no class {name} in this Avalanche") from None
    if not isinstance(cls, type):
        raise Unencodable(f"not a class: {name}")
    return cls


def decode_key(key: Any) -> Any:
    if isinstance(key, dict) and "~tuple" in key:
        return tuple(decode_key(k) for k in key["~tuple"])
    return key


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def snapshot(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """(encoded attributes, names of the attributes left out) of ``obj``."""
    values, skipped = {}, []
    for name, value in vars(obj).items():
        try:
            values[name] = encode(value)
        except Unencodable:
            skipped.append(name)
    return values, skipped


def restore(obj: Any, values: dict[str, Any], module_like: Callable[[], torch.nn.Module]) -> list[str]:
    """Set ``obj``'s attributes from ``values``; returns the names that could not be restored (an
    object of Avalanche's classes with no fresh counterpart to restore into), which keep their value."""
    missed = []
    for name, enc in values.items():
        try:
            setattr(obj, name, decode(enc, getattr(obj, name, None), module_like))
        except Unencodable:
            missed.append(name)
    return missed


def after_load(plugin: Any, strategy: Any, last_classes: list[int]) -> None:
    """Rebuild what a plugin derives from the state just restored (the attributes ``snapshot`` skips).

    ``last_classes``: the classes of the last training batch before the state was saved (MIR leaves
    them out of its replay loader).
    """
    name = type(plugin).__name__
    if name == "AGEMPlugin" and plugin.buffers:
        from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader

        plugin.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            plugin.buffers, batch_size=plugin.sample_size // len(plugin.buffers), num_workers=0, pin_memory=False
        )
        plugin.buffer_dliter = iter(plugin.buffer_dataloader)
    elif name == "MIRPlugin" and plugin.storage_policy.buffer_groups:
        from avalanche.benchmarks.utils import concat_datasets
        from avalanche.training.plugins.mir import cycle

        groups = plugin.storage_policy.buffer_groups
        buffer = concat_datasets([groups[key].buffer for key in groups if int(key) not in last_classes])
        plugin.replay_loader = (
            cycle(torch.utils.data.DataLoader(buffer, batch_size=plugin.subsample, shuffle=True))
            if len(buffer) > plugin.batch_size_mem
            else None
        )  # as MIRPlugin.after_training_exp builds it
    elif name == "LFLPlugin" and plugin.prev_model is not None:
        from avalanche.training.utils import get_last_fc_layer

        for p in get_last_fc_layer(strategy.model)[1].parameters():
            p.requires_grad = False


def module_copier(model: torch.nn.Module) -> Callable[[], torch.nn.Module]:
    return lambda: copy.deepcopy(model)
