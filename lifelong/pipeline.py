"""Build a run from a pipeline (validating everything first), then stream, learn and consolidate.

``build`` resolves every component by name, validates every option and constructs the reader,
model, strategies, trackers and boundary detector, so any user error surfaces before the first
batch. ``execute`` runs the loop: reader → learner step → boundary → consolidation → evaluation →
generation → trackers.
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch

from lifelong import checkpoint, config, device as devices, hookspecs, metrics, report
from lifelong import options as opts
from lifelong.background import BackgroundWriter
from lifelong.errors import ConfigError, UserError
from lifelong.host import PluginHost
from lifelong.learner import Learner, build_optimizer, evaluate, parameter_groups, prepare
from lifelong.readers import DeadLetters, Prefetcher, Reader, ReaderContext
from lifelong.run import Run
from lifelong.types import Batch, Experience, Generation, ModelSpec, StreamInfo


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
    hooks: Any  # the run's lifecycle hook caller (strategies, trackers, the model's own hooks)
    device: torch.device
    dead_letters: DeadLetters
    plugin_versions: dict[str, str | None]
    resolved: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _component(host: PluginHost, kind: str, name: str, raw: dict[str, Any] | None, where: str):
    component = host.component(kind, name, where)
    return component, opts.validate(component.options, raw, where)


def _construct(factory, where: str, *args):
    try:
        return factory(*args)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, str(exc)) from None


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


def build(host: PluginHost, pipeline: dict[str, Any], dead_letter_path: str | Path = "dead_letters.jsonl") -> Plan:
    """Validate the whole pipeline and construct its parts; raises UserError on any problem."""
    learner = config.learner_options(pipeline)
    ckpt = config.checkpoint_options(pipeline)
    device = devices.resolve(learner.device)
    if learner.threads:
        torch.set_num_threads(learner.threads)
    seed_everything(learner.seed)
    resolved: dict[str, Any] = {"learner": opts.to_dict(learner), "checkpoint": opts.to_dict(ckpt)}

    reader_name, reader_raw = config.split_component(pipeline.get("stream", {}), "reader", "stream")
    component, reader_opts = _component(host, "reader", reader_name, reader_raw, "stream")
    dead_letters = DeadLetters(dead_letter_path)
    context = ReaderContext(batch_size=learner.batch_size, seed=learner.seed, dead_letter=dead_letters)
    reader = _construct(component.factory, "stream", reader_opts, context)
    info = reader.info()
    resolved["stream"] = {"reader": reader_name, **opts.to_dict(reader_opts)}

    model_name, model_raw = config.split_component(pipeline.get("model", {}), "name", "model")
    component, model_opts = _component(host, "model", model_name, model_raw, "model")
    model = _construct(component.factory, "model", model_opts, info)
    model_spec = getattr(model, "model_spec", None) or ModelSpec(model_name, opts.to_dict(model_opts), info)
    resolved["model"] = {"name": model_name, **opts.to_dict(model_opts)}

    strategy_tables = _named_tables(host, "strategy", pipeline, "strategy")
    strategies = {}
    resolved["strategy"] = {}
    for name in learner.strategies:
        component, strategy_opts = _component(host, "strategy", name, strategy_tables.get(name), f"strategy.{name}")
        strategies[name] = _construct(component.factory, f"strategy.{name}", strategy_opts)
        resolved["strategy"][name] = opts.to_dict(strategy_opts)

    tracking = dict(pipeline.get("tracking", {}))
    tracker_names = tracking.pop("trackers", [])
    if not isinstance(tracker_names, list) or not all(isinstance(n, str) for n in tracker_names):
        raise ConfigError("tracking.trackers", f"expected a list of tracker names, got {tracker_names!r}")
    tracker_tables = _named_tables(host, "tracker", {"tracking": tracking}, "tracking")
    trackers = {}
    resolved["tracking"] = {"trackers": tracker_names}
    for name in tracker_names:
        component, tracker_opts = _component(host, "tracker", name, tracker_tables.get(name), f"tracking.{name}")
        trackers[name] = _construct(component.factory, f"tracking.{name}", tracker_opts)
        resolved["tracking"][name] = opts.to_dict(tracker_opts)

    detector_name, detector_raw = config.split_component(pipeline.get("boundary", {}), "detector", "boundary")
    component, detector_opts = _component(host, "boundary_detector", detector_name, detector_raw, "boundary")
    detector = _construct(component.factory, "boundary", detector_opts)
    resolved["boundary"] = {"detector": detector_name, **opts.to_dict(detector_opts)}

    pm = _lifecycle_manager(strategies, trackers)
    try:
        wrapped = pm.hook.wrap_model(model=model, spec=model_spec)
    except (ValueError, TypeError) as exc:
        raise ConfigError("learner.strategies", str(exc)) from None
    if wrapped is not None:
        model, model_spec = wrapped
        resolved["model"] = {"name": model_spec.name, **model_spec.options}
    model_hooks = getattr(model, "lifecycle_hooks", None)
    if model_hooks is not None:
        pm.register(model_hooks(), name="model:hooks")

    used = {c.plugin for kind in host.components.values() for c in kind.values()}
    versions = {name: rec.version for name, rec in host.records.items() if name in used}
    return Plan(
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
        resolved=resolved,
    )


def _lifecycle_manager(strategies: dict[str, Any], trackers: dict[str, Any]) -> pluggy.PluginManager:
    """A run-scoped plugin manager holding this run's strategy and tracker instances."""
    pm = pluggy.PluginManager("lifelong")
    pm.add_hookspecs(hookspecs.LifecycleSpecs)
    for name, strategy in strategies.items():
        pm.register(strategy, name=f"strategy:{name}")
    for name, tracker in trackers.items():
        pm.register(tracker, name=f"tracker:{name}")
    pm.check_pending()
    return pm


