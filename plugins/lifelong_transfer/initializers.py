"""Initializers that start a model from stored state: ``file`` (weights or a checkpoint) and ``mlflow`` (a generation).

Both build the architecture through the run's components (:class:`lifelong.components.Components`:
exactly the plugins of the run, ``--plugin`` and ``--block`` included) — a registered model
component and its options — then load weights into it, and set the module's ``model_spec`` to
that component and those options, so generations of the run are rebuilt (served, checkpointed,
continued) without the original file or store.

``file`` reads a weights file (``arch`` + ``arch_options`` name the architecture), or a lifelong
checkpoint directory — an earlier run's ``[checkpoint] dir`` (its newest valid checkpoint) or one
``ckpt-…`` directory in it — whose model spec names the architecture and its options itself.

``mlflow`` reads a generation exactly as :mod:`lifelong_mlflow.pyfunc` stores it (``model.json``:
the ModelSpec; ``weights.safetensors``: the state; optionally ``strategies.json`` +
``strategies.safetensors``: the strategies' state) from ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``models:/MODEL_ID``, any other MLflow artifact URI of a logged
generation, or a local directory. This is how a retraining service continues from its last model::

    [model]
    name = "mlflow"
    model_uri = "models:/lifelong@champion"
    tracking_uri = "sqlite:///mlflow.db"

Both set two members on the returned module, for the kernel:

- ``continues = {"ref": …, "session": …, "generation": …}``: what the model continued from (the
  pinned model URI ``models:/NAME/VERSION`` — an alias is resolved — or the checkpoint's path), the
  source's session id and generation index (None where unknown);
- ``continued_state = {"strategies": {name: state}, "strategy_names": [...] | None}``: the source's
  strategy state (empty when it holds none) and its strategy list when known; the kernel restores
  it when ``learner.continue_strategies`` is on and the strategy lists match.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifelong.errors import ConfigError, UserError
from lifelong.types import ModelSpec, StreamInfo
from lifelong_transfer.model import say
from lifelong_transfer.options import FileOptions, GenerationOptions
from lifelong_transfer.weights import load_into, load_state

if TYPE_CHECKING:
    from lifelong.components import Components
    from lifelong.checkpoint import Snapshot

# The artifact names lifelong_mlflow.pyfunc writes (not imported: this plugin does not need the mlflow one).
WEIGHTS, SPEC = "weights.safetensors", "model.json"
STRATEGY_TENSORS, STRATEGY_INDEX = "strategies.safetensors", "strategies.json"
def build(
    name: str, raw: dict[str, Any], info: StreamInfo, where_name: str, where: str, components: Components | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model component ``name`` built with options ``raw`` (validated), and its resolved options.

    Errors name ``where_name`` (the component) or ``where`` (its options), the fields the user wrote.
    ``components`` are the run's (None, in a direct call: those of a default plugin host).
    """
    from lifelong import options as opts
    from lifelong.components import Components, construct

    components = components or Components.default()
    component = components.component("model", name, where_name)
    if component.initializer:
        raise ConfigError(where_name, f"{name!r} is an initializer, not an architecture: name the model component to build")
    validated = opts.validate(component.options, raw, where)
    return construct(component.factory, where, validated, info, components=components), opts.to_dict(validated)


def _keep_spec(model: torch.nn.Module, name: str, resolved: dict[str, Any], info: StreamInfo) -> torch.nn.Module:
    if getattr(model, "model_spec", None) is None:
        model.model_spec = ModelSpec(name, resolved, info)
    return model


def _continuing(
    model: torch.nn.Module,
    ref: str,
    session: str | None,
    generation: int | None,
    strategies: dict[str, Any] | None,
    names: list[str] | None,
) -> torch.nn.Module:
    """Set the two members the kernel reads on a model that continues from stored state."""
    model.continues = {"ref": ref, "session": session, "generation": generation}
    model.continued_state = {"strategies": dict(strategies or {}), "strategy_names": names}
    return model


