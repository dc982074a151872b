"""The MLflow calls of the tracker: what each outbox entry becomes in MLflow.

A :class:`Recorder` is bound to one tracking URI and one session's MLflow run. The writer process
(:mod:`lifelong_mlflow.outbox_writer`) holds one per session and calls :meth:`Recorder.apply` for
each outbox entry, in order; the training process uses one only for its preflight (creating or
finding the run before the first batch). Every call goes through an ``MlflowClient`` bound to the
URI and explicit run ids, never the fluent active-run API.

**Every entry can be applied twice** (a writer killed after MLflow took a call but before the
journal said so applies it again), so each kind is idempotent:

- ``start``: the run is looked up by its ``lifelong.session`` tag first and continued when found
  (status back to RUNNING, ``lifelong.resumed_step`` set, params not logged again); created only
  when none exists. If that search fails, nothing is created (a second run of the session would be
  worse than none) and the entry is retried.
- ``generation``: the version (and the READY logged model) tagged with its session and generation
  index are looked up before anything is written; one registered before is reused with its records
  (``alias`` moved only if it points elsewhere), and a logged model finished but not registered
  gets its version from it. A logged model left PENDING or FAILED by a crash mid-upload is not
  trusted: the generation is written again.
- ``metrics``: MLflow's stores drop metric points that already exist (same key, step, timestamp
  and value).
- ``end`` / ``fail``: setting tags and a terminal status twice is harmless.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from lifelong.types import Generation, ModelSpec
from lifelong_mlflow import pyfunc, registry
from lifelong_mlflow.options import MLflowOptions

# MLflow's request and value limits (mlflow.utils.validation).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
METRIC_TAG = "lifelong.metric"  # the metric of a generation's lifelong.acc.exp_<i> tags: accuracy or roc_auc
SUMMARY_METRICS = (
    "acc",
    "avg_roc_auc",
    "bwt_roc_auc",
    "fwt_roc_auc",
    "avg_pr_auc",
    "prequential_roc_auc",
    "threshold",
    "precision",
    "recall",
    "f1",
    "false_alarm_rate",
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


def _quote(value: str) -> str:
    """A string literal for an MLflow filter."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def tag_filter(**tags: str) -> str:
    """An MLflow search filter matching every tag: ``tags.`lifelong.session` = 'abc' AND …``.

    Tag keys with dots need backticks: MLflow 3.17 accepts double quotes for runs and model
    versions but silently matches nothing with them when searching logged models.
    """
    return " AND ".join(f"tags.`{key}` = {_quote(value)}" for key, value in tags.items())


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




