"""learner.precision = "bf16": the training forward under autocast, the weights and evaluation in float32."""

from __future__ import annotations

import pytest
import torch

from lifelong import config, pipeline
from lifelong.device import check_precision
from lifelong.errors import ConfigError
from lifelong.host import PluginHost

SETS = ["learner.progress=false", "tracking.trackers=[]", "learner.strategies=['replay']", "stream.scenario='task'", "learner.epochs=1"]


def run(tmp_path, precision: str):
    plan = pipeline.build(PluginHost(), config.load(None, [*SETS, f"learner.precision='{precision}'"]), tmp_path / "dead.jsonl")
    runner = pipeline.Runner(plan)
    return runner.execute(), runner.model


def test_bf16_trains_in_bfloat16_and_keeps_float32_weights(tmp_path):
    full, full_model = run(tmp_path, "fp32")
    half, half_model = run(tmp_path, "bf16")
    assert all(p.dtype == torch.float32 for p in half_model.parameters())
    # the same seed and data: only the forward's precision differs, so the weights do too
    assert any(not torch.equal(a, b) for a, b in zip(full_model.state_dict().values(), half_model.state_dict().values()))
    assert full["acc"] > 0.9 and abs(half["acc"] - full["acc"]) < 0.05


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16"):
        config.learner_options({"learner": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match="not mps"):
        check_precision("bf16", torch.device("mps"))
    check_precision("bf16", torch.device("cpu"))
