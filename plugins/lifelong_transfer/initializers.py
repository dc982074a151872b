"""Initializers that start a model from stored weights: ``file`` (a weights file) and ``mlflow`` (a generation).

Both build the architecture through the plugin host — a registered model component and its
options — then load weights into it, and set the module's ``model_spec`` to that component and
those options, so generations of the run are rebuilt (served, checkpointed, continued) without
the original file or store.

``mlflow`` reads a generation exactly as :mod:`lifelong_mlflow.pyfunc` stores it (``model.json``:
the ModelSpec; ``weights.safetensors``: the state) from ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, any other MLflow artifact URI of a logged generation, or a local
directory. This is how a retraining service continues from its last model::

    [model]
    name = "mlflow"
    model_uri = "models:/lifelong@champion"
    tracking_uri = "sqlite:///mlflow.db"
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from lifelong import options as opts
from lifelong.errors import ConfigError, UserError
from lifelong.types import ModelSpec, StreamInfo
from lifelong_transfer.model import say
from lifelong_transfer.options import FileOptions, GenerationOptions
from lifelong_transfer.weights import load_into, load_state

WEIGHTS, SPEC = "weights.safetensors", "model.json"  # the artifact names lifelong_mlflow.pyfunc writes
INITIALIZERS = ("file", "mlflow")


def build(
    name: str, raw: dict[str, Any], info: StreamInfo, where_name: str, where: str
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model component ``name`` built with options ``raw`` (validated), and its resolved options.

    The component comes from a fresh plugin host: entry points and ``LIFELONG_PLUGINS`` (a plugin
    loaded only with ``--plugin`` is not seen here; see docs/transfer.md).
    """
    from lifelong.host import PluginHost

    if name in INITIALIZERS:
        raise ConfigError(where_name, f"{name!r} is an initializer, not an architecture: name the model component to build")
    component = PluginHost().component("model", name, where_name)
    validated = opts.validate(component.options, raw, where)
    try:
        model = component.factory(validated, info)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, str(exc)) from None
    return model, opts.to_dict(validated)


def _keep_spec(model: torch.nn.Module, name: str, resolved: dict[str, Any], info: StreamInfo) -> torch.nn.Module:
    if getattr(model, "model_spec", None) is None:
        model.model_spec = ModelSpec(name, resolved, info)
    return model


def file_model(options: FileOptions, info: StreamInfo) -> torch.nn.Module:
    """The ``arch`` component with ``arch_options``, weights from ``path`` (safetensors or a state_dict)."""
    model, resolved = build(options.arch, options.arch_options, info, "model.arch", "model.arch_options")
    state = load_state(options.path, options.allow_pickle)
    load_into(model, state, f"weights file {options.path!r}", strict=options.strict)
    return _keep_spec(model, options.arch, resolved, info)


def generation_model(options: GenerationOptions, info: StreamInfo) -> torch.nn.Module:
    """The generation at ``model_uri``, rebuilt by its own spec (``options`` overriding), ready to train on."""
    spec, state, origin = fetch(options.model_uri, options.tracking_uri)
    stored = spec.info
    mismatch = [
        f"{what} {a} (the stream: {b})"
        for what, a, b in (
            ("input shape", tuple(stored.input_shape), tuple(info.input_shape)),
            ("classes per head", stored.num_classes, info.num_classes),
            ("task heads", stored.num_tasks, info.num_tasks),
        )
        if a != b
    ]
    if mismatch:
        raise ConfigError("model.model_uri", f"the generation at {options.model_uri} does not fit this stream: it has " + "; ".join(mismatch))
    model, resolved = build(spec.name, {**spec.options, **options.options}, info, f"{options.model_uri}: model.json name", "model.options")
    load_into(model, state, f"the generation at {options.model_uri}")
    say(f"continuing from {origin}: model {spec.name!r}")
    return _keep_spec(model, spec.name, resolved, info)


def fetch(model_uri: str, tracking_uri: str = "") -> tuple[ModelSpec, dict[str, torch.Tensor], str]:
    """The spec and weights of a stored generation, and a description of where they came from."""
    from safetensors.torch import load_file

    local = Path(model_uri).expanduser()
    if local.is_dir():
        return (*_read(local, load_file), str(local))  # type: ignore[return-value]
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    origin = model_uri
    try:
        artifact_uri = model_uri
        if model_uri.startswith("models:/"):
            client = MlflowClient(uri)
            rest = model_uri[len("models:/") :]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = rest.partition("/")
                if not number.isdigit():
                    raise ConfigError("model.model_uri", f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")
                version = client.get_model_version(name, number)
            artifact_uri = version.source
            generation = (version.tags or {}).get("lifelong.generation")
            origin = f"{name} v{version.version}" + (f" (generation {generation} of run {version.run_id})" if generation else "")
        with tempfile.TemporaryDirectory(prefix="lifelong-generation-") as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=uri)
            spec, state = _read(Path(path), load_file)
    except MlflowException as exc:
        raise UserError(f"model.model_uri: cannot read {model_uri} from {uri}: {exc.message}") from None
    return spec, state, origin


def _read(root: Path, load_file) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    specs, weights = sorted(root.rglob(SPEC)), sorted(root.rglob(WEIGHTS))
    if not specs or not weights:
        raise UserError(f"{root} holds no lifelong generation (expected {SPEC} and {WEIGHTS}, as the mlflow tracker logs them)")
    try:
        spec = ModelSpec.from_dict(json.loads(specs[0].read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{specs[0]} is not a lifelong model spec: {exc}") from None
    return spec, load_file(str(weights[0]))
