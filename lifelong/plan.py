"""Plan a run: resolve every component by name, validate every option, build the parts, open nothing.

``build`` is the ``validate`` step of the session: every user error it can know about (a config
field, an unknown name, a missing file, a strategy combination a plugin refuses through the
``validate`` hook, a checkpoint directory that would be overwritten, a resume whose pipeline
differs) raises :class:`~lifelong.errors.UserError` here, before any tracker, file or connection is
opened.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch

from lifelong import checkpoint, config, device as devices, distributed, hookspecs, resources
from lifelong import options as opts
from lifelong.components import Components, construct
from lifelong.errors import ConfigError, brief
from lifelong.objective import is_detector
from lifelong.host import PluginHost
from lifelong.promotion import PromotionOptions
from lifelong.readers import DeadLetters, Reader, ReaderContext, can_seek
from lifelong.run import Run, Session
from lifelong.scaling import standardized
from lifelong.sharding import Sharded
from lifelong.types import ModelSpec, StreamInfo


@dataclass
class Plan:
    """A validated run, ready to execute."""

    pipeline: dict[str, Any]
    learner: config.LearnerOptions
    checkpoint: config.CheckpointOptions
    reader: Reader
    info: StreamInfo
    model: torch.nn.Module
    model_spec: ModelSpec
    strategies: dict[str, Any]
    trackers: dict[str, Any]
    detector: Any
    hooks: Any  # the run's lifecycle hook caller (model hooks, strategies, trackers: in that order)
    device: torch.device
    dead_letters: DeadLetters
    plugin_versions: dict[str, str | None]
    session: Session
    components: Components
    resolved: dict[str, Any] = field(default_factory=dict)
    resume_from: checkpoint.Snapshot | None = None  # the checkpoint a resumed run continues from
    continued_strategies: dict[str, Any] | None = None  # strategy state the model's source carried, to restore
    promotion: PromotionOptions | None = None  # the promotion gate's rules, when [promotion] is on
    world: distributed.World | None = None  # this rank's place in a data-parallel run (WORLD_SIZE set), else None

    @property
    def lead(self) -> bool:
        """Whether this process evaluates, makes generations, checkpoints and tracks: rank 0, or the only process."""
        return self.world is None or self.world.lead

    def run_context(self, model: torch.nn.Module, optimizer: Any, warmup: Any = None) -> Run:
        return Run(
            model=model,
            optimizer=optimizer,
            device=self.device,
            info=self.info,
            model_spec=self.model_spec,
            learner=self.learner,
            session=self.session,
            components=self.components,
            config=self.resolved,
            plugin_versions=self.plugin_versions,
            warmup=warmup,
            promotion=self.promotion,
            checkpoint_dir=self.checkpoint.dir or None,
            world=self.world,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def say(message: str) -> None:
    print(f"lifelong: {message}", file=sys.stderr, flush=True)


def _component(host: PluginHost, kind: str, name: str, raw: dict[str, Any] | None, where: str):
    component = host.component(kind, name, where)
    return component, opts.validate(component.options, raw, where)


def _named_tables(host: PluginHost, kind: str, pipeline: dict[str, Any], section: str) -> dict[str, Any]:
    """The per-component option tables of a section, e.g. ``[strategy.replay]``.

    A table for a component that exists but is not selected is allowed (a pipeline may keep the
    options of a strategy switched off with ``--set``); a table whose name is no component of
    that kind is an error, since it is almost always a typo.
    """
    tables = pipeline.get(section, {})
    if not isinstance(tables, dict):
        raise ConfigError(section, f"expected a table of tables, got {tables!r}")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{section}.{name}", f"expected a table, got {table!r}")
        host.component(kind, name, f"{section}.{name}")
    return tables


def writable(path: str | Path, where: str, what: str, directory: bool = False) -> None:
    """Refuse (ConfigError naming ``where``) an output path the run could not write, before anything opens.

    ``path`` need not exist: the run creates it and its missing parents, so the nearest existing
    ancestor must be a writable directory. An existing ``path`` must be a directory when
    ``directory``, else anything but one (a file, or a device such as /dev/null), and writable.
    """
    if "\x00" in str(path):
        raise ConfigError(where, f"{what} {brief(str(path))} holds a NUL character")
    path = Path(path).expanduser()
    shown = brief(str(path))
    try:
        if path.exists() or path.is_symlink():
            if directory and not path.is_dir():
                raise ConfigError(where, f"{what} {shown} is a file, not a directory")
            if not directory and path.is_dir():
                raise ConfigError(where, f"{what} {shown} is a directory, not a file")
            if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
                raise ConfigError(where, f"{what} {shown} is not writable")
            return
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(where, f"{what} {shown} cannot be created: {brief(str(parent))} is a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(where, f"{what} {shown} cannot be created: directory {brief(str(parent))} is not writable")
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a permission on an ancestor
        raise ConfigError(where, f"{what} {shown} cannot be used: {getattr(exc, 'strerror', None) or exc}") from None


def _checkpoint_directory(options: config.CheckpointOptions, resume: bool) -> checkpoint.Snapshot | None:
    """Refuse to overwrite an earlier session's checkpoints; on resume, the newest valid checkpoint."""
    if resume and not options.dir:
        raise ConfigError("checkpoint.dir", "--resume continues from the checkpoints in [checkpoint] dir: set it")
    if not options.dir:
        return None
    directory = Path(options.dir).expanduser()
    writable(directory, "checkpoint.dir", "checkpoint directory", directory=True)
    if not resume:
        if not checkpoint.is_empty(directory):
            raise ConfigError(
                "checkpoint.dir",
                f"{str(directory)!r} is not empty: it holds an earlier session's checkpoints. Pass --resume to "
                "continue that session, or choose an empty directory",
            )
        return None
    return checkpoint.latest(directory, report=say)


