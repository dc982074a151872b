"""The MLflow tracker: one MLflow run per pipeline run, every generation a registered model version.

What lands in MLflow:

- **run** (in ``experiment``, named ``run_name``): the resolved pipeline flattened into params
  (``learner.lr``, ``model.hidden`` …; values as JSON text, cut to MLflow's 6,000 characters) and in
  full as ``config.json``; tags ``lifelong.session`` (the session id), ``lifelong.plugin.<name>``
  (plugin versions), ``lifelong.device``, ``lifelong.scenario``, ``lifelong.model``, ``lifelong.seed``
  and, when the model continued from an earlier one, ``lifelong.continues``.
- **one run per session**: a process that resumes a session (``run.session.resumed``) finds the
  run tagged with its session id in the experiment and continues it (status back to RUNNING,
  params not logged again, ``lifelong.resumed_step`` set); when the crash came before the run
  existed it is created as usual. If that search itself fails (the store is down, a timeout after
  MLflow's retries), nothing is created: a second run of the session would be worse than none, and
  the failure is reported under ``errors``.
- **metrics**: whatever ``on_metrics`` reports (loss, prequential accuracy, throughput,
  ``eval/…`` at boundaries) at step = stream batch, sent with ``log_batch`` every ``flush_seconds``
  and at every boundary; NaN and infinite values are skipped (they would break MLflow's charts).
  Each generation's row of the accuracy matrix as ``gen_acc/exp_<i>`` at step = generation index;
  at the end the summary (``acc``, ``bwt``, ``fwt``, ``forgetting`` …), ``summary.json`` and the
  accuracy-matrix heatmap.
- **generations**: each one a logged model ``generation-<index>`` (pyfunc with the strategies'
  state, see :mod:`lifelong_mlflow.pyfunc`) and, unless ``registered_model`` is empty, a new version
  of that registered model, both tagged ``lifelong.session``, ``lifelong.generation``,
  ``lifelong.parent`` (the parent generation's index in the session; for the first generation of a
  session that continued from an earlier model, that model's reference: ``models:/NAME/VERSION`` or
  a checkpoint path; else ``none``), ``lifelong.parent_session`` and ``lifelong.parent_generation``
  (when known), ``lifelong.experiences`` (the span's experience ids),
  ``lifelong.experiences_covered``, ``lifelong.samples``, ``lifelong.offsets`` and
  ``lifelong.acc.exp_<i>``. ``alias`` then points at it; MLflow reserves ``latest`` as its built-in
  alias of the newest version, so ``models:/<name>@latest`` needs no move. ``generation.records``
  gets ``run_id``, ``registered_model``, ``version``, ``model_uri``, ``model_id`` and, on the first
  generation of a continued session, ``continues``.
- **promotion** (with ``[promotion]`` on, :mod:`lifelong.promotion`): each version is also tagged
  with the gate's verdict (``lifelong.gate.verdict`` passed/failed, ``lifelong.gate`` the whole
  verdict as JSON, ``lifelong.gate.<rule>`` each measured value, ``lifelong.gate.champion_version``
  the version it was compared with when the champion is a generation of this process) and gets
  the alias ``challenger``;
  ``champion`` moves to it only when it passed (:func:`lifelong_mlflow.registry.set_champion`,
  by ``gate``). A champion set by hand (``lifelong models promote`` or ``rollback``) after this
  run's last move is never overruled: the passing version is tagged ``lifelong.gate.held`` with
  the reason and stays a challenger until a person promotes it. ``alias`` may not be
  ``champion`` or ``challenger`` then (refused by ``validate``).
- **nothing twice**: in a resumed session, before a generation is logged, the version and the READY
  logged model tagged with its session and index are looked up; a generation that was registered
  before the stop is reused with its records (``alias`` moved only if it points elsewhere), and one
  whose logged model was finished but not registered gets its version from that logged model. A
  session that did not resume has a new id, so nothing of it can exist and nothing is searched.
  A resumed session's ``summary.json`` names the versions of the generations registered before the
  stop too (found by their tags).

Every MLflow call runs on one background thread (:class:`lifelong.background.BackgroundWriter`),
through an ``MlflowClient`` bound to this tracker's URI and explicit run ids, never the fluent
active-run API (its run and tracking URI are process-wide state). The training thread only appends
to a list and enqueues. Failures after the preflight never stop training: they are collected and
returned by ``on_run_end`` under ``errors``, with a one-line ``message``.

**Preflight.** ``on_run_start`` waits, before the first batch, for the writer to reach the store,
create (or find) the run and write its params and ``config.json``, for at most
``preflight_seconds`` (its requests time out after 5 s and are retried once; a fresh sqlite store
gets its schema first, under a file lock, and a half-migrated one is refused with the commands that
repair it: :mod:`lifelong_mlflow.store`). If that fails, ``on_unreachable = "fail"`` (the default)
raises :class:`lifelong.errors.UserError`: exit status 2, nothing trained, the run (if it was
created) marked FAILED; ``"continue"`` trains without sending anything more to MLflow.

**Never hanging on the store.** For the whole run every MLflow request is bounded
(:data:`lifelong_mlflow.store.RUN_HTTP`: 30 s per request, 4 retries; the SQL stores' connect
attempts to 3; values set in the environment win), and the run never waits on the writer more than
``drain_seconds``: at the end, for the queue to empty, and during training, for a free generation
slot. Past that the writer is abandoned (its daemon thread never keeps the process alive), nothing
more is sent, and the result says what is missing.

**The result says whether everything was recorded.** Besides ``run_id``, ``message`` and
``errors``, ``on_run_end`` returns ``complete`` (true only when the run exists, every generation
handed to the tracker was written and registered, and the run was closed FINISHED) and
``unrecorded`` (the indices of the generations that were not). A run that was not closed stays
RUNNING in MLflow, and the message says so.

Memory stays bounded: each queued generation holds CPU copies of the model and the strategies'
state, so at most ``max_pending_generations`` may be queued or being written; at that many, a
boundary waits on the training thread for the writer to finish one (back-pressure: a slow store
slows training rather than exhausting memory). The total wait is ``backpressure_seconds`` in
``on_run_end``'s result. A run stopped by SIGTERM/SIGINT (:class:`lifelong.errors.Interrupted`) ends
KILLED with ``lifelong.stopped_by`` = the signal; any other error ends it FAILED.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import tempfile
import threading
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
from lifelong.errors import Interrupted, UserError
from lifelong.plan import say
from lifelong.run import Run
from lifelong.types import Generation
from lifelong_mlflow import pyfunc, registry, store
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
        # Each generation's records dict (a few small values, filled by the writer), by generation index.
        self._records: dict[int, dict[str, Any]] = {}
        self._session: str | None = None
        self._resumed = False  # only a resumed session can find its generations already in the store
        self._strategies: list[str] = []
        # Back-pressure: one permit per generation queued or being written.
        self._slots = threading.BoundedSemaphore(options.max_pending_generations)
        self.backpressure_seconds = 0.0
        # Set on the writer thread by _start; read by the main thread only after a drain.
        self._client: MlflowClient | None = None
        self._tracking_uri = options.tracking_uri
        self._experiment_id: str | None = None
        self._run_id: str | None = None
        # ms: when this session's run started or last moved champion; a hand move after it is respected.
        self._crowned_at = 0
        # What was recorded: the generations handed over, those written (by the writer), the status the
        # run was closed with; and why tracking stopped early (a failed preflight going on, an abandoned writer).
        self._started = False
        self._given: list[int] = []
        self._recorded: set[int] = set()
        self._status: str | None = None
        self._offline: str | None = None
        self._errors: list[str] = []
        self._bounds: contextlib.ExitStack | None = None

    # -- training thread: enqueue only -----------------------------------------------------
    @hookimpl
    def validate(self, run: Run) -> None:
        if run.promotion is not None and self.options.alias in (registry.CHAMPION, registry.CHALLENGER):
            raise ValueError(
                f"tracking.mlflow.alias = {self.options.alias!r} would move with every generation, but with "
                f"[promotion] on the gate moves {registry.CHALLENGER!r} to every version and {registry.CHAMPION!r} "
                "only to those that pass: set alias to 'latest' (or another name)"
            )

    @hookimpl
    def on_run_start(self, run: Run) -> None:
        self._bounds = contextlib.ExitStack()
        self._bounds.enter_context(store.bounded(store.RUN_HTTP))  # every MLflow call of this run is bounded
        self._writer = BackgroundWriter("lifelong-mlflow")
        self._started = True
        self._last_flush = time.monotonic()
        session = run.session
        self._session, self._resumed, self._strategies = session.id, session.resumed, run.strategies
        tags = {f"lifelong.plugin.{name}": version or "unknown" for name, version in run.plugin_versions.items()}
        tags.update(
            {
                "lifelong.session": session.id,
                "lifelong.device": str(run.device),
                "lifelong.scenario": run.info.scenario,
                "lifelong.model": run.model_spec.name,
                "lifelong.seed": str(run.seed),
            }
        )
        if session.continues:
            tags["lifelong.continues"] = str(session.continues.get("ref"))
        config = json.loads(json.dumps(run.config, default=str))  # a private copy for the writer thread
        problem = self._preflight(config, tags, session.id, session.resumed, session.step)
        if problem is None:
            return
        self._errors.append(problem)
        going_on = self.options.on_unreachable == "continue"
        if going_on:
            self._offline = problem  # nothing more is sent to MLflow in this run
        if self._run_id is not None and not self._writer.abandoned:  # created, then a write failed: say so there
            self._writer.submit(self._fail, UserError(problem))
        self._close_writer(self.options.preflight_seconds)
        if going_on:
            say(f"mlflow: {problem}; training without recording it (tracking.mlflow.on_unreachable = continue)")
            return
        self._started = False
        self._release_bounds()
        raise UserError(
            f"tracking.mlflow: {problem}. Nothing was trained. To train without recording, set "
            'tracking.mlflow.on_unreachable = "continue"'
        )

    def _preflight(
        self, config: dict[str, Any], tags: dict[str, str], session: str, resumed: bool, step: int
    ) -> str | None:
        """Before the first batch: reach the store, create (or find) the run and write its params, in
        ``preflight_seconds``; why it failed, or None.

        A local sqlite store is prepared first under its lock (:func:`lifelong_mlflow.store.prepare`):
        a fresh one gets its schema, a half-migrated one is refused with its repair.
        """
        uri = self._tracking_uri = self.options.tracking_uri or mlflow.get_tracking_uri()
        seconds = self.options.preflight_seconds
        try:
            with store.bounded(store.HTTP_DEFAULTS):
                store.prepare(uri)
                self._writer.submit(self._start, config, tags, session, resumed, step)
                done = self._writer.wait(seconds)
        except store.StoreError as exc:
            return str(exc)
        if not done:
            self._writer.abandon()
            return (
                f"the MLflow store at {uri} did not answer within {seconds:g} s (tracking.mlflow.preflight_seconds); "
                "check that it is up and not overloaded"
            )
        if self._writer.errors:
            return store.describe_error(_last_line(self._writer.errors[-1]), uri, _REMEDY)
        return None

    @hookimpl
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if not self._live():
            return
        now = int(time.time() * 1000)
        self._step = step
        self._pending.extend((key, value, now, step) for key, value in metrics.items())
        if time.monotonic() - self._last_flush >= self.options.flush_seconds:
            self._flush()

    @hookimpl
    def on_generation(self, generation: Generation) -> None:
        self._flush()
        continues = getattr(generation, "continues", None)
        if continues:
            generation.records["continues"] = dict(continues)
        self._given.append(generation.index)
        if not self._live():
            return
        # Not the generation: its weights need not outlive the upload.
        self._records[generation.index] = generation.records
        if not self._slots.acquire(blocking=False):
            waited = time.perf_counter()
            free = self._slots.acquire(timeout=self.options.drain_seconds)
            self.backpressure_seconds += time.perf_counter() - waited
            if not free:  # the writer wrote no generation for drain_seconds: stop waiting for it
                self._writer.abandon()
                self._offline = (
                    f"MLflow wrote no generation for {self.options.drain_seconds:g} s "
                    "(tracking.mlflow.drain_seconds), so the run stopped recording"
                )
                say(f"mlflow: {self._offline}; training goes on")
                return
        self._writer.submit(self._log_generation_slot, generation)

    @hookimpl
    def on_run_end(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        if not self._started:
            return None
        if self._live():
            self._flush()
            # The heatmap file is deleted once this hook returns, so the writer is drained before that,
            # for at most drain_seconds.
            self._writer.submit(self._finish, summary)
        self._close_writer(self.options.drain_seconds)
        self._release_bounds()
        return self._report(self._errors)

    @hookimpl
    def on_run_failed(self, error: BaseException) -> None:  # KILLED for Interrupted, else FAILED
        if not self._started:
            return
        if self._live():
            self._flush()
            self._writer.submit(self._fail, error)
        self._close_writer(self.options.drain_seconds)
        self._release_bounds()
        self._started = False

    def _live(self) -> bool:
        """Whether MLflow calls are still being made (not after a failed preflight going on, or an abandoned writer)."""
        return self._writer is not None and self._offline is None and not self._writer.abandoned

    def _close_writer(self, seconds: float) -> None:
        """Close the writer, waiting at most ``seconds``; past them it is abandoned and the run says so."""
        writer = self._writer
        if writer is None:
            return
        errors = writer.close(seconds)
        self._writer = None
        self._errors.extend(e for e in errors if e not in self._errors)
        if writer.abandoned and self._offline is None:
            self._offline = (
                f"MLflow did not finish within {seconds:g} s (tracking.mlflow.drain_seconds): "
                f"{writer.dropped} queued call(s) not made"
            )

    def _release_bounds(self) -> None:
        if self._bounds is not None:
            self._bounds.close()
            self._bounds = None

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._writer.submit(self._log_metrics, batch)
        self._last_flush = time.monotonic()

    # -- writer thread ---------------------------------------------------------------------
    def _start(self, config: dict[str, Any], tags: dict[str, str], session: str, resumed: bool, step: int) -> None:
        # Resolved once, so the run, its models and the printed hint all name the same store even
        # if the process's global tracking URI changes later.
        self._tracking_uri = self.options.tracking_uri or mlflow.get_tracking_uri()
        client = MlflowClient(self._tracking_uri)
        experiment_id = self._experiment(client)
        # A failed search raises here: no second run of the session is created (see the module docstring).
        existing = self._session_run(client, experiment_id, session) if resumed else None
        if existing is not None:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
            for stale in ("lifelong.stopped_by", "lifelong.checkpoint", "lifelong.error"):
                if stale in existing.data.tags:
                    client.delete_tag(run_id, stale)
            client.set_tag(run_id, "lifelong.resumed_step", str(step))
            self._client, self._experiment_id, self._run_id = client, experiment_id, run_id
            self._crowned_at = existing.info.start_time
        else:
            run = client.create_run(
                experiment_id,
                run_name=self.options.run_name or None,
                tags={mlflow_key(k): _text(v, MAX_TAG_LENGTH) for k, v in resolve_tags(tags).items()},
            )
            self._client, self._experiment_id, self._run_id = client, experiment_id, run.info.run_id
            self._crowned_at = run.info.start_time
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

    @staticmethod
    def _session_run(client: MlflowClient, experiment_id: str, session: str):
        """The run this session created before it stopped, or None (the oldest, should there be several)."""
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

    def _log_generation_slot(self, generation: Generation) -> None:
        try:
            self._log_generation(generation)
            if self._run_id is not None:  # without a run, _log_generation wrote nothing
                self._recorded.add(generation.index)
        finally:
            self._slots.release()

    def _log_generation(self, generation: Generation) -> None:
        if self._run_id is None:
            return
        started = time.perf_counter()
        client, run_id, index = self._client, self._run_id, generation.index
        session = getattr(generation, "session", None) or self._session
        tags = generation_tags(generation, session)
        champion = (generation.promotion or {}).get("champion")
        if isinstance(champion, int) and self._records.get(champion, {}).get("version") is not None:
            tags["lifelong.gate.champion_version"] = str(self._records[champion]["version"])
        name = self.options.registered_model
        key = {"lifelong.session": str(session), "lifelong.generation": str(index)}
        if name and self._resumed:
            done = client.search_model_versions(f"name = {_quote(name)} AND {tag_filter(**key)}", max_results=10)
            if done:  # registered before this session stopped: reuse it
                version = min(done, key=lambda v: int(v.version))
                self._move_alias(name, version.version)
                if generation.promotion is not None:
                    self._promote(name, version.version, generation.promotion, version.tags or {})
                # MLflow's SQL registry does not return a version's model_id: the logged model's tags find it.
                logged = None if version.model_id else self._ready_logged_model(key)
                records = self._version_records(name, version)
                generation.records.update(records, model_id=version.model_id or (logged and logged.model_id))
                self.log_seconds.append(time.perf_counter() - started)
                return
        now = int(time.time() * 1000)
        logged = self._ready_logged_model(key) if self._resumed else None
        if logged is None:
            self._log_metrics([(f"gen_acc/exp_{exp}", acc, now, index) for exp, acc in generation.accuracy.items()])
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
        generation.records.update(records)
        self.log_seconds.append(time.perf_counter() - started)

    def _log_model(self, generation: Generation, tags: dict[str, str], session: str | None):
        """A new READY logged model holding the generation (weights, spec, strategies' state)."""
        client, run_id = self._client, self._run_id
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
        save = {
            "strategy_state": generation.strategy_state,
            "strategies": self._strategies or list(generation.strategy_state),
            "lineage": {"session": session, "generation": generation.index},
        }
        try:
            with tempfile.TemporaryDirectory(prefix="lifelong-mlflow-") as tmp:
                target = Path(tmp) / "model"
                try:
                    pyfunc.save(target, generation.state, generation.model_spec, self.requirements, metadata, **save)
                except (TypeError, ValueError) as exc:
                    if target.exists():
                        raise
                    # A strategy state that is not JSON and tensors: the generation is still worth serving.
                    self._writer.errors.append(
                        f"generation {generation.index}: strategy state not stored ({type(exc).__name__}: {exc}); "
                        "a run continuing from it starts its strategies afresh"
                    )
                    pyfunc.save(target, generation.state, generation.model_spec, self.requirements, metadata)
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
        found = self._client.search_logged_models(
            [self._experiment_id], filter_string=tag_filter(**key), max_results=10
        )
        ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
        return ready[0] if ready else None

    def _move_alias(self, name: str, version: str, known_new: bool = False) -> None:
        alias = self.options.alias
        if not alias or alias.lower() == "latest":
            return
        if known_new or self._alias_version(name, alias) != str(version):
            self._client.set_registered_model_alias(name, alias, version)

    def _promote(self, name: str, version: str, verdict: dict[str, Any], tags: dict[str, str]) -> None:
        """``challenger`` to this version; ``champion`` too if it passed and no person moved it since.

        ``tags`` are the version's tags when it existed before this process (a resumed session):
        one crowned before the stop is not crowned again.
        """
        client = self._client
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
            return str(self._client.get_model_version_by_alias(name, alias).version)
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
        # Generations registered before a resume are found by their tags.
        earlier = self._earlier_records(summary.get("generations", []))
        report["generations"] = [
            {**entry, **earlier.get(entry.get("index"), {}), **self._records.get(entry.get("index"), {})}
            for entry in summary.get("generations", [])
        ]
        client.log_text(run_id, json.dumps(report, indent=2, default=str), "summary.json")
        if summary.get("heatmap"):
            client.log_artifact(run_id, summary["heatmap"])
        writer = self._writer
        if writer is not None and writer.errors:
            client.set_tag(run_id, "lifelong.logging_errors", str(len(writer.errors)))
        client.set_terminated(run_id, "FINISHED")
        self._status = "FINISHED"

    def _earlier_records(self, entries: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Records of the summary's generations this process did not log (a resumed session's earlier ones)."""
        name = self.options.registered_model
        missing = [e.get("index") for e in entries if e.get("index") not in self._records]
        if not (self._resumed and name and missing):
            return {}
        found = self._client.search_model_versions(
            f"name = {_quote(name)} AND {tag_filter(**{'lifelong.session': str(self._session)})}", max_results=10000
        )
        records: dict[int, dict[str, Any]] = {}
        for version in sorted(found, key=lambda v: -int(v.version)):  # the oldest version of a generation wins
            generation = (version.tags or {}).get("lifelong.generation", "")
            if generation.isdigit():
                known = self._version_records(name, version)
                records[int(generation)] = {k: v for k, v in known.items() if v is not None}
        return records

    def _fail(self, error: BaseException) -> None:
        if self._run_id is None:
            return
        if isinstance(error, Interrupted):  # stopped on purpose, resumable: not a failure
            tags = {"lifelong.stopped_by": error.signal_name}
            if error.checkpoint:
                tags["lifelong.checkpoint"] = _text(error.checkpoint, MAX_TAG_LENGTH)
            for key, value in tags.items():
                self._client.set_tag(self._run_id, key, value)
            self._client.set_terminated(self._run_id, "KILLED")
            self._status = "KILLED"
            return
        self._client.set_tag(self._run_id, "lifelong.error", f"{type(error).__name__}: {error}"[:5000])
        self._client.set_terminated(self._run_id, "FAILED")
        self._status = "FAILED"

    # -- result ----------------------------------------------------------------------------
    def _report(self, errors: list[str]) -> dict[str, Any]:
        """``on_run_end``'s result: where the run is, whether every generation was recorded, and what failed.

        ``complete`` is true only when the run exists, every generation handed over was written (and
        registered) and the run was closed; ``unrecorded`` lists the generations that were not.
        """
        versions = sorted(r["version"] for r in self._records.values() if r.get("version") is not None)
        unrecorded = [index for index in self._given if index not in self._recorded]
        complete = self._run_id is not None and self._status == "FINISHED" and not unrecorded and self._offline is None
        result: dict[str, Any] = {
            "run_id": self._run_id,
            "experiment_id": self._experiment_id,
            "tracking_uri": self._tracking_uri,
            "registered_model": self.options.registered_model or None,
            "backpressure_seconds": round(self.backpressure_seconds, 6),
            "complete": complete,
            "unrecorded": unrecorded,
        }
        if self._run_id is None:
            first = self._offline or (_last_line(errors[0]) if errors else "unknown error")
            result["message"] = f"MLflow logging failed, nothing was recorded: {first}"
        else:
            parts = []
            if self._offline:
                parts.append(self._offline)
            if unrecorded:
                parts.append(f"generation(s) {_spans(unrecorded)} not recorded")
            if self._status is None:
                parts.append("the run was not closed (MLflow shows it RUNNING)")
            elif self._status != "FINISHED":
                parts.append(f"the run was closed as {self._status}")
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


_REMEDY = "start it, or set tracking.mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a store that is up"


def _last_line(text: str) -> str:
    """The exception line of a traceback (or the text's last line)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _spans(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2, 5"``."""
    parts, run = [], [indices[0]]
    for index in indices[1:]:
        if index == run[-1] + 1:
            run.append(index)
        else:
            parts.append(run)
            run = [index]
    parts.append(run)
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)


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
    for exp, acc in generation.accuracy.items():
        tags[f"lifelong.acc.exp_{exp}"] = f"{acc:.6g}"
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
