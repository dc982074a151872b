"""Pipeline files: TOML parsing, ``--set`` overrides, defaults, and validation of the kernel's sections.

A pipeline file replaces each section it names with its own; component sections it omits come from
the built-in default pipeline (``default_pipeline.toml``). ``[learner]`` and ``[checkpoint]`` are
the kernel's own: in a pipeline file they start from the options' defaults (the table below, in
docs/plugins.md), not from the built-in demo's values, so a file that omits ``epochs`` gets 1.
``[promotion]`` is the kernel's too: the promotion gate (:mod:`lifelong.promotion`) is on exactly
when the section exists, and its rules start from their defaults.
``--set`` overrides merge key by key into whatever the file or the default gave. Component sections (``[stream]``, ``[model]``,
``[boundary]``, ``[strategy.NAME]``, ``[tracking.NAME]``) are validated against the schema their
component registered (see :mod:`lifelong.pipeline`).
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from lifelong import options as opts
from lifelong.distributed import DistributedOptions
from lifelong.errors import ConfigError, UserError, brief, clip
from lifelong.promotion import PromotionOptions

COMPONENT_SECTIONS = ("stream", "model", "boundary", "tracking")
KERNEL_SECTIONS = ("learner", "checkpoint", "distributed")
# [promotion] is the kernel's too, but optional: the promotion gate is on exactly when the section exists.
KNOWN_SECTIONS = (*COMPONENT_SECTIONS, *KERNEL_SECTIONS, "promotion", "strategy")


MAX_SEED = 2**32 - 1  # numpy's legacy seeds and most libraries' random_state take no more
MAX_EPOCHS = 10_000
MAX_BATCH = 2**20  # samples in one batch (training or evaluation)
DEVICE_TYPES = ("cpu", "cuda", "mps")  # "meta" has no storage; others are not supported by the kernel
MAX_FILE_BYTES = 64 * 2**20  # a pipeline file; a larger one is almost certainly not a pipeline
MAX_DEPTH = opts.MAX_DEPTH  # tables nested in a pipeline, its sections included


def max_threads() -> int:
    """The most CPU threads ``learner.threads`` may ask for: 4 per core (more only contend)."""
    return 4 * (os.cpu_count() or 1)


def check_device_name(name: str, where: str = "learner.device") -> None:
    """``auto``, or a device of a type the kernel trains on (cpu, cuda, cuda:N, mps); ConfigError otherwise.

    Whether the device exists here is :func:`lifelong.device.resolve`'s question, asked when the plan
    is built; this is the name's form, refused in any pipeline wherever it runs.
    """
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(where, f"expected auto, cpu, cuda, cuda:N or mps, got {brief(name)}") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(where, f"expected auto, cpu, cuda, cuda:N or mps, got {brief(name)} (a {device.type!r} device cannot train)")


@dataclass
class LearnerOptions:
    strategies: list[str] = field(default_factory=lambda: ["naive"], metadata={"help": "strategy names, composed"})
    epochs: int = field(default=1, metadata={"help": "passes over each experience; 1 for a true stream"})
    batch_size: int = field(default=32, metadata={"help": "stream samples per optimizer update"})
    lr: float = field(default=0.001, metadata={"help": "learning rate"})
    optimizer: Literal["adam", "adamw", "sgd"] = field(default="adam", metadata={"help": "adam, adamw or sgd"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay of the optimizer (decoupled for adamw)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"})
    precision: str = field(default="fp32", metadata={"help": "fp32, or bf16: the training forward and loss under torch.autocast in bfloat16 (CUDA with bf16, or the CPU); weights, optimizer state and evaluation stay float32"})
    seed: int = field(default=0, metadata={"help": "seeds python, numpy and torch, and every strategy's generator"})
    log_every: int = field(default=20, metadata={"help": "batches between host reads of running metrics"})
    eval_batch_size: int = field(default=1024, metadata={"help": "samples per forward pass when evaluating held-out sets"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on stderr"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch; 0: torch's default (one per core)"})
    max_batches: int = field(default=0, metadata={"help": "end the run after this many stream batches in all (counting those before a resume); 0: the whole stream"})
    max_records: int = field(default=0, metadata={"help": "end the run once this many stream samples were trained in all (counting those before a resume; checked after each batch); 0: no limit"})
    max_seconds: float = field(default=0.0, metadata={"help": "end the run (normally: last generation, checkpoint, commit) after this many seconds of streaming in this process, waits for records included; 0: no limit"})
    prequential_window: int = field(default=1000, metadata={"help": "samples behind prequential_accuracy_recent, the prequential accuracy of the recent stream (counted in whole log_every windows)"})
    eval_keep: int = field(default=0, metadata={"help": "evaluate only the held-out sets of the last this many experiences (windows of an unbounded stream); older sets are dropped; 0: keep all"})
    deterministic: bool = field(default=False, metadata={"help": "torch.use_deterministic_algorithms: bit-identical resumes on any device (on the CPU they are already)"})
    max_nonfinite_batches: int = field(default=10, metadata={"help": "stop the run (exit 2) when this many stream batches in a row had a non-finite loss or gradients; such a batch is never applied and its records go to the dead letters; 0: never stop"})
    continue_strategies: bool = field(default=True, metadata={"help": "when the model continues from a stored generation or checkpoint, restore its strategies' state too (if the strategy list matches)"})

    def check(self) -> None:
        if self.max_nonfinite_batches < 0:
            raise ValueError(f"max_nonfinite_batches must be 0 (never stop) or positive, got {self.max_nonfinite_batches}")
        for name in ("max_batches", "max_records", "max_seconds", "eval_keep"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or positive, got {getattr(self, name)}")
        if self.prequential_window < 1:
            raise ValueError(f"prequential_window must be at least 1 sample, got {self.prequential_window}")
        for name in ("epochs", "batch_size", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"epochs must be at most {MAX_EPOCHS}, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) > MAX_BATCH:
                raise ValueError(f"{name} must be at most {MAX_BATCH} samples, got {getattr(self, name)}")
        threads = max_threads()
        if not 0 <= self.threads <= threads:
            raise ValueError(
                f"threads must be 0 (torch's default) or 1 to {threads} (4 per CPU core here), got {self.threads}"
            )
        # lr, momentum and weight_decay are finite already (lifelong.options refuses NaN and infinity)
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or positive, got {self.weight_decay}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {self.seed}")
        check_device_name(self.device)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies lists a name twice: {self.strategies}")


@dataclass
class CheckpointOptions:
    dir: str = field(default="", metadata={"help": "directory of the session's checkpoints (one at every generation, and as below); empty: none"})
    every_batches: int = field(default=0, metadata={"help": "also checkpoint every this many stream batches; 0: only at generations"})
    every_seconds: float = field(default=0.0, metadata={"help": "also checkpoint when this many seconds passed since the last one; 0: never by time"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept; older ones are removed"})

    def check(self) -> None:
        if self.every_batches < 0:
            raise ValueError(f"every_batches must be 0 or positive, got {self.every_batches}")
        if not self.every_seconds >= 0:  # also refuses NaN
            raise ValueError(f"every_seconds must be 0 or positive, got {self.every_seconds}")
        if self.keep < 1:
            raise ValueError(f"keep must be at least 1, got {self.keep}")


def default_pipeline() -> dict[str, Any]:
    text = resources.files("lifelong").joinpath("default_pipeline.toml").read_text()
    return tomllib.loads(text)


# 64 dotted keys in a row ([a.b.c…] or a.b.c… = 1): tomllib takes time quadratic in a dotted key's
# length (10 s for 100,000 parts), so keys nested deeper than any pipeline's are refused before it
# parses them. Anchored at a word start, so the scan stays linear.
_DEEP_KEY = re.compile(r"(?<![A-Za-z0-9_-])(?:[A-Za-z0-9_-]++[ \t]*+\.[ \t]*+){64}")


def depth(value: Any, limit: int = MAX_DEPTH + 1) -> int:
    """How deeply ``value`` nests tables and lists: 0 for a scalar, 1 for a flat table. Iterative, so
    any depth is measured without recursion; it stops counting past ``limit``.

    >>> depth(1), depth({"a": 1}), depth({"a": {"b": [1, [2]]}})
    (0, 1, 4)
    """
    if not isinstance(value, (dict, list)):
        return 0
    deepest, stack = 1, [(value, 1)]
    while stack:
        node, level = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                deepest = max(deepest, level + 1)
                if deepest > limit:
                    return deepest
                stack.append((child, level + 1))
    return deepest


class _TooDeep(UserError):
    """A TOML text nested beyond any pipeline's depth."""


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """``tomllib.loads`` with every failure a UserError naming ``what``; nesting is bounded."""
    if _DEEP_KEY.search(text):
        raise _TooDeep(f"{what} has a key of more than 64 dotted parts: no pipeline nests that deep")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} is not valid TOML: {clip(str(exc))}") from None
    except RecursionError:
        raise _TooDeep(f"{what} nests arrays or inline tables too deeply (a pipeline nests at most {MAX_DEPTH} levels)") from None
    if depth(data) > MAX_DEPTH + 1:  # the document itself is one level
        raise _TooDeep(f"{what} nests tables or arrays more than {MAX_DEPTH} levels deep")
    return data