@contextlib.contextmanager
def _building(where: str):
    """Building a component from the user's options: what the allocator or the file system refuses is a
    UserError naming ``where``, not a traceback.

    The estimates (:mod:`lifelong.resources`) refuse sizes that cannot fit before anything is
    allocated; this is the net for what they do not cover. An ``OSError`` here comes from a path in
    the options (a name too long, a file that cannot be read), so it is the user's to fix.
    """
    try:
        yield
    except MemoryError:
        raise ConfigError(where, "ran out of memory while building it: use a smaller size") from None
    except OSError as exc:
        name = f" {brief(str(exc.filename))}" if exc.filename is not None else ""
        raise ConfigError(where, f"cannot use{name}: {exc.strerror or type(exc).__name__}") from None
    except RuntimeError as exc:
        if out_of_memory(exc):
            raise ConfigError(where, f"ran out of memory while building it ({first_line(exc)}): use a smaller size") from None
        raise


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator's refusal: MemoryError, or torch's "DefaultCPUAllocator: can't
    allocate memory" and CUDA out of memory (RuntimeErrors)."""
    if isinstance(exc, MemoryError) or isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate" in text or "out of memory" in text)


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return brief(text.splitlines()[0] if text else type(exc).__name__)


def _check_training_memory(
    model: torch.nn.Module, learner: config.LearnerOptions, info: StreamInfo, device: torch.device, where: str
) -> None:
    """What training the model adds to its weights must fit on the device (see :mod:`lifelong.resources`).

    Parameters: gradients and optimizer state (on the CPU the weights exist already and are missing
    from the free memory; on an accelerator the model moves there whole). Activations: a training
    step keeps every layer's output and its gradient for a batch of ``2 × batch_size`` (a stream
    batch and as many replayed samples); evaluation holds the largest layer's input and output for
    ``eval_batch_size`` samples. The larger of the two counts, since they never overlap.
    """
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    needed = resources.training_bytes(trained, learner.optimizer, learner.momentum)
    if device.type == "cpu":
        needed -= trained * resources.FLOAT_BYTES
    else:
        needed += frozen * resources.FLOAT_BYTES
    what = f"training {trained:,} parameters with {learner.optimizer} (gradients and optimizer state)"
    measured = resources.activation_bytes(model, info.input_shape, info.num_tasks)
    if measured is not None:
        total, largest = measured
        activations = max(2 * total * 2 * learner.batch_size, 2 * largest * learner.eval_batch_size)
        needed += activations
        what += (
            f" and its activations ({resources.format_bytes(total)} per sample: learner.batch_size = "
            f"{learner.batch_size}, learner.eval_batch_size = {learner.eval_batch_size})"
        )
    resources.require(needed, what, where, device)


