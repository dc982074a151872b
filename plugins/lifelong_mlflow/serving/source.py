"""Where served versions come from: a ``models:/`` URI resolved and loaded through an ``MlflowClient``.

``models:/NAME@ALIAS`` follows the alias (resolved again at every poll); ``models:/NAME/VERSION``
is one fixed version. A version is loaded **without** ``mlflow.pyfunc.load_model``, which would
execute the model-from-code file at every load (leaking a module per reload) and download the whole
model directory, strategies' state included. Instead the version's ``MLmodel`` is read for the
paths of its two artifacts (``model.json``, ``weights.safetensors``; see
:mod:`lifelong_mlflow.pyfunc`), those two files alone are downloaded into a temporary directory, and
the generation is rebuilt from them (:class:`~lifelong_mlflow.serving.scorer.Scorer`).

Every call to the store is bounded: MLflow's HTTP client honours ``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, which
:func:`bound_store_calls` sets to 10 s, 1 retry and 1 s (unless the user did)
before the first client is made; the server additionally bounds each poll and load as a whole.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lifelong.errors import UserError
from lifelong_mlflow.registry import WEIGHTS_DIGEST_TAG

# MLflow's defaults (120 s per request, 7 retries with exponential back-off) could hold a poll for
# minutes; the next poll is the retry that matters, so one quick retry is enough.
HTTP_TIMEOUT_S = "10"
HTTP_MAX_RETRIES = "1"
HTTP_BACKOFF_FACTOR = "1"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


def bound_store_calls() -> None:
    """Per-request timeout and retries of MLflow's HTTP client for this process, and no download
    progress bars (the user's own settings of these variables win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_MAX_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", HTTP_BACKOFF_FACTOR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file in a service log


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @staticmethod
    def parse(uri: str) -> ModelRef:
        match = _URI.match(uri.strip())
        if not match:
            raise UserError(
                f"cannot serve {uri!r}: give a registered model as models:/NAME@ALIAS (followed live, e.g. "
                "models:/lifelong@champion) or models:/NAME/VERSION (one fixed version)"
            )
        return ModelRef(match["name"], match["alias"], match["version"])

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


@dataclass
class Version:
    """One registered version, as resolved: what ``/version`` reports about it."""

    name: str
    version: str
    source: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Loaded:
    """A version loaded and smoke-tested: the scorer and where it came from."""

    version: Version
    scorer: Any  # lifelong_mlflow.serving.scorer.Scorer
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0


class Source:
    """Resolves and loads the versions of one ``ModelRef`` from one tracking URI."""

    def __init__(self, ref: ModelRef, tracking_uri: str | None, device: str = "cpu"):
        import mlflow
        from mlflow import MlflowClient

        self.ref = ref
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        _check_store_exists(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.device = device
        self._components = None

    def resolve(self) -> Version:
        """The version the reference points at now (one store call)."""
        if self.ref.alias:
            found = self.client.get_model_version_by_alias(self.ref.name, self.ref.alias)
        else:
            found = self.client.get_model_version(self.ref.name, self.ref.version)
        return Version(
            name=found.name,
            version=str(found.version),
            source=found.source,
            run_id=found.run_id,
            tags={k: v for k, v in (found.tags or {}).items() if k.startswith("lifelong.")},
        )

    def load(self, version: Version) -> Loaded:
        """Download ``version``'s spec and weights, rebuild it and smoke-test it; raises on any failure."""
        from lifelong_mlflow.serving.scorer import Scorer

        started = time.perf_counter()
        if self._components is None:  # the plugin host, built once: every version is rebuilt with it
            from lifelong.components import Components

            self._components = Components.default()
        with tempfile.TemporaryDirectory(prefix="lifelong-serve-") as tmp:
            spec, weights = self._download(version, Path(tmp))
            verify_weights(weights, version.tags.get(WEIGHTS_DIGEST_TAG), f"version {version.version} of {version.name!r}")
            scorer = Scorer.from_files(spec, weights, self.device, self._components)
        scorer.smoke_test()
        return Loaded(version, scorer, load_seconds=time.perf_counter() - started)

    def _download(self, version: Version, into: Path) -> tuple[Path, Path]:
        import yaml
        from mlflow.artifacts import download_artifacts

        root = self.client.get_model_version_download_uri(version.name, version.version).rstrip("/")

        def fetch(relative: str) -> Path:
            target = into / Path(relative).parent
            target.mkdir(parents=True, exist_ok=True)
            return Path(
                download_artifacts(
                    artifact_uri=f"{root}/{relative}",
                    dst_path=str(target),
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri,
                )
            )

        mlmodel = yaml.safe_load(fetch("MLmodel").read_text()) or {}
        artifacts = (mlmodel.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
        paths = {key: (artifacts.get(key) or {}).get("path") for key in ("spec", "weights")}
        if not all(paths.values()):
            raise ValueError(
                f"version {version.version} of {version.name!r} is not a lifelong generation: its MLmodel names no "
                "'spec' and 'weights' artifacts"
            )
        return fetch(paths["spec"]), fetch(paths["weights"])


def verify_weights(path: Path, expected: str | None, what: str) -> None:
    """Refuse weights whose SHA-256 differs from the one the registry recorded when they were logged.

    The registry (a database) and the artifact store (files, a bucket) are separate: weights swapped
    in the artifact store after registration no longer match the version's tag. A version without
    the tag (registered by an older lifelong, or by hand) is not checked.
    """
    if not expected:
        return
    from lifelong_mlflow.pyfunc import file_digest

    if file_digest(path) != expected:
        raise ValueError(
            f"the weights of {what} do not match the SHA-256 recorded at registration ({WEIGHTS_DIGEST_TAG}): "
            "the artifact was changed after it was registered; not serving it"
        )


def _check_store_exists(tracking_uri: str) -> None:
    """Refuse a local store that is not there: MLflow would create an empty one and then report the
    model missing, leaving a stray database behind a typo."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///") :] if tracking_uri.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:" and not Path(path).exists():
            raise UserError(f"no MLflow store at {tracking_uri!r}: the file {path!r} does not exist (check --tracking-uri)")
    elif parsed.scheme in ("", "file") and not tracking_uri.startswith("databricks"):
        path = parsed.path if parsed.scheme == "file" else tracking_uri
        if not Path(path).exists():
            raise UserError(f"no MLflow store at {tracking_uri!r}: the directory does not exist (check --tracking-uri)")


def describe_failure(ref: ModelRef, tracking_uri: str, exc: BaseException) -> str:
    """One paragraph for a reference that cannot be served, without a traceback."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MlflowException):
        reason = exc.message
        if ref.alias and "alias" in reason and "not found" in reason:
            reason = f"the registered model {ref.name!r} has no alias {ref.alias!r}"
        elif "Registered Model with name" in reason and "not found" in reason:
            reason = f"there is no registered model {ref.name!r}"
        elif "Model Version" in reason and "not found" in reason:
            reason = f"the registered model {ref.name!r} has no version {ref.version}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return (
        f"cannot serve {ref} from the MLflow store {tracking_uri}: {reason}. Check the name and alias "
        "(lifelong models list shows the registered versions and their aliases) and --tracking-uri"
    )
