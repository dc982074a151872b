"""Option schemas of the transfer components (kept apart so listing plugins imports no backbone library)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MAX_WARMUP = 100_000  # samples auto probes (it needs a few hundred)
MAX_RESOLUTION = 1024  # pixels a side that images are resized to (backbones take 224 to 600)

Strategy = Literal["feature-extractor", "fine-tune-top", "fine-tune-all", "auto"]
STRATEGIES = ("feature-extractor", "fine-tune-top", "fine-tune-all")


@dataclass
class FineTuneOptions:
    """How a pretrained backbone is trained; shared by every backbone component."""

    strategy: Strategy = field(
        default="feature-extractor",
        metadata={
            "help": "feature-extractor (frozen backbone, features cached once by prepare), fine-tune-top (first "
            "frozen_blocks frozen), fine-tune-all, or auto (data size x measured similarity picks one; see docs/transfer.md)"
        },
    )
    frozen_blocks: int = field(
        default=-1, metadata={"help": "fine-tune-top: backbone blocks frozen from the input side; -1: the backbone's default"}
    )
    unfreeze_per_boundary: int = field(
        default=0, metadata={"help": "fine-tune-top: frozen blocks unfrozen (top first) at every boundary; 0: none"}
    )
    backbone_lr_scale: float = field(
        default=0.1, metadata={"help": "backbone learning rate = learner.lr x this (the head trains at learner.lr)"}
    )
    layer_decay: float = field(
        default=1.0, metadata={"help": "each block's lr is this times the lr of the block above it (1: one backbone lr)"}
    )
    train_bn: bool = field(
        default=False,
        metadata={"help": "update BatchNorm statistics in trainable blocks; false: every backbone BatchNorm stays in eval mode"},
    )
    dropout: float = field(default=0.2, metadata={"help": "dropout on the features before the head (training only)"})
    cache: bool = field(
        default=True,
        metadata={"help": "let prepare compute the frozen part once per sample (bottleneck caching); false: every step recomputes it"},
    )
    expected_samples: int = field(
        default=0,
        metadata={"help": "auto: stream samples to expect; 0: the reader's batch count x learner.batch_size"},
    )
    large_per_class: int = field(
        default=500, metadata={"help": "auto: samples per class from which the data set counts as large"}
    )
    similarity_margin: float = field(
        default=-0.1,
        metadata={
            "help": "auto: similar when (linear-probe accuracy of backbone features - that of the raw inputs) is at least this"
        },
    )
    warmup_samples: int = field(
        default=256, metadata={"help": "auto: the first stream samples, read ahead by the kernel, probed before deciding"}
    )

    def check(self) -> None:
        if self.frozen_blocks < -1:
            raise ValueError(f"frozen_blocks must be -1 (default) or at least 0, got {self.frozen_blocks}")
        if self.unfreeze_per_boundary < 0:
            raise ValueError(f"unfreeze_per_boundary must be at least 0, got {self.unfreeze_per_boundary}")
        if self.backbone_lr_scale < 0:
            raise ValueError(f"backbone_lr_scale must be at least 0, got {self.backbone_lr_scale}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.expected_samples < 0 or self.large_per_class < 1 or self.warmup_samples < 10:
            raise ValueError("expected_samples must be >= 0, large_per_class >= 1 and warmup_samples >= 10")
        if self.warmup_samples > MAX_WARMUP:  # read ahead and held in memory before the first step
            raise ValueError(f"warmup_samples must be at most {MAX_WARMUP:,}, got {self.warmup_samples}")
        # the difference of two accuracies; every float here is finite already (lifelong.options)
        if not -1 <= self.similarity_margin <= 1:
            raise ValueError(f"similarity_margin must be in [-1, 1] (a difference of accuracies), got {self.similarity_margin}")


@dataclass
class ImageOptions:
    """Input adaptation for image backbones: any (N, H, W) or (N, C, H, W) stream with C = 1 or 3."""

    resolution: int = field(
        default=224, metadata={"help": "images are resized to resolution x resolution (the backbone's native size by default)"}
    )
    mean: list[float] = field(default_factory=list, metadata={"help": "per-channel normalisation mean (RGB); empty: the backbone's"})
    std: list[float] = field(default_factory=list, metadata={"help": "per-channel normalisation std (RGB); empty: the backbone's"})
    input_max: float = field(default=1.0, metadata={"help": "the input value of white: 1.0 for [0, 1] floats, 255 for bytes"})

    def check_image(self) -> None:
        if not 16 <= self.resolution <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be in [16, {MAX_RESOLUTION}], got {self.resolution}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values and len(values) not in (1, 3):
                raise ValueError(f"{name} takes 1 or 3 values, got {values}")
        if self.std and any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.input_max <= 0:
            raise ValueError(f"input_max must be positive, got {self.input_max}")


@dataclass
class EfficientNetOptions(ImageOptions, FineTuneOptions):
    weights: str = field(
        default="", metadata={"help": "a local weights file for the architecture; empty: the ImageNet file of the vision extra"}
    )

    def check(self) -> None:
        FineTuneOptions.check(self)
        self.check_image()


@dataclass
class HubOptions(ImageOptions, FineTuneOptions):
    arch: str = field(default="", metadata={"help": "architecture name in the library, e.g. resnet18 (required)"})
    weights: str = field(
        default="",
        metadata={"help": "local weights file (safetensors or a torch state_dict); empty: the library's local cache, never a download"},
    )

    def check(self) -> None:
        if not self.arch:
            raise ValueError("arch is missing: name the architecture, e.g. arch = \"resnet18\"")
        FineTuneOptions.check(self)
        self.check_image()


@dataclass
class MiniLMOptions(FineTuneOptions):
    max_tokens: int = field(default=128, metadata={"help": "tokens per text (longer texts are cut, shorter padded)"})
    path: str = field(default="", metadata={"help": "directory of the model files; empty: the text extra's packaged copy"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the mean-pooled embedding, as sentence-transformers does"})

    def check(self) -> None:
        FineTuneOptions.check(self)
        if not 2 <= self.max_tokens <= 512:
            raise ValueError(f"max_tokens must be in [2, 512], got {self.max_tokens}")


@dataclass
class FileOptions:
    path: str = field(
        default="",
        metadata={
            "help": "weights file (.safetensors, or a torch state_dict), or a lifelong checkpoint directory (an earlier "
            "run's [checkpoint] dir, or one ckpt-... directory in it: architecture, options, weights and strategy "
            "state all come from it) (required)"
        },
    )
    arch: str = field(
        default="",
        metadata={
            "help": "the model component that builds the architecture, e.g. cnn (required for a weights file; a "
            "checkpoint names its own, and a different one here is an error)"
        },
    )
    arch_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "options of the arch component (a checkpoint holds its own; any given must match them)"},
    )
    allow_pickle: bool = field(
        default=False, metadata={"help": "load a file holding arbitrary pickled objects (runs code from the file: trusted files only)"}
    )
    strict: bool = field(default=True, metadata={"help": "every weight of the model must be in the file, and nothing else"})

    def check(self) -> None:
        if not self.path:
            raise ValueError("path is missing: name the weights file or a checkpoint directory")
        if not self.arch and not Path(self.path).expanduser().is_dir():
            raise ValueError("arch is missing: name the model component of the architecture, e.g. arch = \"cnn\"")


@dataclass
class GenerationOptions:
    model_uri: str = field(
        default="",
        metadata={
            "help": "models:/NAME@ALIAS, models:/NAME/VERSION, models:/MODEL_ID (a logged model), or a local directory of "
            "a logged generation; its strategies' state comes along when stored (required)"
        },
    )
    tracking_uri: str = field(default="", metadata={"help": "MLflow tracking URI; empty: MLflow's own default"})
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "option overrides for the rebuilt model, e.g. {strategy = \"fine-tune-all\"}"}
    )

    def check(self) -> None:
        if not self.model_uri:
            raise ValueError("model_uri is missing: e.g. models:/lifelong@latest")