def _check_labels(model: torch.nn.Module, info: StreamInfo, where: str) -> None:
    """A classifier needs labels: refuse a stream without them, naming what can learn from it."""
    if not info.labels and not is_detector(model):
        raise ConfigError(
            where,
            "the stream carries no labels (an npz without y, a csv without a label column), and this model is a "
            "classifier that trains on labels: use an anomaly detector (model = \"autoencoder\"), which learns "
            "without them, or give the stream its labels",
        )


def _check_input_dtype(model: torch.nn.Module, info: StreamInfo, reader: Reader, where: str) -> None:
    """A model that cannot take the stream's samples fails here, not at the first batch after trackers opened.

    Only for readers whose samples are not floats (``x_dtype``: the text reader's UTF-8 bytes are
    uint8) and models without a ``prepare`` step (which converts them): one zero sample goes
    through the model in eval mode, without gradients. A dtype error is the user's combination
    to fix (a text reader with an mlp); any other error is left to the run.
    """
    dtype = getattr(reader, "x_dtype", None)
    if dtype is None or getattr(model, "prepare", None) is not None:
        return
    try:
        dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    except (TypeError, ValueError):
        return
    if dtype.is_floating_point:
        return
    x = torch.zeros((1, *info.input_shape), dtype=dtype)
    args = (x,) if info.num_tasks <= 1 else (x, torch.zeros(1, dtype=torch.long))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*args)
    except RuntimeError as exc:
        first = (str(exc).splitlines() or [""])[0]
        if "dtype" in first or "Byte" in first or "Long" in first or "Int" in first:
            raise ConfigError(
                where,
                f"the model cannot take this stream's samples: {str(dtype).replace('torch.', '')} of shape "
                f"{tuple(info.input_shape)} ({brief(first)}); a text stream's bytes need a text model (minilm)",
            ) from None
    finally:
        model.train(training)


