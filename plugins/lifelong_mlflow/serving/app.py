"""The scoring service: a FastAPI app serving one version at a time, following an alias live.

Endpoints:

- ``POST /predict``: ``{"instances": [...], "task": …, "probabilities": false}`` →
  ``{"predictions": [...], "version": "N", "classes": [...]}``, plus ``"probabilities"`` (one row
  per instance, in ``classes`` order) when asked for in the body or with ``?probabilities=true``.
  An anomaly detector answers ``{"scores": [...], "anomaly": [true|false, ...], "threshold": t,
  "version": "N"}``: each row's score and its flag at the threshold stored in the generation
  (``threshold`` null while it was never calibrated, when nothing is flagged).
  Instances follow :mod:`lifelong_mlflow.contract`; a refusal is a 400 ``{"error": message}``.
- ``GET /health``: 200 while the process runs. ``GET /ready``: 200 once a version is loaded, else 503.
- ``GET /version``: the served version, the reference followed, when it was loaded, its
  ``lifelong.*`` tags and its input contract.
- ``GET /metrics``: Prometheus text (:mod:`lifelong_mlflow.serving.metrics`).

**Life of the service.** The port is bound first, so ``/health`` answers while the first version
loads (``/ready`` answers 503 until then). If that first version cannot be resolved or loaded the
service stops and the command exits with status 2 (``Service.fatal`` holds the message). Then, for
an alias, a background task resolves it every ``poll_seconds``; when it names another version, that
version is downloaded, rebuilt and smoke-tested on a thread beside the served one, and swapped in
by one reference assignment. Requests already checked against the old version are scored by it.
A version that fails to load or its smoke test is never swapped in: the failure is logged and
counted, and that version is not tried again until the alias moves elsewhere (a rollback to the
served version, or another version). A poll that fails (store unreachable, timeout) is logged and
counted (logged when it starts, then once a minute, and when the store answers again); the served
version keeps serving. Each poll and each load is bounded by a timeout on top
of MLflow's own per-request timeout.

**Garbage collection.** Once a version serves, every object alive is frozen out of the cyclic
collector (``gc.freeze``): with torch and MLflow loaded a full collection walks about a million
objects and, under load, stalled every request for ~250 ms (the bench's max latency). Versions
hold no reference cycles, so a replaced one is still freed by reference counting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from lifelong.objective import calibrated
from lifelong_mlflow.contract import PROBABILITIES, TASK, InputError
from lifelong_mlflow.serving.batcher import MicroBatcher
from lifelong_mlflow.serving.metrics import Metrics
from lifelong_mlflow.serving.scorer import SmokeTestFailed
from lifelong_mlflow.serving.source import Loaded, ModelRef, Source, Version, describe_failure

log = logging.getLogger("lifelong.serve")
POLL_TIMEOUT_S = 30.0  # one resolve of the alias, all retries included
LOAD_TIMEOUT_S = 600.0  # one download + rebuild + smoke test
FAILURE_LOG_SECONDS = 60.0  # while the store stays unreachable, one log line a minute (every failure is counted)
JSON = "application/json"


class Service:
    """The served version and its replacement; see the module docstring.

    ``source`` is made on a thread at start-up (``make_source``: importing MLflow takes seconds,
    during which ``/health`` already answers). ``on_fatal`` is called when the first version
    cannot be served (the command stops the server with it).
    """

    def __init__(
        self,
        ref: ModelRef,
        make_source: Callable[[], Source],
        poll_seconds: float = 2.0,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        on_fatal: Callable[[], None] | None = None,
    ):
        self.ref = ref
        self.make_source = make_source
        self.poll_seconds = poll_seconds
        self.metrics = Metrics()
        self.batcher = MicroBatcher(max_batch, max_wait_s, self.metrics)
        self.on_fatal = on_fatal
        self.current: Loaded | None = None
        self.source: Source | None = None
        self.fatal: str | None = None
        self._refused: str | None = None  # a version that failed; not tried again until the alias moves
        self._failing_since: float | None = None  # when polls started failing (None: the last one worked)
        self._failure_logged = 0.0
        self._task: asyncio.Task | None = None
        # Store calls and loads run here, never on the forward-pass worker.
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lifelong-store")

    async def start(self) -> None:
        self.batcher.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lifelong-follow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.batcher.stop()
        self._io.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._io, fn, *args), timeout)

    async def _run(self) -> None:
        try:
            self.source = await self._call(self.make_source, timeout=POLL_TIMEOUT_S)
            version = await self._call(self.source.resolve, timeout=POLL_TIMEOUT_S)
            log.info("loading %s: version %s", self.ref, version.version)
            loaded = await self._call(self.source.load, version, timeout=LOAD_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nothing to serve: the command exits with status 2
            uri = self.source.tracking_uri if self.source else "(not opened)"
            if isinstance(exc, TimeoutError):
                exc = TimeoutError("the store did not answer in time")
            self.fatal = describe_failure(self.ref, uri, exc)
            log.error(self.fatal)
            if self.on_fatal:
                self.on_fatal()
            return
        self._swap(loaded)
        if self.ref.alias:
            await self._follow()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                version = await self._call(self.source.resolve, timeout=POLL_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._poll_failed(exc)
                continue
            if self._failing_since is not None:
                log.info("%s answers again (polls failed for %.0f s)", self.ref, time.monotonic() - self._failing_since)
                self._failing_since = None
            if version.version == self.current.version.version:
                self._refused = None  # the alias came back: a refused version may be tried again later
                self.current.version.tags = version.tags  # e.g. a gate verdict tagged after the move
                continue
            if version.version == self._refused:
                continue
            self._refused = None
            await self._reload(version)

    def _poll_failed(self, exc: Exception) -> None:
        """Count every failed poll; log the first of a run of them, then at most once a minute."""
        self.metrics.poll_failures.inc()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = self._failure_logged = now
        elif now - self._failure_logged < FAILURE_LOG_SECONDS:
            return
        else:
            self._failure_logged = now
        log.warning(
            "polling %s failed (still serving version %s; failing for %.0f s): %s",
            self.ref, self.current.version.version, now - self._failing_since, _one_line(exc),
        )

    async def _reload(self, version: Version) -> None:
        self.metrics.reload_attempts.inc()
        served = self.current.version.version
        log.info("%s moved to version %s: loading it beside version %s", self.ref, version.version, served)
        try:
            loaded = await self._call(self.source.load, version, timeout=LOAD_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stage = "smoke" if isinstance(exc, SmokeTestFailed) else "load"
            self.metrics.reload_failures.labels(stage=stage).inc()
            self._refused = version.version
            what = "failed its smoke test" if stage == "smoke" else "could not be loaded"
            log.error(
                "version %s %s; still serving version %s (not retried until %s moves): %s",
                version.version, what, served, self.ref, _one_line(exc),
            )
            return
        self._swap(loaded)

    def _swap(self, loaded: Loaded) -> None:
        if self.current is None:
            gc.collect()  # before the first version serves, while a full collection stalls nobody
        previous, self.current = self.current, loaded  # one assignment: the next request sees the new version
        # Everything alive now (torch, MLflow, the models: ~10^6 objects) leaves the cyclic collector's
        # view: a full collection under load otherwise stalls every request for ~250 ms. A replaced
        # version is still freed, by reference counting, once its last batch is done.
        gc.freeze()
        self.metrics.served(loaded.version.name, loaded.version.version, self.ref.alias)
        if previous is not None:
            self.metrics.reloads.inc()
            log.info("now serving version %s (was %s; loaded in %.2f s)", loaded.version.version, previous.version.version, loaded.load_seconds)
        else:
            log.info("serving %s: version %s (loaded in %.2f s)", self.ref, loaded.version.version, loaded.load_seconds)


def detector_answer(scores: Any, loaded: Any) -> dict[str, Any]:
    """An anomaly detector's answer: each row's score and flag (score > the generation's threshold)."""
    threshold = loaded.scorer.threshold
    flags = (scores > threshold).tolist()
    return {
        "scores": scores.tolist(),
        "anomaly": flags,
        "threshold": calibrated(threshold),
        "version": loaded.version.version,
    }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:500]}"