@dataclass
class PendingGeneration:
    """A generation as an outbox entry holds it: what the writer logs and registers.

    ``tags`` are :func:`generation_tags` (computed where the generation was made). The tensors stay
    in the entry's safetensors files and are stored as they are (:func:`lifelong_mlflow.pyfunc.save_files`):
    ``weights`` (the model's ``state_dict``) and, when the strategies' state was stored,
    ``strategy_tensors`` with ``strategy_skeleton`` (the state with its tensors replaced by references
    into that file; None when it was not JSON and tensors). ``records`` gets the version, model id
    and URIs once it is written.
    """

    index: int
    tags: dict[str, str]
    accuracy: dict[int, float]
    spec: ModelSpec
    weights: Path
    strategy_tensors: Path | None = None
    strategy_skeleton: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    continues: dict[str, Any] | None = None  # on a continued session's first generation: what it continued from
    records: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Writes one session's run, generations and metrics to one MLflow store (see the module docstring).

    ``requirements`` are the pip requirements stored with each model; ``strategies`` the run's
    strategy names, stored with each generation's strategy state. ``errors`` collects problems that
    do not stop the entry (a strategy state that could not be stored); ``log_seconds`` the time each
    generation took to log and register.
    """

    def __init__(self, options: MLflowOptions, requirements: list[str], strategies: list[str], session: str | None):
        self.options = options
        self.requirements = requirements
        self._strategies = strategies
        self._session = session
        self._tracking_uri = options.tracking_uri or mlflow.get_tracking_uri()
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        # ms: when this session's run started or last moved champion; a hand move after it is respected.
        self._crowned_at = 0
        self._records: dict[int, dict[str, Any]] = {}  # generation index -> records, for the gate's champion tag
        self.errors: list[str] = []
        self.log_seconds: list[float] = []

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self._tracking_uri)
        return self._client

    def run_state(self) -> dict[str, Any]:
        """What a later writer needs to go on with this session's run (kept in the outbox's session.json)."""
        return {"run_id": self._run_id, "experiment_id": self._experiment_id, "crowned_at": self._crowned_at}

    def restore(self, state: dict[str, Any]) -> None:
        self._run_id = state.get("run_id") or self._run_id
        self._experiment_id = state.get("experiment_id") or self._experiment_id
        self._crowned_at = int(state.get("crowned_at") or self._crowned_at or 0)

    # -- the run ---------------------------------------------------------------------------------
    def _start(self, config: dict[str, Any], tags: dict[str, str], session: str, resumed: bool, step: int) -> None:
        """Find the session's run (by its tag) and continue it, or create it with its params and config."""
        client = self.client
        experiment_id = self._experiment(client)
        # A failed search raises here: no second run of the session is created.
        existing = self._session_run(client, experiment_id, session)
        if existing is not None:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
            for stale in ("lifelong.stopped_by", "lifelong.checkpoint", "lifelong.error"):
                if stale in existing.data.tags:
                    client.delete_tag(run_id, stale)
            if resumed:
                client.set_tag(run_id, "lifelong.resumed_step", str(step))
            if not existing.data.params:  # created by an attempt that stopped before its params
                self._log_params(run_id, config)
            self._experiment_id, self._run_id = experiment_id, run_id
            self._crowned_at = max(self._crowned_at, existing.info.start_time)
        else:
            run = client.create_run(
                experiment_id,
                run_name=self.options.run_name or None,
                tags={mlflow_key(k): _text(v, MAX_TAG_LENGTH) for k, v in resolve_tags(tags).items()},
            )
            self._experiment_id, self._run_id = experiment_id, run.info.run_id
            self._crowned_at = run.info.start_time
            self._log_params(self._run_id, config)
        if self.options.registered_model:
            try:
                client.create_registered_model(self.options.registered_model)
            except MlflowException as exc:
                if not _already_exists(exc):
                    raise

    def _log_params(self, run_id: str, config: dict[str, Any]) -> None:
        params = [Param(key, value) for key, value in flatten(config).items()]
        for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk, synchronous=True)
        self.client.log_dict(run_id, config, "config.json")

    @staticmethod
    def _session_run(client: MlflowClient, experiment_id: str, session: str):
        """The run this session created before, or None (the oldest, should there be several)."""
        found = client.search_runs(
            [experiment_id],
            filter_string=tag_filter(**{"lifelong.session": session}),
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return found[0] if found else None

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

    def _need_run(self) -> None:
        """A writer that inherited entries without their run finds it by the session tag."""
        if self._run_id is not None:
            return
        experiment_id = self._experiment(self.client)
        existing = self._session_run(self.client, experiment_id, str(self._session))
        if existing is None:
            raise MlflowException(f"no MLflow run of session {self._session} exists and none is being started")
        self._experiment_id, self._run_id = experiment_id, existing.info.run_id
        self._crowned_at = max(self._crowned_at, existing.info.start_time)

    # -- metrics ---------------------------------------------------------------------------------
    def _log_metrics(self, batch: list[tuple[str, float, int, int]]) -> None:
        metrics = []
        for key, value, timestamp, step in batch:
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                metrics.append(Metric(mlflow_key(key), value, int(timestamp), int(step)))
        if not metrics:
            return
        self._need_run()
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self._run_id, metrics=chunk, synchronous=True)

    # -- generations -----------------------------------------------------------------------------
    def _log_generation(self, generation: PendingGeneration) -> dict[str, Any]:
        """Log and register one generation, or reuse what an earlier attempt wrote; returns its records."""
        self._need_run()
        started = time.perf_counter()
        client, run_id, index = self.client, self._run_id, generation.index
        session = generation.tags.get("lifelong.session") or self._session
        tags = dict(generation.tags)
        champion = (generation.promotion or {}).get("champion")
        if isinstance(champion, int) and self._records.get(champion, {}).get("version") is not None:
            tags["lifelong.gate.champion_version"] = str(self._records[champion]["version"])
        name = self.options.registered_model
        key = {"lifelong.session": str(session), "lifelong.generation": str(index)}
        if name:
            done = client.search_model_versions(f"name = {_quote(name)} AND {tag_filter(**key)}", max_results=10)
            if done:  # registered before (an earlier process, or an attempt whose answer was lost): reuse it
                version = min(done, key=lambda v: int(v.version))
                self._move_alias(name, version.version)
                if generation.promotion is not None:
                    self._promote(name, version.version, generation.promotion, version.tags or {})
                # MLflow's SQL registry does not return a version's model_id: the logged model's tags find it.
                logged = None if version.model_id else self._ready_logged_model(key)
                records = self._version_records(name, version)
                records["model_id"] = version.model_id or (logged and logged.model_id)
                return self._note_records(generation, records, started)
        now = int(time.time() * 1000)
        logged = self._ready_logged_model(key)
        if logged is None:
            metric = generation.tags.get(METRIC_TAG, "accuracy")
            prefix = "gen_acc" if metric == "accuracy" else f"gen_{metric}"
            self._log_metrics([(f"{prefix}/exp_{exp}", acc, now, index) for exp, acc in generation.accuracy.items()])
            logged = self._log_model(generation, tags, session)
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=index)])
        elif logged.model_id not in {o.model_id for o in (client.get_run(run_id).outputs.model_outputs or [])}:
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=index)])
        records: dict[str, Any] = {"run_id": run_id, "model_id": logged.model_id}
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
            self._move_alias(name, version.version, known_new=True)
            if generation.promotion is not None:
                self._promote(name, version.version, generation.promotion, {})
            records.update(self._version_records(name, version), model_id=logged.model_id)
        else:
            records.update(registered_model=None, version=None, model_uri=f"models:/{logged.model_id}")
        return self._note_records(generation, records, started)

    def _note_records(self, generation: PendingGeneration, records: dict[str, Any], started: float) -> dict[str, Any]:
        if generation.continues:
            records["continues"] = dict(generation.continues)
        generation.records.update(records)
        self._records[generation.index] = dict(records)
        self.log_seconds.append(time.perf_counter() - started)
        return records

    def _log_model(self, generation: PendingGeneration, tags: dict[str, str], session: str | None):
        """A new READY logged model holding the generation (weights, spec, strategies' state)."""
        client, run_id = self.client, self._run_id
        logged = client.create_logged_model(
            self._experiment_id,
            name=f"generation-{generation.index}",
            source_run_id=run_id,
            tags=tags,
            model_type="lifelong",
        )
        # The MLmodel metadata MLflow's own log_model writes, tying the files to the logged model.
        metadata = Model(
            artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id
        )
        strategies: dict[str, Any] = {}
        if generation.strategy_tensors is not None and generation.strategy_skeleton is not None:
            # The skeleton came out of the entry's JSON: strategies.json cannot fail to encode.
            names = self._strategies or list(generation.strategy_skeleton)
            lineage = {"session": session, "generation": generation.index}
            strategies = {
                "strategy_tensors": generation.strategy_tensors,
                "strategy_index": pyfunc.strategy_index(generation.strategy_skeleton, names, lineage),
            }
        try:
            with tempfile.TemporaryDirectory(prefix="lifelong-mlflow-") as tmp:
                target = Path(tmp) / "model"
                pyfunc.save_files(target, generation.weights, generation.spec, self.requirements, metadata, **strategies)
                # Recorded in the registry, apart from the artifact store, so lifelong serve can tell changed weights.
                tags[registry.WEIGHTS_DIGEST_TAG] = pyfunc.file_digest(target / "artifacts" / pyfunc.WEIGHTS)
                client.log_model_artifacts(logged.model_id, str(target))
        except BaseException:
            client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        return client.finalize_logged_model(logged.model_id, "READY")

    def _ready_logged_model(self, key: dict[str, str]):
        """The READY logged model this session already wrote for this generation, or None.

        One left PENDING or FAILED by a crash mid-upload is not trusted: the generation is written again.
        """
        found = self.client.search_logged_models([self._experiment_id], filter_string=tag_filter(**key), max_results=10)
        ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
        return ready[0] if ready else None

    def _move_alias(self, name: str, version: str, known_new: bool = False) -> None:
        alias = self.options.alias
        if not alias or alias.lower() == "latest":
            return
        if known_new or self._alias_version(name, alias) != str(version):
            self.client.set_registered_model_alias(name, alias, version)

    def _promote(self, name: str, version: str, verdict: dict[str, Any], tags: dict[str, str]) -> None:
        """``challenger`` to this version; ``champion`` too if it passed and no person moved it since.

        ``tags`` are the version's tags when it existed before (an earlier process of the session):
        one crowned before is not crowned again.
        """
        client = self.client
        if str(self._alias_version(name, registry.CHALLENGER)) != str(version):
            client.set_registered_model_alias(name, registry.CHALLENGER, version)
        if not verdict.get("passed") or registry.SINCE_TAG in tags:
            return
        current = self._alias_version(name, registry.CHAMPION)
        if current is not None and str(current) != str(version):
            held = client.get_model_version(name, str(current)).tags or {}
            by, since = held.get(registry.BY_TAG), int(held.get(registry.SINCE_TAG, "0") or 0)
            if by in ("promote", "rollback") and since >= self._crowned_at:
                client.set_model_version_tag(
                    name,
                    version,
                    registry.HELD_TAG,
                    f"passed, but champion v{current} was set by hand ({by}: {held.get(registry.REASON_TAG, '')}); "
                    f"promote by hand: lifelong models promote {name} {version} --reason ...",
                )
                return
        registry.set_champion(client, name, version, by="gate", reason=verdict.get("reason", "passed the promotion gate"))
        self._crowned_at = int(time.time() * 1000)

    def _alias_version(self, name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None  # no such alias yet

    @staticmethod
    def _version_records(name: str, version: Any) -> dict[str, Any]:
        return {
            "run_id": version.run_id,
            "model_id": getattr(version, "model_id", None),
            "registered_model": name,
            "version": int(version.version),
            "model_uri": f"models:/{name}/{version.version}",
        }

    # -- the end ---------------------------------------------------------------------------------
    def _finish(self, summary: dict[str, Any], heatmap: str | None, logging_errors: int) -> None:
        """Summary metrics, ``summary.json`` (every generation with its version), the heatmap; FINISHED."""
        self._need_run()
        client, run_id = self.client, self._run_id
        now = int(time.time() * 1000)
        step = int(summary.get("_step", 0) or 0)
        self._log_metrics([(k, summary.get(k), now, step) for k in SUMMARY_METRICS if summary.get(k) is not None])
        report = {k: v for k, v in summary.items() if k != "_step"}
        # The kernel copies generation records into the summary only after the tracker's hook; the
        # artifact gets them from the store: every version tagged with this session (earlier processes'
        # too), then what this writer knows (unregistered generations' logged models).
        entries = summary.get("generations", [])
        found = self._session_records([e.get("index") for e in entries])
        report["generations"] = [
            {**entry, **found.get(entry.get("index"), {}), **self._records.get(entry.get("index"), {})} for entry in entries
        ]
        client.log_text(run_id, json.dumps(report, indent=2, default=str), "summary.json")
        if heatmap:
            client.log_artifact(run_id, heatmap)
        if logging_errors:
            client.set_tag(run_id, "lifelong.logging_errors", str(logging_errors))
        client.set_terminated(run_id, "FINISHED")

    def _session_records(self, indices: list[Any]) -> dict[int, dict[str, Any]]:
        """Records of this session's registered generations that this writer did not write, by their tags."""
        name = self.options.registered_model
        if not name or all(i in self._records for i in indices):
            return {}
        found = self.client.search_model_versions(
            f"name = {_quote(name)} AND {tag_filter(**{'lifelong.session': str(self._session)})}", max_results=10000
        )
        records: dict[int, dict[str, Any]] = {}
        for version in sorted(found, key=lambda v: -int(v.version)):  # the oldest version of a generation wins
            generation = (version.tags or {}).get("lifelong.generation", "")
            if generation.isdigit():
                known = self._version_records(name, version)
                records[int(generation)] = {k: v for k, v in known.items() if v is not None}
        return records

    def _fail(self, error: dict[str, Any]) -> str:
        """KILLED (stopped by a signal: resumable) or FAILED; returns the status set.

        ``error`` is :func:`describe_failure`'s dict.
        """
        self._need_run()
        client, run_id = self.client, self._run_id
        if error.get("signal"):
            tags = {"lifelong.stopped_by": error["signal"]}
            if error.get("checkpoint"):
                tags["lifelong.checkpoint"] = _text(error["checkpoint"], MAX_TAG_LENGTH)
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            client.set_terminated(run_id, "KILLED")
            return "KILLED"
        client.set_tag(run_id, "lifelong.error", str(error.get("error", ""))[:5000])
        client.set_terminated(run_id, "FAILED")
        return "FAILED"


def describe_failure(error: BaseException) -> dict[str, Any]:
    """What ``_fail`` needs of an exception, as plain data for an outbox entry."""
    from lifelong.errors import Interrupted

    if isinstance(error, Interrupted):  # stopped on purpose, resumable: not a failure
        return {"signal": error.signal_name, "checkpoint": str(error.checkpoint) if error.checkpoint else None}
    return {"error": f"{type(error).__name__}: {error}"}


def strategy_error(index: int, exc: BaseException) -> str:
    return (
        f"generation {index}: strategy state not stored ({type(exc).__name__}: {exc}); "
        "a run continuing from it starts its strategies afresh"
    )


def generation_tags(generation: Generation, session: str | None = None) -> dict[str, str]:
    """Logged-model and version tags: where the generation sits in the lineage and what it was trained on.

    ``session`` is the generation's session id (``generation.session`` when the kernel sets it).
    """
    experience = generation.experience
    session = getattr(generation, "session", None) or session
    continues = getattr(generation, "continues", None)
    tags = {"lifelong.generation": str(generation.index)}
    if session:
        tags["lifelong.session"] = str(session)
    if generation.parent is not None:
        tags["lifelong.parent"] = str(generation.parent)
        if session:
            tags["lifelong.parent_session"] = str(session)
        tags["lifelong.parent_generation"] = str(generation.parent)
    elif continues:
        tags["lifelong.parent"] = _text(str(continues.get("ref")), MAX_TAG_LENGTH)
        if continues.get("session") is not None:
            tags["lifelong.parent_session"] = str(continues["session"])
        if continues.get("generation") is not None:
            tags["lifelong.parent_generation"] = str(continues["generation"])
    else:
        tags["lifelong.parent"] = "none"
    tags.update(
        {
            "lifelong.experiences": json.dumps(experience.experience_ids),
            "lifelong.experiences_covered": json.dumps(generation.experiences_covered),
            "lifelong.samples": str(experience.samples),
            "lifelong.offsets": _text(experience.offsets, MAX_TAG_LENGTH),
            "lifelong.model": generation.model_spec.name,
        }
    )
    # lifelong.acc.exp_<i> holds the run's headline metric (what the gate and `lifelong models` compare):
    # accuracy, or a detector's ROC-AUC, named by lifelong.metric; a detector's PR-AUC is beside it.
    metric = getattr(generation, "metric", "accuracy")
    tags[METRIC_TAG] = metric
    for exp, acc in generation.accuracy.items():
        tags[f"lifelong.acc.exp_{exp}"] = f"{acc:.6g}"
    for name, row in (getattr(generation, "scores", None) or {}).items():
        if name not in (metric, "accuracy"):
            for exp, value in row.items():
                tags[f"lifelong.{name}.exp_{exp}"] = f"{value:.6g}"
    verdict = getattr(generation, "promotion", None)
    if verdict is not None:
        tags[registry.VERDICT_TAG] = "passed" if verdict["passed"] else "failed"
        text = json.dumps(verdict)
        if len(text) > MAX_TAG_LENGTH:  # hundreds of experiences: the rules without the per-experience scores
            text = json.dumps({k: v for k, v in verdict.items() if k not in ("scores", "champion_scores")})
        tags[registry.GATE_TAG] = _text(text, MAX_TAG_LENGTH)
        for rule, outcome in verdict["rules"].items():
            value = outcome.get("value")
            tags[f"{registry.GATE_TAG}.{rule}"] = "n/a" if value is None else f"{value:.6g}"
    return tags