def build(
    host: PluginHost,
    pipeline: dict[str, Any],
    dead_letter_path: str | Path = "dead_letters.jsonl",
    resume: bool = False,
    summary_path: str | Path | None = None,
) -> Plan:
    """Validate the whole pipeline and construct its parts; raises UserError on any problem.

    Output paths (the dead-letter file, ``summary_path`` and its heatmap beside it, the checkpoint
    directory) are checked writable here, before anything is opened.
    """
    learner = config.learner_options(pipeline)
    ckpt = config.checkpoint_options(pipeline)
    promotion = config.promotion_options(pipeline)
    parallel = config.distributed_options(pipeline)
    ranks = distributed.environment() if distributed.requested() else None  # (rank, size): joined once all is valid
    lead = ranks is None or ranks[0] == 0
    writable(dead_letter_path, "--dead-letters", "dead-letter file")
    if summary_path is not None:
        writable(summary_path, "--summary", "summary file")
        writable(Path(summary_path).with_suffix(".png"), "--summary", "heatmap (beside the summary)")
    device = devices.resolve(learner.device)
    devices.check_precision(learner.precision, device)
    if ranks is not None:
        device = distributed.rank_device(device)
    if learner.threads:
        torch.set_num_threads(learner.threads)
    torch.use_deterministic_algorithms(learner.deterministic)
    seed_everything(learner.seed)
    snapshot = _checkpoint_directory(ckpt, resume)
    session = Session(id=snapshot.session, resumed=True, step=snapshot.step) if snapshot else Session(uuid.uuid4().hex)
    components = Components(host)
    resolved: dict[str, Any] = {"learner": opts.to_dict(learner), "checkpoint": opts.to_dict(ckpt)}
    if promotion is not None:
        resolved["promotion"] = opts.to_dict(promotion)
    if "distributed" in pipeline:
        resolved["distributed"] = opts.to_dict(parallel)

    reader_name, reader_raw = config.split_component(pipeline.get("stream", {}), "reader", "stream")
    component, reader_opts = _component(host, "reader", reader_name, reader_raw, "stream")
    dead_letters = DeadLetters(dead_letter_path if lead else rank_path(dead_letter_path, ranks[0]), run=session.id)
    rank, size = ranks or (0, 1)
    context = ReaderContext(batch_size=learner.batch_size, seed=learner.seed, dead_letter=dead_letters, rank=rank, ranks=size)
    with _building("stream"):
        reader = construct(component.factory, "stream", reader_opts, context)
        if size > 1 and not getattr(reader, "partitioned", False):
            # every rank reads the whole stream and keeps its share: rank 0 alone writes the bad records
            reader = Sharded(reader, rank, size)
            if not lead:
                dead_letters.move(os.devnull)
        info = reader.info()
    resolved["stream"] = {"reader": reader_name, **opts.to_dict(reader_opts)}
    if callable(getattr(reader, "commit", None)) and not ckpt.dir:
        raise ConfigError(
            "checkpoint.dir",
            f"the {reader_name} reader acknowledges records to its source only once a checkpoint holding them is "
            "durable (checkpoint, then commit): set [checkpoint] dir, or every restart reads the stream again",
        )

    model_name, model_raw = config.split_component(pipeline.get("model", {}), "name", "model")
    component, model_opts = _component(host, "model", model_name, model_raw, "model")
    with _building("model"):
        model = construct(component.factory, "model", model_opts, info, components=components)
    model_spec = getattr(model, "model_spec", None) or ModelSpec(model_name, opts.to_dict(model_opts), info)
    resolved["model"] = {"name": model_name, **opts.to_dict(model_opts)}

    strategy_tables = _named_tables(host, "strategy", pipeline, "strategy")
    strategies = {}
    resolved["strategy"] = {}
    for name in learner.strategies:
        component, strategy_opts = _component(host, "strategy", name, strategy_tables.get(name), f"strategy.{name}")
        with _building(f"strategy.{name}"):
            strategies[name] = construct(component.factory, f"strategy.{name}", strategy_opts)
        resolved["strategy"][name] = opts.to_dict(strategy_opts)

    tracking = pipeline.get("tracking", {})
    if not isinstance(tracking, dict):
        raise ConfigError("tracking", f"expected a table, got {brief(tracking)}")
    tracking = dict(tracking)
    tracker_names = tracking.pop("trackers", [])
    if not isinstance(tracker_names, list) or not all(isinstance(n, str) for n in tracker_names):
        raise ConfigError("tracking.trackers", f"expected a list of tracker names, got {tracker_names!r}")
    tracker_tables = _named_tables(host, "tracker", {"tracking": tracking}, "tracking")
    trackers = {}
    resolved["tracking"] = {"trackers": tracker_names}
    for name in tracker_names:
        component, tracker_opts = _component(host, "tracker", name, tracker_tables.get(name), f"tracking.{name}")
        with _building(f"tracking.{name}"):
            trackers[name] = construct(component.factory, f"tracking.{name}", tracker_opts)
        resolved["tracking"][name] = opts.to_dict(tracker_opts)

    detector_name, detector_raw = config.split_component(pipeline.get("boundary", {}), "detector", "boundary")
    component, detector_opts = _component(host, "boundary_detector", detector_name, detector_raw, "boundary")
    with _building("boundary"):
        detector = construct(component.factory, "boundary", detector_opts)
    resolved["boundary"] = {"detector": detector_name, **opts.to_dict(detector_opts)}

    if not lead:
        trackers = {}  # rank 0 alone talks to trackers
    pm = _lifecycle_manager(strategies, trackers)
    try:
        with _building("learner.strategies"):
            wrapped = pm.hook.wrap_model(model=model, spec=model_spec)
    except (ValueError, TypeError) as exc:
        raise ConfigError("learner.strategies", str(exc)) from None
    where_model = "model"
    if wrapped is not None:
        model, model_spec = wrapped
        with _building("learner.strategies"):
            model = standardized(model, model_spec.info, "learner.strategies")  # a strategy's own model scales its inputs too
        resolved["model"] = {"name": model_spec.name, **model_spec.options}
        where_model = "learner.strategies"
    _check_training_memory(model, learner, info, device, where_model)
    _check_input_dtype(model, info, reader, where_model)
    _check_labels(model, info, where_model)
    model_hooks = getattr(model, "lifecycle_hooks", None)
    if model_hooks is not None:
        pm.register(model_hooks(), name="model:hooks")  # registered last: called first

    continues = getattr(model, "continues", None)
    session.continues = snapshot.state["session"]["continues"] if snapshot else continues  # kept across resumes
    used = {c.plugin for kind in host.components.values() for c in kind.values()}
    versions = {name: rec.version for name, rec in host.records.items() if name in used}
    plan = Plan(
        pipeline=pipeline,
        learner=learner,
        checkpoint=ckpt,
        reader=reader,
        info=info,
        model=model,
        model_spec=model_spec,
        strategies=strategies,
        trackers=trackers,
        detector=detector,
        hooks=pm.hook,
        device=device,
        dead_letters=dead_letters,
        plugin_versions=versions,
        session=session,
        components=components,
        resolved=resolved,
        resume_from=snapshot,
        promotion=promotion,
    )
    if snapshot is None and continues is not None:
        plan.continued_strategies = _continued_strategies(model, learner)
    try:
        pm.hook.validate(run=plan.run_context(model, None))
    except (ValueError, TypeError) as exc:
        raise ConfigError("", str(exc)) from None
    if snapshot is not None:
        _check_resumable(plan, snapshot)
    if ranks is not None:
        _check_data_parallel(plan, ranks[1])
        plan.world = distributed.join(parallel, device)
        session.id = plan.world.broadcast(session.id)  # rank 0's: every rank names the same session
        dead_letters.run = session.id
    return plan


