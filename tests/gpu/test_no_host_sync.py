"""No host–device synchronisation in the per-batch path, for every strategy.

Each case runs a whole pipeline (Split-Digits, batch 8: about 170 stream batches over 5
experiences, so boundaries, consolidations and full memories are all crossed) with the check on
over the per-batch path and off where the session reads the device by design: the ``log_every``
reads (``learner.log_every`` is set beyond the run, and ``_log`` is exempt anyway), boundaries with
their evaluation, checkpoints and the summary (:mod:`tests.gpu.host_sync`).

- ``test_no_host_sync_on_cuda``: PyTorch's ``torch.cuda.set_sync_debug_mode("error")``, the
  authority; skipped without CUDA (run by ``bench/gpu.sh`` on a machine with a GPU).
- ``test_no_sync_prone_ops_on_cpu``: the same runs on the CPU with a dispatch mode that records the
  operations that synchronise on CUDA; runs everywhere, so a new ``.item()`` or ``bincount`` in a
  strategy fails CI without a GPU.

PathNet reads its tournament's two fitness values on the host when a tournament ends (every
``2 × tournament_batches`` batches, by design, like the ``log_every`` reads), so its case sets
``tournament_batches`` beyond the run: what is checked is its per-batch path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.gpu.host_sync import SyncProneOps, cuda_sync_check, dispatch_sync_check

BASE = ["learner.progress=false", "tracking.trackers=[]", "learner.epochs=1", "learner.batch_size=8",
        "learner.log_every=1000000", "learner.seed=0"]
CASES = {
    "naive": ["learner.strategies=['naive']"],
    "replay": ["learner.strategies=['replay']"],
    "replay-stream": ["learner.strategies=['replay']", "strategy.replay.fill=stream"],
    "replay-class-balanced": ["learner.strategies=['replay']", "strategy.replay.policy=class-balanced"],
    "replay-class-balanced-stream": ["learner.strategies=['replay']", "strategy.replay.policy=class-balanced",
                                     "strategy.replay.fill=stream"],
    "replay-class-balanced-task": ["learner.strategies=['replay']", "strategy.replay.policy=class-balanced", "stream.scenario=task"],
    "ewc": ["learner.strategies=['ewc']"],
    "ewc-online": ["learner.strategies=['ewc']", "strategy.ewc.mode=online"],
    "l2": ["learner.strategies=['l2']"],
    "lwf": ["learner.strategies=['lwf']"],
    "lwf-task": ["learner.strategies=['lwf']", "stream.scenario=task"],
    "joint": ["learner.strategies=['joint']"],
    "replay+ewc": ["learner.strategies=['replay', 'ewc']"],
    "pathnet": ["learner.strategies=['pathnet']", "model.name=pathnet", "strategy.pathnet.tournament_batches=100000"],
}
MIN_CHECKED = 150  # stream batches trained with the check on, per case


def run_checked(tmp_path: Path, overrides: list[str], check):
    """Build and run a pipeline with ``check(runner)`` (a :class:`tests.gpu.host_sync.Region`) around its per-batch path."""
    from lifelong import config, pipeline
    from lifelong.host import PluginHost

    plan = pipeline.build(PluginHost(), config.load(None, [*BASE, *overrides]), tmp_path / "dead_letters.jsonl")
    runner = pipeline.Runner(plan)
    region = check(runner)
    try:
        summary = runner.execute()
    finally:
        region.close()
    return summary, region


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_no_host_sync_on_cuda(tmp_path, case):
    summary, region = run_checked(tmp_path, ["learner.device=cuda", *CASES[case]], cuda_sync_check)
    assert torch.cuda.get_sync_debug_mode() == 0
    assert region.checked_steps >= MIN_CHECKED, region.checked_steps
    assert summary["samples_seen"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_no_sync_prone_ops_on_cpu(tmp_path, case):
    mode = SyncProneOps()

    def check(runner):
        return dispatch_sync_check(runner, mode)

    with mode:
        summary, region = run_checked(tmp_path, ["learner.device=cpu", *CASES[case]], check)
    assert region.checked_steps >= MIN_CHECKED, region.checked_steps
    assert mode.found == [], "\n".join(sorted(set(mode.found)))
    assert summary["samples_seen"] > 0


TEXT = importlib.util.find_spec("tokenizers") is not None


def text_overrides(tmp_path: Path) -> list[str]:
    from tests.plugins.test_text_prepare_host import corpus, tiny_bert

    return ["learner.strategies=['replay']", "stream.reader=text", f"stream.path={corpus(tmp_path / 'topics.jsonl', 12)}",
            "stream.test_fraction=0.3", "stream.max_bytes=64", "learner.batch_size=2", "model.name=minilm",
            f"model.path={tiny_bert(tmp_path / 'tiny-bert')}", "model.max_tokens=12", "model.strategy=fine-tune-top"]


@pytest.mark.slow
@pytest.mark.skipif(not (torch.cuda.is_available() and TEXT), reason="needs CUDA and tokenizers")
def test_text_model_tokenizes_off_the_training_thread_on_cuda(tmp_path):
    """The text backbone: tokenizing on the reader thread leaves no host copy in the training loop."""
    summary, region = run_checked(tmp_path, ["learner.device=cuda", *text_overrides(tmp_path)], cuda_sync_check)
    assert region.checked_steps >= 40 and summary["samples_seen"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not TEXT, reason="needs tokenizers")
def test_text_model_has_no_sync_prone_ops_on_cpu(tmp_path):
    mode = SyncProneOps()
    with mode:
        summary, region = run_checked(tmp_path, ["learner.device=cpu", *text_overrides(tmp_path)],
                                      lambda runner: dispatch_sync_check(runner, mode))
    assert region.checked_steps >= 40
    assert mode.found == [], "\n".join(sorted(set(mode.found)))
