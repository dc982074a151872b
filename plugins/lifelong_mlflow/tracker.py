"""The MLflow tracker: one MLflow run per pipeline run, every generation a registered model version.

What lands in MLflow:

- **run** (in ``experiment``, named ``run_name``): the resolved pipeline flattened into params
  (``learner.lr``, ``model.hidden`` …; values as JSON text, cut to MLflow's 6,000 characters) and in
  full as ``config.json``; tags ``lifelong.plugin.<name>`` (plugin versions), ``lifelong.device``,
  ``lifelong.scenario``, ``lifelong.model``, ``lifelong.seed``.
- **metrics**: whatever ``on_metrics`` reports (loss, prequential accuracy, throughput,
  ``eval/…`` at boundaries) at step = stream batch, sent with ``log_batch`` every ``flush_seconds``
  and at every boundary; NaN and infinite values are skipped (they would break MLflow's charts).
  Each generation's row of the accuracy matrix as ``gen_acc/exp_<i>`` at step = generation index;
  at the end the summary (``acc``, ``bwt``, ``fwt``, ``forgetting`` …), ``summary.json`` and the
  accuracy-matrix heatmap.
- **generations**: each one a logged model ``generation-<index>`` (pyfunc, see
  :mod:`lifelong_mlflow.pyfunc`) and, unless ``registered_model`` is empty, a new version of that
  registered model, tagged ``lifelong.generation``, ``lifelong.parent``, ``lifelong.experiences``
  (the span's experience ids), ``lifelong.experiences_covered``, ``lifelong.samples``,
  ``lifelong.offsets`` and ``lifelong.acc.exp_<i>``. ``alias`` then points at it; MLflow reserves
  ``latest`` as its built-in alias of the newest version, so ``models:/<name>@latest`` needs no move.
  ``generation.records`` gets ``run_id``, ``registered_model``, ``version``, ``model_uri``, ``model_id``.

Every MLflow call runs on one background thread (:class:`lifelong.background.BackgroundWriter`),
through an ``MlflowClient`` bound to this tracker's URI and explicit run ids, never the fluent
active-run API (its run and tracking URI are process-wide state). The training thread only appends
to a list and enqueues. Failures never stop training: they are collected and returned by
``on_run_end`` under ``errors``, with a one-line ``message``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

import lifelong
from lifelong import hookimpl
from lifelong.background import BackgroundWriter
from lifelong.run import Run
from lifelong.types import Generation
from lifelong_mlflow import pyfunc
from lifelong_mlflow.options import MLflowOptions

# MLflow's request and value limits (mlflow.utils.validation).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
SUMMARY_METRICS = (
    "acc",
    "bwt",
    "fwt",
    "forgetting",
    "prequential_accuracy",
    "samples_seen",
    "samples_per_second",
    "training_seconds",
    "wall_seconds",
)
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


def mlflow_key(key: str) -> str:
    """A metric, param or tag name MLflow accepts: other characters become ``_``."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH]


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dot-keyed params: ``{"learner": {"lr": 0.001}}`` → ``{"learner.lr": "0.001"}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[mlflow_key(name)] = _text(value, MAX_PARAM_LENGTH)
    return flat


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _already_exists(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def ui_hint(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """How to look at the run: the ``mlflow ui`` command for a local store, else the run's URL."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if not scheme and not tracking_uri.startswith("databricks"):
        scheme = "file"  # MLflow reads a bare path as a file store
    if scheme in ("http", "https") and experiment_id and run_id:
        return f"open the run: {tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    if scheme in ("sqlite", "file", "postgresql", "mysql", "mssql") or scheme.startswith(("postgresql+", "mysql+")):
        return f"open the MLflow UI: mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
    return f"logged to {tracking_uri}"


class MLflowTracker:
    """Tracker instance for one run; see the module docstring. Construction contacts nothing."""

    def __init__(self, options: MLflowOptions):
        self.options = options
        self.requirements = [
            f"lifelong=={lifelong.__version__}",
            f"mlflow=={mlflow.__version__}",
            "torch",  # the serving side picks its own build (CPU or CUDA); any torch >= 2.4 loads the weights
            "safetensors",
            "numpy",
            "pandas",
            *options.pip_requirements,
        ]
        self.log_seconds: list[float] = []  # background time to log and register each generation
        self._writer: BackgroundWriter | None = None
        self._pending: list[tuple[str, float, int, int]] = []
        self._last_flush = 0.0
        self._step = 0
        self._records: list[dict[str, Any]] = []  # each generation's records dict, filled by the writer
        # Set on the writer thread by _start; read by the main thread only after a drain.
        self._client: MlflowClient | None = None
        self._tracking_uri = options.tracking_uri
        self._experiment_id: str | None = None
        self._run_id: str | None = None

    # -- training thread: enqueue only -----------------------------------------------------
    @hookimpl
    def on_run_start(self, run: Run) -> None:
        self._writer = BackgroundWriter("lifelong-mlflow")
        self._last_flush = time.monotonic()
        tags = {f"lifelong.plugin.{name}": version or "unknown" for name, version in run.plugin_versions.items()}
        tags.update(
            {
                "lifelong.device": str(run.device),
                "lifelong.scenario": run.info.scenario,
                "lifelong.model": run.model_spec.name,
                "lifelong.seed": str(run.seed),
            }
        )
        config = json.loads(json.dumps(run.config, default=str))  # a private copy for the writer thread
        self._writer.submit(self._start, config, tags)

    @hookimpl
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._step = step
        self._pending.extend((key, value, now, step) for key, value in metrics.items())
        if time.monotonic() - self._last_flush >= self.options.flush_seconds:
            self._flush()

    @hookimpl
    def on_generation(self, generation: Generation) -> None:
        self._flush()
        self._records.append(generation.records)  # not the generation: its weights need not outlive the upload
        self._writer.submit(self._log_generation, generation)

    @hookimpl
    def on_run_end(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        if self._writer is None:
            return None
        self._flush()
        # The heatmap file is deleted once this hook returns, so the writer is drained before that.
        self._writer.submit(self._finish, summary)
        errors = self._writer.close()
        self._writer = None
        return self._report(errors)

    @hookimpl
    def on_run_failed(self, error: BaseException) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.submit(self._fail, error)
        self._writer.close()
        self._writer = None

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._writer.submit(self._log_metrics, batch)
        self._last_flush = time.monotonic()

    # -- writer thread ---------------------------------------------------------------------
    def _start(self, config: dict[str, Any], tags: dict[str, str]) -> None:
        # Resolved once, so the run, its models and the printed hint all name the same store even
        # if the process's global tracking URI changes later.
        self._tracking_uri = self.options.tracking_uri or mlflow.get_tracking_uri()
        client = MlflowClient(self._tracking_uri)
        experiment_id = self._experiment(client)
        run = client.create_run(
            experiment_id,
            run_name=self.options.run_name or None,
            tags={mlflow_key(k): _text(v, MAX_TAG_LENGTH) for k, v in resolve_tags(tags).items()},
        )
        self._client, self._experiment_id, self._run_id = client, experiment_id, run.info.run_id
        params = [Param(key, value) for key, value in flatten(config).items()]
        for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
            client.log_batch(self._run_id, params=chunk, synchronous=True)
        client.log_dict(self._run_id, config, "config.json")
        if self.options.registered_model:
            try:
                client.create_registered_model(self.options.registered_model)
            except MlflowException as exc:
                if not _already_exists(exc):
                    raise

    def _experiment(self, client: MlflowClient) -> str:
        name = self.options.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name)
            except MlflowException as exc:  # another run created it in the meantime
                if not _already_exists(exc):
                    raise
                experiment = client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            raise MlflowException(
                f"experiment {name!r} is deleted in {self._tracking_uri}: restore it (mlflow experiments "
                f"restore --experiment-id {experiment.experiment_id}) or set tracking.mlflow.experiment"
            )
        return experiment.experiment_id

    def _log_metrics(self, batch: list[tuple[str, float, int, int]]) -> None:
        if self._run_id is None:  # the run could not be created; that error is already reported
            return
        metrics = []
        for key, value, timestamp, step in batch:
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                metrics.append(Metric(mlflow_key(key), value, timestamp, step))
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk, synchronous=True)

    def _log_generation(self, generation: Generation) -> None:
        if self._run_id is None:
            return
        started = time.perf_counter()
        client, run_id, index = self._client, self._run_id, generation.index
        now = int(time.time() * 1000)
        self._log_metrics([(f"gen_acc/exp_{exp}", acc, now, index) for exp, acc in generation.accuracy.items()])
        tags = generation_tags(generation)
        logged = client.create_logged_model(
            self._experiment_id, name=f"generation-{index}", source_run_id=run_id, tags=tags, model_type="lifelong"
        )
        # The MLmodel metadata MLflow's own log_model writes, tying the files to the logged model.
        metadata = Model(
            artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id
        )
        try:
            with tempfile.TemporaryDirectory(prefix="lifelong-mlflow-") as tmp:
                pyfunc.save(Path(tmp) / "model", generation.state, generation.model_spec, self.requirements, metadata)
                client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
        except BaseException:
            client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        client.finalize_logged_model(logged.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=index)])
        records: dict[str, Any] = {"run_id": run_id, "model_id": logged.model_id}
        name = self.options.registered_model
        if name:
            # The source is the logged model's storage location, not models:/<model_id>: MLflow's SQL
            # registry resolves that URI through the process-wide tracking URI, not this client's.
            version = client.create_model_version(
                name, logged.artifact_location, run_id=run_id, tags=tags, model_id=logged.model_id
            )
            # The tag MLflow's own log_model sets, so the UI links the logged model to its version.
            client.set_logged_model_tags(
                logged.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([{"name": name, "version": version.version}])}
            )
            if self.options.alias and self.options.alias.lower() != "latest":
                client.set_registered_model_alias(name, self.options.alias, version.version)
            records.update(
                registered_model=name, version=int(version.version), model_uri=f"models:/{name}/{version.version}"
            )
        else:
            records.update(registered_model=None, version=None, model_uri=f"models:/{logged.model_id}")
        generation.records.update(records)
        self.log_seconds.append(time.perf_counter() - started)

    def _finish(self, summary: dict[str, Any]) -> None:
        if self._run_id is None:
            return
        client, run_id = self._client, self._run_id
        now = int(time.time() * 1000)
        self._log_metrics(
            [(key, summary.get(key), now, self._step) for key in SUMMARY_METRICS if summary.get(key) is not None]
        )
        report = dict(summary)
        # The kernel copies generation records into the summary only after this hook; the artifact has them now.
        report["generations"] = [
            {**entry, **records} for entry, records in zip(summary.get("generations", []), self._records)
        ]
        client.log_text(run_id, json.dumps(report, indent=2, default=str), "summary.json")
        if summary.get("heatmap"):
            client.log_artifact(run_id, summary["heatmap"])
        if self._writer is not None and self._writer.errors:
            client.set_tag(run_id, "lifelong.logging_errors", str(len(self._writer.errors)))
        client.set_terminated(run_id, "FINISHED")

    def _fail(self, error: BaseException) -> None:
        if self._run_id is not None:
            self._client.set_tag(self._run_id, "lifelong.error", f"{type(error).__name__}: {error}"[:5000])
            self._client.set_terminated(self._run_id, "FAILED")

    # -- result ----------------------------------------------------------------------------
    def _report(self, errors: list[str]) -> dict[str, Any]:
        versions = [r["version"] for r in self._records if r.get("version") is not None]
        result: dict[str, Any] = {
            "run_id": self._run_id,
            "experiment_id": self._experiment_id,
            "tracking_uri": self._tracking_uri,
            "registered_model": self.options.registered_model or None,
        }
        if self._run_id is None:
            first = errors[0].strip().splitlines()[-1] if errors else "unknown error"
            result["message"] = f"MLflow logging failed, nothing was recorded: {first}"
        else:
            parts = []
            if versions:
                span = f"v{versions[0]}" if len(versions) == 1 else f"v{versions[0]}-v{versions[-1]}"
                parts.append(f"registered {self.options.registered_model!r} {span}")
            parts.append(ui_hint(self._tracking_uri, self._experiment_id, self._run_id))
            if errors:
                parts.append(f"{len(errors)} MLflow call(s) failed (see trackers.mlflow.errors in the summary)")
            result["message"] = "; ".join(parts)
        if errors:
            result["errors"] = errors
        return result


def generation_tags(generation: Generation) -> dict[str, str]:
    """Model-version tags: where the generation sits in the lineage and what it was trained on."""
    experience = generation.experience
    tags = {
        "lifelong.generation": str(generation.index),
        "lifelong.parent": "none" if generation.parent is None else str(generation.parent),
        "lifelong.experiences": json.dumps(experience.experience_ids),
        "lifelong.experiences_covered": json.dumps(generation.experiences_covered),
        "lifelong.samples": str(experience.samples),
        "lifelong.offsets": _text(experience.offsets, MAX_TAG_LENGTH),
        "lifelong.model": generation.model_spec.name,
    }
    for exp, acc in generation.accuracy.items():
        tags[f"lifelong.acc.exp_{exp}"] = f"{acc:.6g}"
    return tags