class _Span:
    """The stream since the last boundary: what the next generation will have been trained on."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []  # kept only when epochs > 1
        self.experience_ids: list[int] = []
        self.count = 0
        self.samples = 0
        self.offsets: dict[str, list[int]] = {}

    def add(self, batch: Batch, keep: bool) -> None:
        if keep:
            self.batches.append(batch)
        if batch.experience not in self.experience_ids:
            self.experience_ids.append(batch.experience)
        self.count += 1
        self.samples += len(batch)
        first_last = self.offsets.setdefault(batch.source, [batch.start, batch.stop])
        first_last[0] = min(first_last[0], batch.start)
        first_last[1] = max(first_last[1], batch.stop)


class Runner:
    """Executes a Plan; one instance per run."""

    def __init__(self, plan: Plan, progress: Any = None):
        self.plan = plan
        self.device = plan.device
        self.model = plan.model.to(self.device)
        lo = plan.learner
        self.optimizer = build_optimizer(lo.optimizer, parameter_groups(self.model, lo.lr), lo.lr, lo.momentum, lo.weight_decay)
        self.hooks = plan.hooks
        self.learner = Learner(self.model, self.optimizer, self.hooks, self.device)
        self.columns: list[int] = list(plan.info.experiences or [])
        self.test_sets: dict[int, Batch] = {}
        self.matrix: list[dict[int, float]] = []
        self.generations: list[Generation] = []
        self.covered: list[int] = []
        self._streaming: int | None = None  # experience of the batch in hand; None before and after the stream
        self.samples_seen = 0  # stream samples, each counted once
        self.trained_samples = 0  # stream samples × passes over them (learner.epochs), what samples/s counts
        self.train_seconds = 0.0
        self.step = 0
        self.progress = progress
        self._clock: float | None = None  # start of the current stretch of training time
        self.writer = BackgroundWriter("lifelong-checkpoint") if plan.checkpoint.dir else None

    # -- evaluation -------------------------------------------------------------------------
    def _refresh_test_sets(self) -> None:
        listed = self.plan.info.experiences or []
        for exp in list(self.columns):
            # A streamed reader's test set appears when its thread passes the experience, which may be
            # ahead of training; asking for the experience still in hand would make the matrix depend
            # on thread timing, so only experiences the reader listed upfront are asked that early.
            if exp == self._streaming and exp not in listed:
                continue
            if exp not in self.test_sets:
                data = self.plan.reader.test_set(exp)
                if data is not None:
                    self.test_sets[exp] = self._prepared_test_set(data)

    def _prepared_test_set(self, data: Batch) -> Batch:
        """A test set through the model's ``prepare`` once, kept on the device for every evaluation."""
        if getattr(self.model, "prepare", None) is None or len(data) == 0:
            return data
        bs = self.plan.learner.eval_batch_size
        chunks = [
            Batch(x=prepare(self.model, data.x[i : i + bs].to(self.device)), y=data.y[i : i + bs].to(self.device))
            for i in range(0, len(data), bs)
        ]
        task = None if data.task is None else data.task.to(self.device)
        return Batch(x=torch.cat([c.x for c in chunks]), y=torch.cat([c.y for c in chunks]), task=task)

    def _evaluate_known(self) -> dict[int, float]:
        self._refresh_test_sets()
        bs = self.plan.learner.eval_batch_size
        return {exp: evaluate(self.model, data, self.device, bs) for exp, data in self.test_sets.items()}

    # -- boundaries -------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _boundary(self, span: _Span, started: float) -> float:
        """Finish the span: extra epochs, consolidation, evaluation, a new generation. Returns a new clock start."""
        extra_epochs = self.plan.learner.epochs - 1
        generator = torch.Generator().manual_seed(self.plan.learner.seed + len(self.generations))
        for _ in range(extra_epochs):
            for i in torch.randperm(len(span.batches), generator=generator).tolist():
                self.learner.step(span.batches[i].to(self.device), prequential=False)
                self.trained_samples += len(span.batches[i])
        experience = Experience(
            index=len(self.generations),
            experience_ids=list(span.experience_ids),
            batches=span.count,
            samples=span.samples,
            offsets=span.offsets,
        )
        self.hooks.on_experience_end(experience=experience, model=self.model)
        self._sync()
        self.train_seconds += time.perf_counter() - started

        for exp in span.experience_ids:
            if exp not in self.covered:
                self.covered.append(exp)
        row = self._evaluate_known()
        self.matrix.append(row)
        generation = Generation(
            index=len(self.generations),
            parent=self.generations[-1].index if self.generations else None,
            experience=experience,
            experiences_covered=list(self.covered),
            accuracy=row,
            model_spec=self.plan.model_spec,
            state=checkpoint.to_cpu(self.model.state_dict()),
            strategy_state={
                name: checkpoint.to_cpu(s.state_dict())
                for name, s in self.plan.strategies.items()
                if hasattr(s, "state_dict")
            },
        )
        self.generations.append(generation)
        known = [v for v in row.values()]
        eval_metrics = {"eval/acc": sum(known) / len(known)} if known else {}
        eval_metrics.update({f"eval/exp_{exp}": acc for exp, acc in row.items()})
        self.hooks.on_metrics(step=self.step, metrics=eval_metrics)
        self.hooks.on_generation(generation=generation)
        if self.writer is not None:
            self.writer.submit(checkpoint.save, self.plan.checkpoint.dir, generation)
        if self.progress is not None:
            self.progress.set_postfix_str(f"gen {generation.index}, eval acc {eval_metrics.get('eval/acc', float('nan')):.3f}")
        return time.perf_counter()

    # -- the loop ---------------------------------------------------------------------------
    def _log(self, span_detector: Any) -> bool:
        values = self.learner.metrics.read()
        values["samples_seen"] = float(self.samples_seen)
        values["samples_per_second"] = self.trained_samples / max(self.train_seconds_now(), 1e-9)
        self.hooks.on_metrics(step=self.step, metrics=values)
        if self.progress is not None:
            self.progress.set_postfix(
                loss=f"{values['loss']:.3f}", sps=f"{values['samples_per_second']:.0f}", gen=len(self.generations)
            )
        observe = getattr(span_detector, "observe", None)
        return bool(observe(values)) if observe is not None else False

    def _warmup(self, batches: Any) -> list[Batch]:
        """The first stream batches holding the model's ``warmup_samples``, read before the run starts."""
        wanted = int(getattr(self.model, "warmup_samples", 0) or 0)
        taken: list[Batch] = []
        while sum(len(b) for b in taken) < wanted:
            batch = next(batches, None)
            if batch is None:
                break
            taken.append(batch)
        return taken

    def train_seconds_now(self) -> float:
        return self.train_seconds + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    def execute(self) -> dict[str, Any]:
        plan = self.plan
        wall_start = time.perf_counter()
        stream = Prefetcher(plan.reader, pin=self.device.type == "cuda")
        batches = iter(stream)
        try:
            warmup = self._warmup(batches)
            self.hooks.on_run_start(
                run=Run(
                    model=self.model,
                    optimizer=self.optimizer,
                    device=self.device,
                    info=plan.info,
                    model_spec=plan.model_spec,
                    config=plan.resolved,
                    seed=plan.learner.seed,
                    plugin_versions=plan.plugin_versions,
                    warmup=Batch.concat(warmup) if warmup else None,
                )
            )
        except BaseException:
            stream.close()
            raise
        initial = self._evaluate_known()
        keep = plan.learner.epochs > 1
        has_prepare = getattr(self.model, "prepare", None) is not None
        log_every = plan.learner.log_every
        detector = plan.detector
        span = _Span()
        self._clock = time.perf_counter()
        try:
            for batch in itertools.chain(warmup, batches):  # the warm-up samples are streamed like any others
                self._streaming = batch.experience
                if batch.experience not in self.columns:
                    self.columns.append(batch.experience)
                if detector.before_batch(batch) and span.count:
                    self._clock = self._boundary(span, self._clock)
                    span = _Span()
                on_device = batch.to(self.device)
                if has_prepare:
                    on_device.x = prepare(self.model, on_device.x)
                span.add(on_device if has_prepare else batch, keep)  # prepared inputs are what later epochs reuse
                self.learner.step(on_device)
                self.step += 1
                self.samples_seen += len(batch)
                self.trained_samples += len(batch)
                if self.progress is not None:
                    self.progress.update(1)
                if self.step % log_every == 0 and self._log(detector) and span.count:
                    self._clock = self._boundary(span, self._clock)
                    span = _Span()
            self._streaming = None
            if span.count:
                self._clock = self._boundary(span, self._clock)
            self._log(None)
        except BaseException as error:
            self.hooks.on_run_failed(error=error)
            raise
        finally:
            stream.close()
            plan.dead_letters.close()
        self._clock = None
        return self._summary(initial, time.perf_counter() - wall_start)

    def _summary(self, initial: dict[int, float], wall: float) -> dict[str, Any]:
        columns = self.columns
        matrix = [[row.get(exp) for exp in columns] for row in self.matrix]
        initial_row = [initial.get(exp) for exp in columns]
        final = self.learner.metrics.read()
        summary: dict[str, Any] = {
            "accuracy_matrix": matrix,
            "experiences": columns,
            "initial_accuracy": initial_row,
            **metrics.summarize(matrix, initial_row),
            "prequential_accuracy": final["prequential_accuracy"] if self.samples_seen else None,
            "samples_seen": self.samples_seen,
            "trained_samples": self.trained_samples,
            "samples_per_second": self.trained_samples / self.train_seconds if self.train_seconds else 0.0,
            "training_seconds": self.train_seconds,
            "wall_seconds": wall,
            "device": str(self.device),
            "generations": [
                {
                    "index": g.index,
                    "parent": g.parent,
                    "experiences": g.experience.experience_ids,
                    "experiences_covered": g.experiences_covered,
                    "samples": g.experience.samples,
                    "offsets": g.experience.offsets,
                }
                for g in self.generations
            ],
            "dead_letters": self.plan.dead_letters.summary(),
            "config": self.plan.resolved,
        }
        return summary

    def finish(self, summary: dict[str, Any], heatmap_path: str | Path | None = None) -> dict[str, Any]:
        """Draw the heatmap, let trackers finish, and merge what they report into the summary.

        Without ``heatmap_path`` the heatmap lives in a temporary directory only as long as the
        trackers need to log it, and the summary's ``heatmap`` is None.
        """
        with tempfile.TemporaryDirectory(prefix="lifelong-") as tmp:
            path = Path(heatmap_path) if heatmap_path is not None else Path(tmp) / "accuracy_matrix.png"
            summary["heatmap"] = str(report.heatmap(summary, path)) if summary["accuracy_matrix"] else None
            errors = [f"checkpoint: {e}" for e in self.writer.close()] if self.writer is not None else []
            summary["trackers"] = {}
            # Called one by one (in pluggy's order) so each result stays attached to its tracker's name;
            # what the model's own hooks report goes under "model".
            for impl in reversed(self.hooks.on_run_end.get_hookimpls()):
                result = impl.function(summary=summary)
                if result:
                    kind, name = impl.plugin_name.split(":", 1)
                    if kind == "model":
                        summary["model"] = result
                    else:
                        summary["trackers"][name] = result
            if heatmap_path is None:
                summary["heatmap"] = None
        for generation, entry in zip(self.generations, summary["generations"]):
            entry.update(generation.records)
        if errors:
            summary["errors"] = errors
        return summary