def rank_path(path: str | Path, rank: int) -> Path:
    """Rank ``rank``'s own file beside ``path`` (``dead_letters.jsonl`` → ``dead_letters.rank1.jsonl``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _check_data_parallel(plan: Plan, size: int) -> None:
    """Refuse, before any rank joins, what cannot run as ``size`` data-parallel ranks."""
    for name, strategy in plan.strategies.items():
        if not getattr(strategy, "data_parallel", ""):
            raise ConfigError(
                "learner.strategies",
                f"strategy {name!r} does not declare that it can train data-parallel (WORLD_SIZE={size}): run it in one "
                "process, or see `lifelong plugins` for the strategies that can",
            )
    if callable(getattr(plan.reader, "commit", None)) and not getattr(plan.reader, "partitioned", False):
        raise ConfigError(
            "stream.reader",
            f"the {plan.resolved['stream']['reader']} reader acknowledges records to a broker and cannot share its "
            "source among data-parallel ranks yet: run it in one process",
        )
    if getattr(plan.model, "warmup_samples", 0):
        raise ConfigError(
            "model",
            f"model {plan.model_spec.name!r} decides on a warm-up window of the stream (transfer's auto), and each rank "
            "sees a different one: set the strategy it would choose instead of auto",
        )
    snapshot = plan.resume_from
    if snapshot is not None:
        saved = len(snapshot.state.get("ranks") or [None])
        if saved != size:
            raise ConfigError(
                "--resume",
                f"the checkpoint {snapshot.path} was written by a job of {saved} rank(s); resume it with {saved}, not {size}",
            )


def _continued_strategies(model: torch.nn.Module, learner: config.LearnerOptions) -> dict[str, Any] | None:
    """The strategy state the model's source carried, when it is to be restored; says what is dropped."""
    continued = getattr(model, "continued_state", None) or {}
    saved = dict(continued.get("strategies") or {})
    if not saved:
        return None
    # the source's whole strategy list: stateless strategies (naive) have no entry in the state
    names = list(continued.get("strategy_names") or saved)
    if not learner.continue_strategies:
        say(f"not restoring the saved state of {sorted(saved)} (learner.continue_strategies = false)")
        return None
    if sorted(names) != sorted(learner.strategies):
        say(
            f"dropped the saved state of {sorted(saved)}: the strategy list differs "
            f"(saved {names}, this run {list(learner.strategies)}); set the same strategies to continue them"
        )
        return None
    return saved