def _check_fits(stored: StreamInfo, info: StreamInfo, field: str, what: str) -> None:
    mismatch = [
        f"{name} {a} (the stream: {b})"
        for name, a, b in (
            ("input shape", tuple(stored.input_shape), tuple(info.input_shape)),
            ("classes per head", stored.num_classes, info.num_classes),
            ("task heads", stored.num_tasks, info.num_tasks),
            ("input scaling (stream.normalize)", stored.normalize, info.normalize),
        )
        if a != b
    ]
    if mismatch:
        raise ConfigError(field, f"{what} does not fit this stream: it has " + "; ".join(mismatch))


# -- file ------------------------------------------------------------------------------------------
def file_model(options: FileOptions, info: StreamInfo, components: Components | None = None) -> torch.nn.Module:
    """A checkpoint directory's model, or the ``arch`` component with ``arch_options`` and weights from ``path``."""
    if Path(options.path).expanduser().is_dir():
        return checkpoint_model(options, info, components)
    model, resolved = build(options.arch, options.arch_options, info, "model.arch", "model.arch_options", components)
    state = load_state(options.path, options.allow_pickle)
    load_into(model, state, f"weights file {options.path!r}", strict=options.strict)
    return _keep_spec(model, options.arch, resolved, info)


def read_checkpoint(path: str | Path) -> Snapshot:
    """The checkpoint at ``path`` (a ``ckpt-…`` directory) or the newest valid one under it."""
    from lifelong import checkpoint

    path = Path(path).expanduser()
    if (path / checkpoint.MANIFEST).is_file():
        try:
            return checkpoint.read(path)
        except checkpoint.CorruptCheckpoint as exc:
            raise UserError(f"model.path: checkpoint {str(path)!r} cannot be read: {exc}") from None
    return checkpoint.latest(path, report=lambda message: say(message))


def checkpoint_model(options: FileOptions, info: StreamInfo, components: Components | None = None) -> torch.nn.Module:
    """The model of a lifelong checkpoint: architecture and options from its spec, its weights and strategy state."""
    snapshot = read_checkpoint(options.path)
    spec = snapshot.model_spec
    if options.arch and options.arch != spec.name:
        raise ConfigError(
            "model.arch",
            f"the checkpoint {str(snapshot.path)!r} holds a {spec.name!r} model, not {options.arch!r}: leave arch out "
            "(a checkpoint names its own architecture)",
        )
    stored = json.loads(json.dumps(spec.options))
    for key, value in options.arch_options.items():
        if key not in stored or json.loads(json.dumps(value)) != stored[key]:
            held = f"{stored[key]!r}" if key in stored else "no such option"
            raise ConfigError(
                f"model.arch_options.{key}",
                f"the checkpoint {str(snapshot.path)!r} was trained with {held}, not {value!r}: leave arch_options out "
                "(a checkpoint holds its own)",
            )
    _check_fits(spec.info, info, "model.path", f"the checkpoint {str(snapshot.path)!r}")
    where = f"the checkpoint {str(snapshot.path)!r}"
    model, resolved = build(
        spec.name, spec.options, info, f"{where}: model name", f"{where}: model options", components
    )
    load_into(model, snapshot.model_state, f"checkpoint {str(snapshot.path)!r}", strict=options.strict)
    last = snapshot.last_generation
    generation = None if last is None else int(last["index"])
    try:
        names = snapshot.strategies
    except (KeyError, TypeError):
        names = None
    say(
        f"continuing from checkpoint {snapshot.path} (session {snapshot.session}, step {snapshot.step}): "
        f"model {spec.name!r}"
    )
    _keep_spec(model, spec.name, resolved, info)
    return _continuing(model, str(snapshot.path), snapshot.session, generation, snapshot.strategy_state, names)


# -- mlflow ----------------------------------------------------------------------------------------
class Stored:
    """A generation read from MLflow or a directory: spec, weights, strategies' state, lineage."""

    def __init__(self, spec: ModelSpec, state: dict[str, torch.Tensor], origin: str, ref: str):
        self.spec, self.state, self.origin, self.ref = spec, state, origin, ref
        self.strategies: dict[str, Any] = {}
        self.strategy_names: list[str] | None = None
        self.session: str | None = None
        self.generation: int | None = None


