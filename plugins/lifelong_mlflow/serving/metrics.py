"""The service's Prometheus metrics, in a registry of their own (``GET /metrics``).

Names (all prefixed ``lifelong_serve_``):

- ``requests_total{endpoint,status}``: answered requests by endpoint and HTTP status;
- ``errors_total{endpoint,kind}``: refused or failed requests: ``input`` (a 400: bad JSON or an
  input outside the contract), ``internal`` (a 500);
- ``request_seconds{endpoint}``: latency histogram, from the request's arrival at the handler to
  its answer;
- ``model_version``: the served version number (a gauge, 0 before the first load), and
  ``model_info{name,version,alias}`` (an info metric) naming it;
- ``ready``: 1 once a version is loaded;
- ``predictions_total{class}``: predicted classes;
- ``batch_rows`` and ``batch_requests``: histograms of rows and of requests per forward pass;
- ``reload_attempts_total``: versions the alias moved to that were loaded beside the served one;
  ``reload_failures_total{stage}``: those refused, by ``load`` (download or rebuild) or ``smoke``
  (the smoke test); ``reloads_total``: swaps done;
- ``poll_failures_total``: polls of the alias that failed (the store unreachable, a timeout).

A registry of its own keeps the process's default collectors (and any other library's metrics)
out of the answer, and lets tests start several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The collectors; one instance per app."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        p = "lifelong_serve_"
        self.requests = Counter(p + "requests", "answered requests", ["endpoint", "status"], registry=registry)
        self.errors = Counter(p + "errors", "refused (input) or failed (internal) requests", ["endpoint", "kind"], registry=registry)
        self.latency = Histogram(
            p + "request_seconds", "request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.version = Gauge(p + "model_version", "the served version number (0: none yet)", registry=registry)
        self.model = Info(p + "model", "the served registered model version", registry=registry)
        self.ready = Gauge(p + "ready", "1 once a version is loaded", registry=registry)
        self.predictions = Counter(p + "predictions", "predicted classes", ["class"], registry=registry)
        self.batch_rows = Histogram(p + "batch_rows", "rows per forward pass", buckets=BATCH_BUCKETS, registry=registry)
        self.batch_requests = Histogram(
            p + "batch_requests", "requests per forward pass", buckets=BATCH_BUCKETS, registry=registry
        )
        self.reload_attempts = Counter(p + "reload_attempts", "versions loaded beside the served one", registry=registry)
        self.reload_failures = Counter(p + "reload_failures", "versions refused", ["stage"], registry=registry)
        self.reloads = Counter(p + "reloads", "versions swapped in", registry=registry)
        self.poll_failures = Counter(p + "poll_failures", "failed polls of the alias", registry=registry)
        for stage in ("load", "smoke"):  # present at 0, so a dashboard sees the series before a failure
            self.reload_failures.labels(stage=stage)

    def served(self, name: str, version: str, alias: str | None) -> None:
        self.version.set(float(version))
        self.model.info({"name": name, "version": version, "alias": alias or ""})
        self.ready.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