def _lifecycle_manager(strategies: dict[str, Any], trackers: dict[str, Any]) -> pluggy.PluginManager:
    """A run-scoped plugin manager holding this run's strategy and tracker instances.

    pluggy calls the implementation registered last first, so trackers are registered first and
    strategies in reverse: calls then go strategies in ``learner.strategies`` order, then trackers
    (the model's own hooks, registered after these, come before both).
    """
    pm = pluggy.PluginManager("lifelong")
    pm.add_hookspecs(hookspecs.LifecycleSpecs)
    for name, tracker in reversed(list(trackers.items())):
        pm.register(tracker, name=f"tracker:{name}")
    for name, strategy in reversed(list(strategies.items())):
        pm.register(strategy, name=f"strategy:{name}")
    pm.check_pending()
    return pm


# What a resume may change: how the run is watched, stored and paced, not what it computes.
RESUME_MAY_DIFFER = {
    "learner.progress",
    "learner.max_batches",
    "learner.max_records",
    "learner.max_seconds",
    "learner.prequential_window",
    "learner.eval_batch_size",
    "learner.threads",
    "learner.device",
    "learner.deterministic",
    "learner.continue_strategies",
    "learner.max_nonfinite_batches",
    "checkpoint.every_batches",
    "checkpoint.every_seconds",
    "checkpoint.keep",
    "checkpoint.dir",
}
# The gate's rules judge generations but change nothing that is trained.
RESUME_MAY_DIFFER_PREFIXES = ("tracking.", "promotion.", "distributed.")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_differences(saved: dict[str, Any], now: dict[str, Any], observes_metrics: bool) -> list[str]:
    """The resolved-pipeline fields that differ in a way that changes what the run computes.

    ``learner.log_every`` matters only when the boundary detector observes the running metrics.
    """
    before, after = _flat(saved), _flat(now)
    allowed = set(RESUME_MAY_DIFFER)
    if not observes_metrics:
        allowed.add("learner.log_every")
    fields = []
    for key in sorted(set(before) | set(after)):
        if key in allowed or key.startswith(RESUME_MAY_DIFFER_PREFIXES):
            continue
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            fields.append(f"{key} ({before.get(key, '<unset>')!r} then, {after.get(key, '<unset>')!r} now)")
    return fields


def _check_resumable(plan: Plan, snapshot: checkpoint.Snapshot) -> None:
    saved_ranks = len(snapshot.state.get("ranks") or [None])
    if saved_ranks > 1 and not distributed.requested():
        raise ConfigError(
            "--resume",
            f"the checkpoint {snapshot.path} was written by a job of {saved_ranks} ranks, each with its own share of the "
            f"stream and its own memories: resume it with {saved_ranks} (lifelong run --nproc {saved_ranks} … --resume)",
        )
    observes = callable(getattr(plan.detector, "observe", None))
    differences = config_differences(snapshot.state["config"], plan.resolved, observes)
    if differences:
        raise ConfigError(
            "--resume",
            f"the pipeline differs from the one checkpointed in {snapshot.path} in what the run computes: "
            + "; ".join(differences)
            + ". Resume with the same pipeline, or start a new session in an empty checkpoint directory",
        )
    if getattr(plan.model, "warmup_samples", 0):
        raise ConfigError(
            "--resume",
            f"model {plan.model_spec.name!r} decides on a warm-up window at the start of a run (transfer's auto), "
            "and a resumed run has none: set the strategy it chose (printed at the start, and in the first "
            "run's summary) instead of auto to make the run resumable",
        )
    if not can_seek(plan.reader):
        raise ConfigError(
            "--resume",
            f"reader {plan.resolved['stream']['reader']!r} cannot seek to a position, so the run cannot continue "
            "where it stopped (see the reader position contract in docs/plugins.md)",
        )
