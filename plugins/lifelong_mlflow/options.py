"""Options of the ``mlflow`` tracker (kept apart from the tracker so listing plugins never imports MLflow)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

_ALIAS = re.compile(r"^[\w\-]{1,255}$")
ON_UNREACHABLE = ("fail", "outbox", "continue")


@dataclass
class MLflowOptions:
    tracking_uri: str = field(
        default="",
        metadata={
            "help": "MLflow tracking URI (sqlite:///…, http://host:5000, file:///…); empty: MLflow's own default "
            "(MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)"
        },
    )
    experiment: str = field(
        default="lifelong", metadata={"help": "experiment the run is created in (created if missing)"}
    )
    registered_model: str = field(
        default="lifelong",
        metadata={"help": "registered model that gets one version per generation; empty: log, don't register"},
    )
    run_name: str = field(default="", metadata={"help": "MLflow run name; empty: MLflow picks one"})
    alias: str = field(
        default="latest",
        metadata={
            "help": "alias moved to each new version; 'latest' is MLflow's built-in alias for the newest version "
            "(nothing to move); empty: none"
        },
    )
    flush_seconds: float = field(
        default=5.0,
        metadata={"help": "seconds between batched metric uploads; boundaries and the run end always flush"},
    )
    max_pending_generations: int = field(
        default=4,
        metadata={
            "help": "generations waiting to be written to the outbox at most; at this many, a boundary waits for "
            "the disk to take one (each holds CPU copies of the model and strategy state, so memory stays bounded); "
            "the total wait is reported as backpressure_seconds. MLflow itself never holds training back"
        },
    )
    on_unreachable: Literal["fail", "outbox", "continue"] = field(
        default="fail",
        metadata={
            "help": "what a run does when the preflight (before training: reach the store, create or resume the "
            "run, write its params) fails or times out: 'fail' stops with exit status 2 and nothing trained; "
            "'outbox' trains and keeps everything in the outbox until the store answers (the run is created "
            "then); 'continue' trains without recording anything (the summary says so and the run is incomplete). "
            "Outages after the preflight never stop training: what is recorded waits in the outbox"
        },
    )
    outbox: str = field(
        default="",
        metadata={
            "help": "directory of the durable outbox the run's MLflow records wait in until a writer process sends "
            "them; empty: <checkpoint dir>/outbox when [checkpoint] dir is set, else <sqlite file>.outbox beside a "
            "sqlite store, else $XDG_CACHE_HOME/lifelong/outbox/<hash of the tracking URI>. What a run could not "
            "send is sent by the next run using the same outbox, or by `lifelong models drain`"
        },
    )
    preflight_seconds: float = field(
        default=10.0,
        metadata={
            "help": "the longest the preflight may take; creating a fresh sqlite store's schema (once, ~10 s) is "
            "not counted. Each request in it times out after 5 s and is retried once, unless "
            "MLFLOW_HTTP_REQUEST_TIMEOUT or MLFLOW_HTTP_REQUEST_MAX_RETRIES are set"
        },
    )
    drain_seconds: float = field(
        default=120.0,
        metadata={
            "help": "the longest the run waits at its end for the writer process to send the outbox to MLflow (and "
            "during training for a free generation slot); past it what is not sent stays in the outbox for the "
            "next start, the generations not yet registered are listed as unrecorded and complete = false"
        },
    )
    pip_requirements: list[str] = field(
        default_factory=list,
        metadata={
            "help": "extra pip requirements stored with each model, e.g. the package of a third-party model plugin"
        },
    )

    def check(self) -> None:
        if not self.experiment.strip():
            raise ValueError("experiment must not be empty")
        if any(c in self.registered_model for c in "/:"):
            raise ValueError(f"registered_model cannot contain '/' or ':', got {self.registered_model!r}")
        if self.alias and (not _ALIAS.match(self.alias) or re.fullmatch(r"[vV]\d+", self.alias)):
            raise ValueError(
                f"alias must be letters, digits, '_' or '-' and not look like a version (v1), got {self.alias!r}"
            )
        if not math.isfinite(self.flush_seconds) or self.flush_seconds < 0:
            raise ValueError(f"flush_seconds must be a finite number, at least 0, got {self.flush_seconds}")
        if self.on_unreachable not in ON_UNREACHABLE:
            raise ValueError(f"on_unreachable must be one of {', '.join(ON_UNREACHABLE)}, got {self.on_unreachable!r}")
        for name in ("preflight_seconds", "drain_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number of seconds above 0, got {value}")
        if self.max_pending_generations < 1:
            raise ValueError(f"max_pending_generations must be at least 1, got {self.max_pending_generations}")