def read_pipeline(path: str | Path | None) -> dict[str, Any]:
    """The raw pipeline: the file's sections over the default pipeline's."""
    merged = default_pipeline()
    if path is None:
        return merged
    path = Path(path)
    name = brief(str(path))
    if not path.is_file():
        raise UserError(f"pipeline file {name} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UserError(
                f"pipeline file {name} is {size} bytes; a pipeline file is at most {MAX_FILE_BYTES // 2**20} MiB "
                "(is it a data file?)"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"pipeline file {name} is not UTF-8 text (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise UserError(f"pipeline file {name} cannot be read: {exc.strerror or exc}") from None
    data = parse_toml(text, f"pipeline file {name}")
    for section, value in data.items():
        if section not in KNOWN_SECTIONS:
            raise ConfigError(section, f"unknown section (known sections: {', '.join(KNOWN_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(section, f"expected a table, got {brief(value)}")
        merged[section] = copy.deepcopy(value)
    for section in KERNEL_SECTIONS:
        if section not in data:
            merged.pop(section, None)  # the options' defaults, not the demo's
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` into (["a", "b"], value); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {brief(text)}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise UserError(f"--set {brief(text)}: expected section.key=value, e.g. learner.lr=0.01")
    if len(parts) > MAX_DEPTH:
        raise UserError(f"--set {brief(text)}: a key of {len(parts)} parts nests deeper than any pipeline")
    if "\n" in raw or "\r" in raw:
        value: Any = raw  # a TOML value is one line: "v = 1\nw = 2" must not parse as two keys
    else:
        try:
            value = parse_toml(f"v = {raw}", f"--set {brief(text)}")["v"]
        except _TooDeep:
            raise
        except UserError:
            value = raw  # not a TOML value: the text itself
    return parts, value


# The key naming a section's component. An override that switches to another component starts that
# section afresh: the previous component's options (the default's scenario, say) rarely mean the same
# for the new one, and keeping them silently changes what runs.
COMPONENT_KEYS = {"stream": "reader", "model": "name", "boundary": "detector"}


def apply_overrides(pipeline: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    parsed = [(text, *parse_override(text)) for text in overrides]
    for _, parts, value in parsed:
        section = parts[0]
        if parts[1:] == [COMPONENT_KEYS.get(section)] and pipeline.get(section, {}).get(parts[1]) != value:
            pipeline[section] = {}
    for text, parts, value in parsed:
        if parts[0] not in KNOWN_SECTIONS:
            raise ConfigError(parts[0], f"unknown section (known sections: {', '.join(KNOWN_SECTIONS)})")
        node = pipeline
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {brief(text)}: {brief(part)} is not a table")
        node[parts[-1]] = value
    if depth(pipeline) > MAX_DEPTH + 1:
        raise UserError(f"the pipeline nests tables or arrays more than {MAX_DEPTH} levels deep")
    return pipeline


def load(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a pipeline file (or the default) and apply ``--set`` overrides."""
    return apply_overrides(read_pipeline(path), list(overrides))


def split_component(section: dict[str, Any], key: str, where: str) -> tuple[str, dict[str, Any]]:
    """``{"reader": "csv", "path": …}`` into ("csv", {"path": …})."""
    if not isinstance(section, dict):
        raise ConfigError(where, f"expected a table, got {brief(section)}")
    rest = dict(section)
    name = rest.pop(key, None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.{key}", "missing: name the component to use" if name is None else f"expected a component name, got {brief(name)}")
    return name, rest


def learner_options(pipeline: dict[str, Any]) -> LearnerOptions:
    return opts.validate(LearnerOptions, pipeline.get("learner"), "learner")


def checkpoint_options(pipeline: dict[str, Any]) -> CheckpointOptions:
    return opts.validate(CheckpointOptions, pipeline.get("checkpoint"), "checkpoint")


def distributed_options(pipeline: dict[str, Any]) -> DistributedOptions:
    """``[distributed]``: how ranks talk, when the run is one of several (``WORLD_SIZE`` set)."""
    return opts.validate(DistributedOptions, pipeline.get("distributed"), "distributed")


def promotion_options(pipeline: dict[str, Any]) -> PromotionOptions | None:
    """The gate's rules when the pipeline has a ``[promotion]`` section (even an empty one), else None."""
    if "promotion" not in pipeline:
        return None
    return opts.validate(PromotionOptions, pipeline["promotion"], "promotion")
