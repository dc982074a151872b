"""Data-parallel training (lifelong.distributed): N ranks of batch B against one process of batch N × B,
a rank killed with SIGKILL and the job resumed, and what a data-parallel run refuses.

The ranks are real processes joined by gloo through a ``file://`` rendezvous (torchrun's TCP store
would listen on every interface), started by ``torch.multiprocessing`` or by ``lifelong run --nproc``.
"""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lifelong import checkpoint, config, pipeline
from lifelong.host import PluginHost
from tests.kernel.test_resume import lifelong

pytestmark = pytest.mark.slow

BASE = ["learner.progress=false", "tracking.trackers=[]", "learner.epochs=1", "learner.threads=1"]


def overrides(strategies: list[str], batch: int, extra: list[str] = ()) -> list[str]:
    return [*BASE, f"learner.strategies={json.dumps(strategies)}", f"learner.batch_size={batch}", *extra]


def run_here(sets: list[str], directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """One process: the summary and the final weights."""
    plan = pipeline.build(PluginHost(), config.load(None, sets), directory / "dead.jsonl")
    runner = pipeline.Runner(plan)
    summary = runner.execute()
    return summary, {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def _rank(rank: int, size: int, init: str, sets: list[str], out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank), "LIFELONG_INIT_METHOD": init})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    plan = pipeline.build(PluginHost(), config.load(None, sets), Path(out) / "dead.jsonl")
    runner = pipeline.Runner(plan)
    summary = runner.execute()
    if rank == 0:
        torch.save({"summary": json.loads(json.dumps(summary, default=str)), "state": runner.model.state_dict()}, Path(out) / "rank0.pt")


