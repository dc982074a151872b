"""Sessions: kill -9 at random points and resume bit-identically; refusals; corrupt checkpoints; signals."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from lifelong import checkpoint, config, pipeline
from lifelong.background import BackgroundWriter
from lifelong.host import PluginHost
from tests.conftest import QUIET, cli

# The built-in pipeline (replay + EWC, MLP, class-incremental Split-Digits) trained long enough to
# be killed several times: 20 epochs per experience, a checkpoint every 5 stream batches.
SESSION = [
    "learner.progress=false",
    "tracking.trackers=[]",
    "learner.epochs=20",
    "checkpoint.every_batches=5",
    "checkpoint.keep=2",
]


def lifelong(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lifelong.cli", *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def settings(directory: Path) -> list[str]:
    return [arg for s in [*SESSION, f"checkpoint.dir='{directory}'"] for arg in ("--set", s)]


def final_state(directory: Path) -> dict[str, torch.Tensor]:
    return checkpoint.latest(directory).model_state


def comparable(summary: dict) -> dict:
    keep = ("index", "parent", "experiences", "experiences_covered", "samples", "offsets")
    return {
        "accuracy_matrix": summary["accuracy_matrix"],
        "initial_accuracy": summary["initial_accuracy"],
        "samples_seen": summary["samples_seen"],
        "trained_samples": summary["trained_samples"],
        "prequential_accuracy": summary["prequential_accuracy"],
        "generations": [{k: g[k] for k in keep} for g in summary["generations"]],
        # the promotion gate's verdicts, where it is on: its champion must survive the resume
        "promotion": [g.get("promotion") for g in summary["generations"]],
    }


def wait_for_checkpoint(directory: Path, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checkpoint.checkpoints(directory) or process.poll() is not None:
            return process.poll() is None
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {directory} after {timeout} s")


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path):
    reference = lifelong("run", *settings(tmp_path / "ref"), "--summary", str(tmp_path / "ref.json"), cwd=tmp_path)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err

    interrupted = tmp_path / "killed"
    rng = random.Random(15)
    kills = 0
    args = ["run", *settings(interrupted), "--summary", str(tmp_path / "killed.json")]
    for attempt in range(8):
        process = lifelong(*args, *(["--resume"] if attempt else []), cwd=tmp_path)
        try:
            if kills < 3 and wait_for_checkpoint(interrupted, process):
                time.sleep(rng.uniform(0.0, 1.5))
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate(timeout=60)
                if process.returncode == -signal.SIGKILL:
                    kills += 1
                    continue
            out, err = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        assert process.returncode == 0, err
        break
    assert kills == 3, f"only {kills} kills landed before the run finished"
    assert "resumed session" in err

    expected = json.loads((tmp_path / "ref.json").read_text())
    actual = json.loads((tmp_path / "killed.json").read_text())
    assert actual["session"] == actual["generations"][0]["session"]  # one session across 4 processes
    assert comparable(actual) == comparable(expected)
    reference_weights, resumed_weights = final_state(tmp_path / "ref"), final_state(interrupted)
    assert reference_weights.keys() == resumed_weights.keys()
    for name, value in reference_weights.items():
        assert torch.equal(value, resumed_weights[name]), f"{name} differs after 3 kills and resumes"


@pytest.mark.slow
def test_sigterm_finishes_the_batch_checkpoints_and_exits_non_zero(tmp_path):
    directory = tmp_path / "ckpt"
    process = lifelong("run", *settings(directory), cwd=tmp_path)
    try:
        assert wait_for_checkpoint(directory, process)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: finishing the batch" in err and "resume with --resume" in err
    newest = checkpoint.latest(directory)
    assert err.strip().endswith(f"(checkpoint {newest.path})")
    resumed = cli("run", *settings(directory), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed session {newest.session} from {newest.path}" in resumed.stderr


def test_without_resume_a_used_checkpoint_directory_is_refused(tmp_path):
    (tmp_path / "ckpt" / "ckpt-000000000005").mkdir(parents=True)
    result = cli("run", "--set", "tracking.trackers=[]", "--set", f"checkpoint.dir='{tmp_path / 'ckpt'}'", cwd=tmp_path)
    assert result.returncode == 2
    assert "checkpoint.dir" in result.stderr and "--resume" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "ckpt" / "ckpt-000000000005").is_dir() and not (tmp_path / "mlflow.db").exists()


def test_resume_needs_a_checkpoint_directory(tmp_path):
    result = cli("run", "--resume", "--set", "tracking.trackers=[]", cwd=tmp_path)
    assert result.returncode == 2 and "checkpoint.dir" in result.stderr and "--resume" in result.stderr


# -- in-process: resume from every checkpoint of one run ---------------------------------------------------
def build(overrides: list[str], tmp: Path, resume: bool = False) -> pipeline.Runner:
    raw = config.load(None, [*QUIET, "tracking.trackers=[]", *overrides])
    return pipeline.Runner(pipeline.build(PluginHost(), raw, tmp / "dead_letters.jsonl", resume=resume))


def resume_from_each_checkpoint(tmp_path: Path, overrides: list[str]) -> tuple[dict, dict, list]:
    """One run checkpointing often, then one resumed run from each of its checkpoints alone."""
    directory = tmp_path / "all"
    runner = build([*overrides, f"checkpoint.dir='{directory}'", "checkpoint.keep=1000"], tmp_path)
    # A due checkpoint waits while the writer is busy, so how many a run writes depends on the
    # machine's load; here every due checkpoint is queued, so each test always resumes from the same set.
    with mock.patch.object(BackgroundWriter, "busy", lambda self: False):
        summary = runner.execute()
    final = {k: v.clone() for k, v in runner.model.state_dict().items()}
    resumed = []
    found = checkpoint.checkpoints(directory)[:-1]  # the last is the end: nothing left to resume
    assert len(found) >= 3
    for path in found:
        alone = tmp_path / path.name
        shutil.copytree(directory / "testsets", alone / "testsets")
        shutil.copytree(path, alone / path.name)
        again = build([*overrides, f"checkpoint.dir='{alone}'"], tmp_path, resume=True)
        resumed.append((path.name, again.execute(), again.model.state_dict()))
    return summary, final, resumed


def assert_identical(summary: dict, final: dict, resumed: list) -> None:
    for name, again, state in resumed:
        assert comparable(again) == comparable(summary), f"resumed from {name}"
        assert all(torch.equal(final[k], state[k]) for k in final), f"weights differ when resumed from {name}"


def test_resume_from_any_checkpoint_with_epochs_window_boundaries_and_every_strategy(tmp_path):
    overrides = [
        "learner.strategies=['replay', 'ewc', 'lwf', 'l2']",
        "learner.epochs=2",
        "boundary.detector='window'",
        "boundary.batches=7",
        "checkpoint.every_batches=4",
        "promotion.max_forgetting=0.02",
    ]
    summary, final, resumed = resume_from_each_checkpoint(tmp_path, overrides)
    assert len(summary["generations"]) > 5
    verdicts = [g["promotion"]["passed"] for g in summary["generations"]]
    assert True in verdicts and False in verdicts  # the champion changes within the run, so its restore matters
    assert_identical(summary, final, resumed)


@pytest.mark.parametrize(
    "boundaries",
    [
        # a checkpoint after every batch, one at the last batch of each experience: its held-out rows
        # are not handed out yet, so the position must let the reader collect them again
        ["boundary.detector='experience-change'", "checkpoint.every_batches=1"],
        # one boundary at the very end: passed experiences' held-out sets must travel in the checkpoint
        ["boundary.detector='window'", "boundary.batches=1000", "checkpoint.every_batches=3"],
    ],
    ids=["experience-ends", "no-boundary-until-the-end"],
)
def test_resume_a_csv_stream_with_held_out_rows_and_dead_letters(tmp_path, boundaries):
    rng = np.random.default_rng(0)
    lines = ["a,b,c,label,exp"]
    for i in range(600):
        exp = i // 200
        label = int(rng.integers(0, 3))
        a, b, c = rng.normal(label + exp, 1.0, 3)
        row = f"{a:.5f},{b:.5f},{c:.5f},{label},{exp}"
        if i % 37 == 5:
            row = f"{a:.5f},oops,{c:.5f},{label},{exp}"  # a dead letter
        lines.append(row)
    (tmp_path / "stream.csv").write_text("\n".join(lines) + "\n")
    overrides = [
        "stream.reader='csv'",
        f"stream.path='{tmp_path / 'stream.csv'}'",
        "stream.experience='exp'",
        "stream.test_fraction=0.2",
        "model.name='mlp'",
        "model.hidden=[16]",
        "learner.strategies=['replay']",
        "learner.batch_size=16",
        "promotion.max_forgetting=0.1",  # held-out sets appear with the stream: the champion is scored late
        *boundaries,
    ]
    summary, final, resumed = resume_from_each_checkpoint(tmp_path, overrides)
    assert summary["dead_letters"]["count"] == 17
    assert_identical(summary, final, resumed)
    for _, again, _ in resumed:
        assert again["dead_letters"]["count"] == 17
    # every process appended to the same file and cut it back on resume: each line once per session
    entries = [json.loads(line) for line in (tmp_path / "dead_letters.jsonl").read_text().splitlines()]
    per_run: dict[str, list] = {}
    for entry in entries:
        per_run.setdefault(entry["run"], []).append(entry["offset"])
    assert all(sorted(offsets) == sorted(set(offsets)) for offsets in per_run.values())
    assert all(len(offsets) == 17 for offsets in per_run.values())


def test_a_corrupt_checkpoint_is_skipped_with_the_reason(tmp_path, capsys):
    overrides = ["learner.epochs=1", "checkpoint.every_batches=10"]
    directory = tmp_path / "ckpt"
    build([*overrides, f"checkpoint.dir='{directory}'"], tmp_path).execute()
    *_, older, newest = checkpoint.checkpoints(directory)
    tensors = newest / checkpoint.TENSORS
    tensors.write_bytes(tensors.read_bytes()[:-100])  # truncated
    snapshot = checkpoint.latest(directory, report=print)
    assert snapshot.path == older
    assert f"skipping checkpoint {newest}" in capsys.readouterr().out
    older_state = older / checkpoint.STATE
    older_state.write_bytes(older_state.read_bytes().replace(b'"step"', b'"stap"'))  # same length, bad checksum
    with pytest.raises(checkpoint.CorruptCheckpoint, match="SHA-256"):
        checkpoint.read(older)
    runner = build([*overrides, f"checkpoint.dir='{directory}'"], tmp_path, resume=True)
    assert runner.plan.resume_from.path < older


def test_a_resume_with_a_different_pipeline_is_refused_naming_the_fields(tmp_path):
    directory = tmp_path / "ckpt"
    build(["learner.epochs=1", "learner.strategies=['replay']", f"checkpoint.dir='{directory}'"], tmp_path).execute()
    result = cli(
        "run", "--resume", "--set", "tracking.trackers=[]", "--set", f"checkpoint.dir='{directory}'",
        "--set", "learner.strategies=['replay']", "--set", "learner.progress=false",
        "--set", "learner.epochs=1", "--set", "learner.lr=0.01", "--set", "strategy.replay.memory=50",
        "--set", "learner.max_batches=3", "--set", "learner.log_every=7", cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "learner.lr (0.001 then, 0.01 now)" in result.stderr
    assert "strategy.replay.memory (200 then, 50 now)" in result.stderr
    assert "max_batches" not in result.stderr and "log_every" not in result.stderr  # these may change
    assert result.stderr.count(" then, ") == 2


def test_resume_pathnet_mid_tournament(tmp_path):
    # tournaments of 2 × 5 batches and a checkpoint every 6: most checkpoints fall inside a tournament
    overrides = [
        "learner.strategies=['pathnet']",
        "stream.scenario='task'",
        "learner.epochs=2",
        "strategy.pathnet.tournament_batches=5",
        "checkpoint.every_batches=6",
    ]
    summary, final, resumed = resume_from_each_checkpoint(tmp_path, overrides)
    assert_identical(summary, final, resumed)


def test_checkpoints_by_time_and_at_generations(tmp_path):
    by_generation = build(["learner.epochs=1", f"checkpoint.dir='{tmp_path / 'a'}'"], tmp_path)
    by_generation.execute()
    # one after each of the 5 generations (the last one is the end of the run)
    assert by_generation.checkpoints_written == 5
    by_time = build(["learner.epochs=1", f"checkpoint.dir='{tmp_path / 'b'}'", "checkpoint.every_seconds=0.000001"], tmp_path)
    # A due checkpoint waits while the writer is busy, so how many are written depends on the machine's
    # load (3 on a loaded CI runner); with every due checkpoint queued, one follows every batch.
    with mock.patch.object(BackgroundWriter, "busy", lambda self: False):
        by_time.execute()
    assert by_time.checkpoints_written >= by_time.step > by_generation.checkpoints_written
