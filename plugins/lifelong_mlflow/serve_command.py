"""``lifelong serve``: the scoring service that follows a registered model alias (see docs/serving.md).

The command only parses and checks its options (cheap); the web stack, MLflow and the model are
imported and loaded when it runs (:mod:`lifelong_mlflow.serving.app`). One process, one uvicorn
worker: the micro-batcher needs every request in one event loop to batch them.

Exit status: 0 after SIGTERM or SIGINT (in-flight requests are answered first); 2, with one
paragraph and no traceback, when the model cannot be served at start-up (a bad URI, no such store,
model, alias or version, or a first version that fails to load or its smoke test).
"""

from __future__ import annotations

import os
import signal
import sys

import click


@click.command()
@click.argument("model_uri")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--tracking-uri", default=None, metavar="URI", help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--poll-seconds", default=2.0, show_default=True, type=click.FloatRange(min=0.05), help="How often the alias is resolved again.")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1), help="Most rows scored in one forward pass.")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=click.FloatRange(min=0), help="Longest a request waits for others to share its forward pass.")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the model (cpu, cuda, cuda:1 …).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity (stderr).")
def serve(
    model_uri: str,
    host: str,
    port: int,
    tracking_uri: str | None,
    poll_seconds: float,
    max_batch: int,
    max_wait_ms: float,
    device: str,
    log_level: str,
) -> None:
    """Serve MODEL_URI over HTTP: models:/NAME@ALIAS (followed live: a moved alias is hot-swapped)
    or models:/NAME/VERSION (one fixed version).

    Endpoints: POST /predict, GET /health, /ready, /version, /metrics. See docs/serving.md.
    """
    from lifelong.cli import _fail
    from lifelong.errors import UserError

    try:
        _check_web_stack()
        _check_device(device)
        from lifelong_mlflow.serving.source import ModelRef, _check_store_exists, bound_store_calls

        ref = ModelRef.parse(model_uri)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            _check_store_exists(uri)
    except UserError as exc:
        _fail(str(exc))
    bound_store_calls()
    _run(ref, tracking_uri, host, port, poll_seconds, max_batch, max_wait_ms / 1000.0, device, log_level)


def _check_web_stack() -> None:
    """The extra ``serve`` (prometheus-client; fastapi and uvicorn usually come with MLflow) is installed."""
    import importlib.util

    from lifelong.errors import UserError

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"lifelong serve needs {', '.join(missing)}: pip install '.[serve]' in the lifelong checkout "
            "(or pip install fastapi uvicorn prometheus-client)"
        )


def _check_device(device: str) -> None:
    import torch

    from lifelong.errors import UserError

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device {device!r} is not a torch device: {exc}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available in this process (torch {torch.__version__})")


def _run(ref, tracking_uri, host, port, poll_seconds, max_batch, max_wait_s, device, log_level) -> None:
    import logging

    import uvicorn

    from lifelong.cli import _fail
    from lifelong_mlflow.serving.app import Service, create_app
    from lifelong_mlflow.serving.source import Source

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # MLflow sets its loggers' level when imported (on the loading thread): this variable is what it reads.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING" if log_level in ("info", "warning") else log_level.upper())
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # urllib3 warns at each retry of an unreachable store; the service logs the failed poll itself.
    logging.getLogger("urllib3").setLevel(max(logging.ERROR, logging.getLogger().level))
    server: uvicorn.Server | None = None

    def open_source() -> Source:
        source = Source(ref, tracking_uri, device)
        # A failed database call is logged by MLflow with a full traceback, at every poll while the
        # store is down; the service logs one line per failed poll with the same error instead.
        if log_level != "debug":
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        return source

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    service = Service(
        ref,
        open_source,
        poll_seconds=poll_seconds,
        max_batch=max_batch,
        max_wait_s=max_wait_s,
        on_fatal=stop,
    )
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # a log line per request would cost more than scoring it
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises a SIGTERM/SIGINT it handled once it has shut down gracefully; these handlers
    # turn that into a clean exit (status 0) instead of death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        server.run()
    except SystemExit as exc:
        if exc.code not in (0, None) and not server.started:  # uvicorn exits 1 when it cannot bind
            _fail(f"the server could not listen on {host}:{port} (the reason is logged above)")
        raise
    if service.fatal:
        _fail(service.fatal)
