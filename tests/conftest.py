"""Shared fixtures: a quiet, tracker-free pipeline runner for fast kernel tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lifelong import config, pipeline
from lifelong.host import PluginHost
from tests.fixtures.kafka_broker import kafka_broker, kafka_broker_server  # noqa: F401  (pytest fixtures)
from tests.fixtures.redis_server import redis_server, redis_server_process_fixture  # noqa: F401  (pytest fixtures)

# Kernel tests pin the naive strategy so they test the loop, not the default's strategies;
# later overrides win.
QUIET = ["learner.progress=false", "learner.strategies=['naive']"]

# Small models on a shared 2-core machine: one torch thread is faster than two that contend.
torch.set_num_threads(1)


def run_pipeline(tmp_path: Path, overrides: list[str] = (), path: str | None = None, host: PluginHost | None = None):
    """Build and execute a pipeline in-process; returns (summary, runner)."""
    tracking = [] if any(o.startswith("tracking.") for o in overrides) else ["tracking.trackers=[]"]
    raw = config.load(path, [*QUIET, *tracking, *overrides])
    plan = pipeline.build(host or PluginHost(), raw, tmp_path / "dead_letters.jsonl")
    runner = pipeline.Runner(plan)
    summary = runner.execute()
    return summary, runner


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``lifelong`` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "lifelong.cli", *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def run(tmp_path):
    return lambda overrides=(), path=None, host=None: run_pipeline(tmp_path, list(overrides), path, host)


@pytest.fixture(scope="module")
def naive(tmp_path_factory):
    """``naive(setting)``: the summary of a naive run with those overrides, run once per setting and module."""
    cache = {}

    def get(setting):
        if tuple(setting) not in cache:
            cache[tuple(setting)], _ = run_pipeline(tmp_path_factory.mktemp("naive"), [*setting, "learner.strategies=['naive']"])
        return cache[tuple(setting)]

    return get