def _answer(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type=JSON)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
        return value.lower() in ("true", "1")
    raise InputError(f"{where} must be true or false, got {value!r}")


def create_app(service: Service) -> FastAPI:
    """The FastAPI app around ``service`` (started and stopped with the app's lifespan)."""
    metrics = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="lifelong serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    # Plain Starlette routes (app.add_route): the handlers read the raw request themselves, so
    # FastAPI's per-request dependency solving and response validation would be pure overhead.

    def record(endpoint: str, started: float, response: Response) -> Response:
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    def refuse(endpoint: str, started: float, message: str, status: int = 400) -> Response:
        metrics.errors.labels(endpoint=endpoint, kind="input" if status < 500 else "internal").inc()
        return record(endpoint, started, _answer({"error": message}, status))

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        with service.batcher.arriving():
            loaded = service.current
            if loaded is None:
                return record("/predict", started, _answer({"error": "no model is loaded yet"}, 503))
            try:
                body = await request.body()
                try:
                    payload = json.loads(body)
                except ValueError as exc:
                    raise InputError(f"the body is not JSON: {exc}") from None
                if not isinstance(payload, dict) or "instances" not in payload:
                    raise InputError('expected a JSON object {"instances": [...]} (optional: "task", "probabilities")')
                unknown = sorted(set(payload) - {"instances", TASK, PROBABILITIES})
                if unknown:
                    raise InputError(f"unknown keys {unknown}: the body takes \"instances\", \"task\" and \"probabilities\"")
                instances = payload["instances"]
                if not isinstance(instances, list) or not instances:
                    raise InputError('"instances" must be a non-empty list, one entry per instance')
                want = _flag(payload.get(PROBABILITIES, request.query_params.get(PROBABILITIES, False)), PROBABILITIES)
                rows = loaded.scorer.contract.check(instances, payload.get(TASK))
            except InputError as exc:
                return refuse("/predict", started, str(exc))
            except Exception as exc:  # a check that broke on an input nobody foresaw: still a JSON answer
                log.exception("checking a request failed")
                return refuse("/predict", started, f"the request could not be checked: {_one_line(exc)}", 500)
            future = service.batcher.submit(rows, loaded)
        try:
            probabilities = await future
        except Exception as exc:  # the forward pass failed: not the client's fault
            log.exception("forward pass failed on version %s", loaded.version.version)
            return refuse("/predict", started, f"scoring failed: {_one_line(exc)}", 500)
        contract = loaded.scorer.contract
        if loaded.scorer.detector:
            answer = detector_answer(probabilities, loaded)
            flagged = sum(answer["anomaly"])
            metrics.predictions.labels(**{"class": "anomaly"}).inc(flagged)
            metrics.predictions.labels(**{"class": "normal"}).inc(len(answer["anomaly"]) - flagged)
            return record("/predict", started, _answer(answer))
        labels = contract.labels(probabilities.argmax(axis=1)).tolist()
        answer: dict[str, Any] = {
            "predictions": labels,
            "version": loaded.version.version,
            "classes": contract.class_names or list(range(contract.num_classes)),
        }
        if want:
            answer["probabilities"] = probabilities.tolist()
        for label, count in collections.Counter(labels).items():
            metrics.predictions.labels(**{"class": str(label)}).inc(count)
        return record("/predict", started, _answer(answer))

    async def health(request: Request) -> Response:
        started = time.perf_counter()
        return record("/health", started, _answer({"status": "ok"}))

    async def ready(request: Request) -> Response:
        started = time.perf_counter()
        loaded = service.current
        if loaded is None:
            return record("/ready", started, _answer({"ready": False, "reason": "loading the first version"}, 503))
        return record("/ready", started, _answer({"ready": True, "version": loaded.version.version}))

    async def version(request: Request) -> Response:
        started = time.perf_counter()
        loaded = service.current
        if loaded is None:
            return record("/version", started, _answer({"error": "no model is loaded yet", "following": str(service.ref)}, 503))
        v, contract = loaded.version, loaded.scorer.contract
        info = loaded.scorer.spec.info
        return record(
            "/version",
            started,
            _answer(
                {
                    "name": v.name,
                    "version": v.version,
                    "alias": service.ref.alias,
                    "following": str(service.ref),
                    "model_uri": f"models:/{v.name}/{v.version}",
                    "run_id": v.run_id,
                    "loaded_at": datetime.fromtimestamp(loaded.loaded_at, timezone.utc).isoformat(),
                    "tags": v.tags,
                    "model": loaded.scorer.spec.name,
                    "input": {
                        "shape": list(contract.input_shape),
                        "feature_names": contract.feature_names,
                        "num_tasks": contract.num_tasks,
                        "scenario": info.scenario,
                    },
                    "classes": contract.class_names or list(range(contract.num_classes)),
                }
            ),
        )

    async def prometheus(request: Request) -> Response:
        started = time.perf_counter()
        response = Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
        return record("/metrics", started, response)

    for path, handler, method in (
        ("/predict", predict, "POST"),
        ("/health", health, "GET"),
        ("/ready", ready, "GET"),
        ("/version", version, "GET"),
        ("/metrics", prometheus, "GET"),
    ):
        app.add_route(path, handler, methods=[method])
    return app
