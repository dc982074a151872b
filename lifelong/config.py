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
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lifelong import options as opts
from lifelong.errors import ConfigError, UserError
from lifelong.promotion import PromotionOptions

COMPONENT_SECTIONS = ("stream", "model", "boundary", "tracking")
KERNEL_SECTIONS = ("learner", "checkpoint")
# [promotion] is the kernel's too, but optional: the promotion gate is on exactly when the section exists.
KNOWN_SECTIONS = (*COMPONENT_SECTIONS, *KERNEL_SECTIONS, "promotion", "strategy")


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
    seed: int = field(default=0, metadata={"help": "seeds python, numpy and torch, and every strategy's generator"})
    log_every: int = field(default=20, metadata={"help": "batches between host reads of running metrics"})
    eval_batch_size: int = field(default=1024, metadata={"help": "samples per forward pass when evaluating held-out sets"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on stderr"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch; 0: torch's default (one per core)"})
    max_batches: int = field(default=0, metadata={"help": "end the run after this many stream batches in all (counting those before a resume); 0: the whole stream"})
    deterministic: bool = field(default=False, metadata={"help": "torch.use_deterministic_algorithms: bit-identical resumes on any device (on the CPU they are already)"})
    continue_strategies: bool = field(default=True, metadata={"help": "when the model continues from a stored generation or checkpoint, restore its strategies' state too (if the strategy list matches)"})

    def check(self) -> None:
        if self.max_batches < 0:
            raise ValueError(f"max_batches must be 0 (no limit) or positive, got {self.max_batches}")
        for name in ("epochs", "batch_size", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (torch's default) or positive, got {self.threads}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
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


def read_pipeline(path: str | Path | None) -> dict[str, Any]:
    """The raw pipeline: the file's sections over the default pipeline's."""
    merged = default_pipeline()
    if path is None:
        return merged
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pipeline file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"pipeline file {str(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"pipeline file {str(path)!r} is not UTF-8 text: {exc}") from None
    for section, value in data.items():
        if section not in KNOWN_SECTIONS:
            raise ConfigError(section, f"unknown section (known sections: {', '.join(KNOWN_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(section, f"expected a table, got {value!r}")
        merged[section] = copy.deepcopy(value)
    for section in KERNEL_SECTIONS:
        if section not in data:
            merged.pop(section, None)  # the options' defaults, not the demo's
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` into (["a", "b"], value); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. learner.lr=0.01")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
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
                raise UserError(f"--set {text!r}: {part!r} is not a table")
        node[parts[-1]] = value
    return pipeline


def load(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a pipeline file (or the default) and apply ``--set`` overrides."""
    return apply_overrides(read_pipeline(path), list(overrides))


def split_component(section: dict[str, Any], key: str, where: str) -> tuple[str, dict[str, Any]]:
    """``{"reader": "csv", "path": …}`` into ("csv", {"path": …})."""
    rest = dict(section)
    name = rest.pop(key, None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.{key}", "missing: name the component to use")
    return name, rest


def learner_options(pipeline: dict[str, Any]) -> LearnerOptions:
    return opts.validate(LearnerOptions, pipeline.get("learner"), "learner")


def checkpoint_options(pipeline: dict[str, Any]) -> CheckpointOptions:
    return opts.validate(CheckpointOptions, pipeline.get("checkpoint"), "checkpoint")


def promotion_options(pipeline: dict[str, Any]) -> PromotionOptions | None:
    """The gate's rules when the pipeline has a ``[promotion]`` section (even an empty one), else None."""
    if "promotion" not in pipeline:
        return None
    return opts.validate(PromotionOptions, pipeline["promotion"], "promotion")