def run_ranks(size: int, sets: list[str], directory: Path, timeout: float = 240) -> tuple[dict, dict[str, torch.Tensor]]:
    """``size`` ranks of the same pipeline; rank 0's summary and final weights."""
    directory.mkdir(parents=True, exist_ok=True)
    init = (directory / "rendezvous").as_uri()
    context = mp.start_processes(_rank, args=(size, init, sets, str(directory)), nprocs=size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{size} ranks did not finish in {timeout} s")
    saved = torch.load(directory / "rank0.pt", weights_only=False)
    return saved["summary"], saved["state"]


def test_two_ranks_of_batch_16_train_what_one_process_of_batch_32_trains(tmp_path):
    # the gradient of each step is the mean over both ranks' samples: the weights agree to float rounding
    single, weights = run_here(overrides(["naive"], 32), tmp_path)
    ranks, rank_weights = run_ranks(2, overrides(["naive"], 16), tmp_path / "ranks")
    assert ranks["ranks"] == 2 and single["ranks"] == 1
    assert ranks["samples_seen"] == single["samples_seen"] == 1347
    for name, value in weights.items():
        torch.testing.assert_close(rank_weights[name], value, rtol=0, atol=1e-5, msg=name)
    flat = [value for row in single["accuracy_matrix"] for value in row]
    assert [value for row in ranks["accuracy_matrix"] for value in row] == pytest.approx(flat, abs=1e-3)


@pytest.mark.parametrize("strategies", [["replay"], ["ewc"]])
def test_two_ranks_with_memories_and_fisher_end_near_one_process(tmp_path, strategies):
    # per-rank replay memories and Fisher samples differ from one process's, so only the results agree:
    # task-incremental Split-Digits, where both reach about 0.95-0.96
    task = ["stream.scenario='task'"]
    single, _ = run_here(overrides(strategies, 32, task), tmp_path)
    ranks, _ = run_ranks(2, overrides(strategies, 16, task), tmp_path / "ranks")
    assert single["acc"] > 0.9
    assert abs(ranks["acc"] - single["acc"]) < 0.02
    assert ranks["bwt"] == pytest.approx(single["bwt"], abs=0.03)


def cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return lifelong(*args, cwd=cwd)


def children(pid: int) -> dict[int, int]:
    """{rank: pid} of the ranks ``lifelong run --nproc`` started."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = int(child)
    return found


def sets(*values: str) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


LONG = ["learner.progress=false", "tracking.trackers=[]", "learner.strategies=['replay', 'ewc']", "learner.epochs=10",
        "learner.batch_size=16", "checkpoint.every_batches=5"]


def test_a_rank_killed_stops_the_job_and_resume_finishes_it(tmp_path):
    whole = cli(["run", "--nproc", "2", *sets(*LONG, f"checkpoint.dir='{tmp_path / 'whole'}'"), "--summary", "whole.json"], tmp_path)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-3000:]

    directory = tmp_path / "killed"
    job = cli(["run", "--nproc", "2", *sets(*LONG, f"checkpoint.dir='{directory}'")], tmp_path)
    deadline = time.monotonic() + 120
    # past the first generation (9 steps), so the ranks' memories, Fisher samples and positions differ
    while not any(c.name > checkpoint.step_name(12) for c in directory.glob("ckpt-*")) and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after step 12 within 120 s"
        time.sleep(0.05)
    assert job.poll() is None, job.communicate()[1][-3000:]
    ranks = children(job.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=120)
    stopped = time.monotonic() - killed
    assert job.returncode != 0, err[-3000:]
    assert "rank 1 stopped with signal SIGKILL" in err, err[-3000:]
    assert "another rank stopped" in err and "--resume" in err, err[-3000:]  # rank 0's own message (exit status 4)
    assert stopped < 60, f"the job took {stopped:.0f} s to stop"

    resumed = cli(["run", "--nproc", "2", "--resume", *sets(*LONG, f"checkpoint.dir='{directory}'"), "--summary", "resumed.json"], tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed session" in err
    a, b = json.loads((tmp_path / "whole.json").read_text()), json.loads((tmp_path / "resumed.json").read_text())
    assert b["resumed_from"] is not None and b["ranks"] == 2
    # every rank resumed its own position, memory and RNGs: the job ends exactly as the uninterrupted one
    assert b["accuracy_matrix"] == a["accuracy_matrix"], (b["resumed_from"], err[-2000:])
    assert b["samples_seen"] == a["samples_seen"] == 1347
    torch.testing.assert_close(checkpoint.latest(directory).model_state, checkpoint.latest(tmp_path / "whole").model_state, rtol=0, atol=0)


def run_rank0(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Rank 0 of 2 alone: what it refuses, it refuses before joining (which would wait for rank 1)."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LIFELONG_INIT_METHOD": (cwd / "rdv").as_uri()}
    return subprocess.run([sys.executable, "-m", "lifelong", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_strategy_that_cannot_run_data_parallel_is_refused_before_any_rank_joins(tmp_path):
    result = run_rank0(["run", *sets("tracking.trackers=[]", "learner.strategies=['pathnet']", "stream.scenario='task'")], tmp_path)
    assert result.returncode == 2
    assert "strategy 'pathnet' does not declare that it can train data-parallel" in result.stderr
    listing = subprocess.run([sys.executable, "-m", "lifelong", "plugins"], capture_output=True, text=True, timeout=120)
    assert "data-parallel: each rank keeps its own memory" in listing.stdout
    assert "data-parallel: no (refused when WORLD_SIZE is set)" in listing.stdout


def test_a_checkpoint_of_two_ranks_resumes_only_with_two(tmp_path):
    directory = tmp_path / "ckpt"
    job = cli(["run", "--nproc", "2", *sets("learner.progress=false", "tracking.trackers=[]", "learner.strategies=['naive']",
                                          "learner.epochs=1", f"checkpoint.dir='{directory}'")], tmp_path)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    alone = cli(["run", "--resume", *sets("learner.progress=false", "tracking.trackers=[]", "learner.strategies=['naive']",
                                        "learner.epochs=1", f"checkpoint.dir='{directory}'")], tmp_path)
    out, err = alone.communicate(timeout=120)
    assert alone.returncode == 2
    assert "written by a job of 2 ranks" in err and "--nproc 2" in err


def ended(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """``process``'s output once it has ended; a job still running after ``timeout`` s (or when the wait
    fails) is killed with its process group, ranks included, before the error goes on."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_a_data_parallel_job_resumes_exactly_from_every_checkpoint(tmp_path):
    """A data-parallel step shows its batch to the boundary detector before the ranks agree, and a checkpoint
    the agreement calls for is written before the batch is trained. Written there on the step whose batch
    begins an experience, it held a detector that had already seen that batch: the resumed job read the
    batch again, saw no change of experience, and merged two experiences into one generation (a
    checkpoint written at step 18 of this job, every so often when a rank was killed). Every checkpoint
    of a job that writes one at every step it can resumes to the same accuracy matrix and weights."""
    overrides = ["learner.progress=false", "tracking.trackers=[]", "learner.epochs=1", "learner.batch_size=16", "checkpoint.every_batches=1"]
    whole = cli(["run", "--nproc", "2", *sets(*overrides, f"checkpoint.dir='{tmp_path / 'all'}'", "checkpoint.keep=1000"), "--summary", "whole.json"], tmp_path)
    _, err = ended(whole)
    assert whole.returncode == 0, err[-3000:]
    expected = json.loads((tmp_path / "whole.json").read_text())["accuracy_matrix"]
    found = checkpoint.checkpoints(tmp_path / "all")[:-1]
    assert len(found) >= 10
    for path in found:
        alone = tmp_path / f"from-{path.name}"
        shutil.copytree(tmp_path / "all" / "testsets", alone / "testsets")
        shutil.copytree(path, alone / path.name)
        resumed = cli(["run", "--nproc", "2", "--resume", *sets(*overrides, f"checkpoint.dir='{alone}'"), "--summary", f"{path.name}.json"], tmp_path)
        _, err = ended(resumed)
        assert resumed.returncode == 0, err[-3000:]
        assert json.loads((tmp_path / f"{path.name}.json").read_text())["accuracy_matrix"] == expected, f"resumed from {path.name}"
        torch.testing.assert_close(checkpoint.latest(alone).model_state, checkpoint.latest(tmp_path / "all").model_state, rtol=0, atol=0)