def generation_model(
    options: GenerationOptions, info: StreamInfo, components: Components | None = None
) -> torch.nn.Module:
    """The generation at ``model_uri``, rebuilt by its own spec (``options`` overriding), ready to train on."""
    stored = fetch(options.model_uri, options.tracking_uri)
    spec = stored.spec
    _check_fits(spec.info, info, "model.model_uri", f"the generation at {options.model_uri}")
    raw = {**spec.options, **options.options}
    where_name = f"{options.model_uri}: model.json name"
    model, resolved = build(spec.name, raw, info, where_name, "model.options", components)
    load_into(model, stored.state, f"the generation at {options.model_uri}")
    say(f"continuing from {stored.origin}: model {spec.name!r}")
    _keep_spec(model, spec.name, resolved, info)
    return _continuing(model, stored.ref, stored.session, stored.generation, stored.strategies, stored.strategy_names)


def fetch(model_uri: str, tracking_uri: str = "") -> Stored:
    """The spec, weights, strategies' state and lineage of a stored generation, and where they came from."""
    local = Path(model_uri).expanduser()
    if local.is_dir():
        return _read(local, str(local), str(local.resolve()), {})
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    origin, ref, tags = model_uri, model_uri, {}
    try:
        artifact_uri = model_uri
        if model_uri.startswith("models:/"):
            client = MlflowClient(uri)
            rest = model_uri[len("models:/") :]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif "/" not in rest and rest.startswith("m-"):  # a logged model id (a generation logged, not registered)
                logged = client.get_logged_model(rest)
                artifact_uri, tags = logged.artifact_location, dict(logged.tags or {})
                version = None
            else:
                name, _, number = rest.partition("/")
                if not number.isdigit():
                    raise ConfigError(
                        "model.model_uri",
                        f"expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/MODEL_ID, got {model_uri!r}",
                    )
                version = client.get_model_version(name, number)
            if version is not None:
                artifact_uri, tags = version.source, dict(version.tags or {})
                ref = f"models:/{name}/{version.version}"  # pinned: an alias moves
                generation = tags.get("lifelong.generation")
                origin = f"{name} v{version.version}" + (f" (generation {generation} of run {version.run_id})" if generation else "")
        with tempfile.TemporaryDirectory(prefix="lifelong-generation-") as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=uri)
            return _read(Path(path), origin, ref, tags)
    except MlflowException as exc:
        raise UserError(f"model.model_uri: cannot read {model_uri} from {uri}: {exc.message}") from None


def _read(root: Path, origin: str, ref: str, tags: dict[str, str]) -> Stored:
    from safetensors.torch import load_file

    specs, weights = sorted(root.rglob(SPEC)), sorted(root.rglob(WEIGHTS))
    if not specs or not weights:
        raise UserError(f"{root} holds no lifelong generation (expected {SPEC} and {WEIGHTS}, as the mlflow tracker logs them)")
    try:
        spec = ModelSpec.from_dict(json.loads(specs[0].read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{specs[0]} is not a lifelong model spec: {exc}") from None
    stored = Stored(spec, load_file(str(weights[0])), origin, ref)
    index = _read_strategies(root)
    if index is not None:
        stored.strategies = index["state"]
        stored.strategy_names = list(index.get("strategies") or []) or None
        stored.session = index.get("session")
        stored.generation = index.get("generation")
    # The registry's tags name the lineage too (and are all there is for a generation logged without strategies).
    if tags.get("lifelong.session"):
        stored.session = tags["lifelong.session"]
    if str(tags.get("lifelong.generation", "")).isdigit():
        stored.generation = int(tags["lifelong.generation"])
    return stored


def _read_strategies(root: Path) -> dict[str, Any] | None:
    """``strategies.json`` with its tensors joined back from ``strategies.safetensors``, or None when absent."""
    from safetensors.torch import load_file

    from lifelong.checkpoint import join_tensors

    indexes, blobs = sorted(root.rglob(STRATEGY_INDEX)), sorted(root.rglob(STRATEGY_TENSORS))
    if not indexes or not blobs:
        return None
    try:
        index = json.loads(indexes[0].read_text())
        index["state"] = join_tensors(index.get("state") or {}, load_file(str(blobs[0])))
    except Exception as exc:  # noqa: BLE001 - any decoding failure: the stored strategy state is unusable
        reason = f"{type(exc).__name__}: {exc}"
        raise UserError(f"{indexes[0]}: the stored strategy state cannot be read: {reason}") from None
    return index
