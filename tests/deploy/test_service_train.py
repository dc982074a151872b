"""``deploy/service.py train``, the trainer's entry point in compose and Kubernetes: a first start runs a
new session, a restart on the same checkpoint volume resumes it (``--resume``) instead of refusing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.postgres import LAUNCHER

PIPELINE = """
[stream]
reader = "split-digits"
experiences = 2
[learner]
strategies = ["naive"]
epochs = 1
progress = false
[tracking]
trackers = []
"""


def train(tmp_path: Path, *run_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), "train", "--checkpoints", str(tmp_path / "ckpt"), str(tmp_path / "p.toml"),
         *run_args],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.slow
def test_a_restarted_trainer_resumes_from_its_checkpoint_volume(tmp_path):
    (tmp_path / "p.toml").write_text(PIPELINE)
    first = train(tmp_path, "--set", "learner.max_batches=6")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "--resume" not in first.stderr and "ckpt-000000000006" in first.stdout
    again = train(tmp_path, "--set", "learner.max_batches=12")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming the session checkpointed in" in again.stderr
    assert "--resume" in again.stderr.split("+ ", 1)[1].splitlines()[0]
    assert "ckpt-000000000012" in again.stdout  # without --resume, a folder holding checkpoints is refused (exit 2)
