"""Feature scaling (``stream.normalize = "standard"``): running statistics inside the model, counted
from each stream sample once, carried by generations, checkpoints and served models.

This module is also a plugin (``PluginHost(plugins=[__name__])``): it registers two test models,
one with a ``prepare`` step and one with every other optional member.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lifelong import config, hookimpl, pipeline
from lifelong.components import Components
from lifelong.errors import UserError
from lifelong.host import PluginHost
from lifelong.scaling import Standardize
from lifelong.types import ModelSpec, StreamInfo
from tests.conftest import QUIET, cli
from tests.kernel.test_resume import assert_identical, resume_from_each_checkpoint

PLUGIN = __name__


# -- the statistics, against an independent oracle ------------------------------------------------------
def test_running_statistics_equal_numpy_over_the_whole_stream():
    rng = np.random.default_rng(0)
    # large offsets and small spreads: a naive sum of squares in float32 would lose the variance
    data = rng.normal([1e4, -3.0, 0.0], [0.5, 2.0, 1e-3], size=(1000, 3)).astype(np.float32)
    model = Standardize(nn.Identity(), (3,))
    cuts = [0, 1, 8, 9, 300, 777, 1000]  # batches of 1, 7, 1, 291, 477 and 223 rows
    for start, stop in itertools.pairwise(cuts):
        model.update(torch.from_numpy(data[start:stop]))
    stats = model.statistics()
    assert stats["count"].item() == 1000
    np.testing.assert_allclose(stats["mean"].numpy(), data.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"].numpy(), data.astype(np.float64).std(axis=0), rtol=1e-9)
    x = torch.from_numpy(data[:5])
    expected = (data[:5] - data.astype(np.float64).mean(0)) / data.astype(np.float64).std(0)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_identity_before_any_sample_and_constant_features_are_only_centred():
    model = Standardize(nn.Identity(), (2, 2))  # a non-flat input: per element
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert torch.equal(model(x), x)
    model.update(torch.tensor([[[5.0, 1.0], [0.0, 0.0]], [[5.0, 3.0], [0.0, 2.0]]]))
    out = model(torch.tensor([[[7.0, 2.0], [1.0, 1.0]]]))
    assert out.tolist() == [[[2.0, 0.0], [1.0, 0.0]]]  # constant 5 and 0: centred, not divided by 0
    assert torch.isfinite(out).all()


def test_stream_info_carries_normalize_and_old_specs_read_as_raw():
    info = StreamInfo(input_shape=(3,), num_classes=2, normalize="standard")
    assert StreamInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    old = info.to_dict()
    del old["normalize"]  # a model.json written before scaling existed
    assert StreamInfo.from_dict(old).normalize is None


# -- test models --------------------------------------------------------------------------------------------
class Log:
    def __init__(self):
        self.steps = 0
        self.first_passes = 0
        self.boundaries = 0

    @hookimpl
    def after_step(self, first_pass):
        self.steps += 1
        self.first_passes += first_pass

    @hookimpl(tryfirst=True)
    def on_boundary(self, experience):
        self.boundaries += 1

    @hookimpl
    def on_run_end(self, summary):
        return {"boundaries": self.boundaries, "steps": self.steps}


class Members(nn.Module):
    """A task-incremental linear model with param_groups and lifecycle hooks (no prepare)."""

    def __init__(self, options, info: StreamInfo):
        super().__init__()
        self.heads = nn.Linear(int(np.prod(info.input_shape)), info.num_classes * info.num_tasks)
        self.num_classes = info.num_classes
        self.log = Log()
        self.seen_inputs: list[torch.Tensor] = []

    def forward(self, x, task=None):
        self.seen_inputs.append(x.detach().clone())
        logits = self.heads(x.flatten(1)).view(len(x), -1, self.num_classes)
        if task is None:
            return logits[:, 0]
        return logits[torch.arange(len(x)), task]

    def param_groups(self, lr):
        return [{"params": list(self.parameters()), "lr": lr, "name": "members"}]

    def lifecycle_hooks(self):
        return self.log


class Prepared(nn.Module):
    def __init__(self, options, info: StreamInfo):
        super().__init__()
        self.head = nn.Linear(int(np.prod(info.input_shape)), info.num_classes)

    def prepare(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(x)


@hookimpl
def register_models(register):
    register("scaling-members", Members, help="tests only")
    register("scaling-prepared", Prepared, help="tests only")


# -- a csv stream -------------------------------------------------------------------------------------------
def write_stream(directory: Path, rows: int = 480, scale: float = 1000.0) -> tuple[Path, Path, np.ndarray]:
    """Training and test csv files: three features on very different scales, two experiences."""
    rng = np.random.default_rng(1)
    paths = []
    trained = None
    for name, n in (("train.csv", rows), ("test.csv", rows // 4)):
        label = rng.integers(0, 3, n)
        exp = np.arange(n) * 2 // n
        x = np.stack(
            [scale * (label + rng.normal(0, 0.7, n)) + 5 * scale, rng.normal(label, 0.7) / scale, rng.normal(0, 1, n)], axis=1
        )
        lines = ["a,b,c,label,exp", *(f"{a:.6g},{b:.6g},{c:.6g},{y},{e}" for (a, b, c), y, e in zip(x, label, exp))]
        (directory / name).write_text("\n".join(lines) + "\n")
        paths.append(directory / name)
        if trained is None:
            trained = np.array([[float(v) for v in line.split(",")[:3]] for line in lines[1:]], dtype=np.float32)
    return paths[0], paths[1], trained


def csv_settings(train: Path, test: Path, *extra: str) -> list[str]:
    """The stream with normalize on and a small mlp (``model.name`` in ``extra`` names another model)."""
    model = [] if any(e.startswith("model.name") for e in extra) else ["model.name='mlp'", "model.hidden=[16]"]
    return [
        "stream.reader='csv'",
        f"stream.path='{train}'",
        f"stream.test_path='{test}'",
        "stream.experience='exp'",
        "stream.normalize='standard'",
        *model,
        "learner.batch_size=16",
        *extra,
    ]


def runner(tmp_path: Path, overrides: list[str], host: PluginHost | None = None) -> pipeline.Runner:
    raw = config.load(None, [*QUIET, "tracking.trackers=[]", *overrides])
    return pipeline.Runner(pipeline.build(host or PluginHost(), raw, tmp_path / "dead_letters.jsonl"))


def test_statistics_count_each_stream_sample_once_not_replay_nor_extra_epochs(tmp_path):
    train, test, trained = write_stream(tmp_path)
    run = runner(tmp_path, csv_settings(train, test, "learner.strategies=['replay']", "learner.epochs=3"))
    summary = run.execute()
    assert isinstance(run.model, Standardize)
    assert summary["trained_samples"] == 3 * len(trained)  # replay and 2 extra epochs trained more ...
    stats = run.model.statistics()
    assert stats["count"].item() == len(trained)  # ... but each stream row was counted once
    np.testing.assert_allclose(stats["mean"].numpy(), trained.astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"].numpy(), trained.astype(np.float64).std(0), rtol=1e-7)
    # the statistics are in the generation, as they were at its boundary (the second: the end of the stream)
    assert len(summary["generations"]) == 2
    assert run.last_generation.state["input_count"].item() == len(trained)
    assert run.last_generation.model_spec.info.normalize == "standard"


def test_scaling_lifts_accuracy_on_features_of_very_different_scales(tmp_path):
    train, test, _ = write_stream(tmp_path)
    settings = csv_settings(train, test, "boundary.detector='window'", "boundary.batches=1000", "learner.epochs=2")
    scaled = runner(tmp_path, settings).execute()
    raw = runner(tmp_path, [*settings, "stream.normalize='none'"]).execute()
    assert scaled["acc"] > raw["acc"] + 0.1, (scaled["acc"], raw["acc"])


def test_members_and_task_ids_pass_through_and_model_hooks_are_composed(tmp_path):
    train, test, trained = write_stream(tmp_path)
    run = runner(
        tmp_path,
        csv_settings(train, test, "model.name='scaling-members'", "stream.scenario='task'", "learner.epochs=2"),
        PluginHost(plugins=[PLUGIN]),
    )
    inner = run.model.inner
    assert [g.get("name") for g in run.optimizer.param_groups] == ["members"]  # the inner's param_groups
    summary = run.execute()
    assert summary["model"] == {"boundaries": 2, "steps": inner.log.steps}  # the inner's on_run_end, forwarded
    assert inner.log.first_passes == -(-len(trained) // 16)  # one per stream batch; extra epochs are not first passes
    assert inner.log.steps == 2 * inner.log.first_passes
    assert run.model.statistics()["count"].item() == len(trained)
    # the inner model received standardised inputs: the last training batches are centred, unit-scaled
    late = torch.cat(inner.seen_inputs[-10:])
    assert late[:, 0].abs().mean() < 3 and late[:, 1].abs().mean() < 3


def test_a_model_with_prepare_is_refused(tmp_path):
    train, test, _ = write_stream(tmp_path, rows=40)
    with pytest.raises(UserError, match=r"stream.normalize = 'standard' cannot be used .* prepare\(\)"):
        runner(tmp_path, csv_settings(train, test, "model.name='scaling-prepared'"), PluginHost(plugins=[PLUGIN]))
    result = cli(
        "--plugin", PLUGIN, "run", *[a for s in [*QUIET, "tracking.trackers=[]", *csv_settings(train, test, "model.name='scaling-prepared'")] for a in ("--set", s)],
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "stream.normalize" in result.stderr


def test_an_unknown_normalize_is_refused_in_a_spec_and_in_the_reader_options(tmp_path):
    spec = ModelSpec("mlp", {}, StreamInfo(input_shape=(3,), num_classes=2, normalize="minmax"))
    with pytest.raises(UserError, match="normalize = 'minmax'"):
        Components.default().build_generation(spec)
    train, test, _ = write_stream(tmp_path, rows=40)
    result = cli("run", *[a for s in [*QUIET, *csv_settings(train, test, "stream.normalize='minmax'")] for a in ("--set", s)])
    assert result.returncode == 2 and "Traceback" not in result.stderr and "normalize" in result.stderr, result.stderr


def test_npz_offers_normalize_for_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, size=(64, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "s.npz", x=x, y=rng.integers(0, 2, 64))
    run = runner(
        tmp_path,
        ["stream.reader='npz'", f"stream.path='{tmp_path / 's.npz'}'", "stream.normalize='standard'", "model.name='mlp'", "learner.batch_size=16"],
    )
    run.execute()
    assert run.model.input_mean.shape == (1, 4, 4)
    np.testing.assert_allclose(run.model.input_mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-9)


def test_the_generation_rebuilt_from_its_spec_scores_like_the_training_model(tmp_path):
    """What a served or continued generation does: the spec rebuilds the wrapper, the weights hold the statistics."""
    train, test, trained = write_stream(tmp_path)
    run = runner(tmp_path, csv_settings(train, test))
    run.execute()
    generation = run.last_generation
    rebuilt = Components.default().build_generation(ModelSpec.from_dict(json.loads(json.dumps(generation.model_spec.to_dict()))))
    rebuilt.load_state_dict(generation.state)
    x = torch.from_numpy(trained[:50])
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), run.model(x))
        assert not torch.equal(rebuilt.inner(x), run.model(x))  # the scaling is what makes them equal


@pytest.mark.slow
def test_pyfunc_predicts_like_the_in_process_model_on_raw_inputs(tmp_path):
    import mlflow
    import pandas as pd
    from lifelong_mlflow import pyfunc

    train, test, trained = write_stream(tmp_path)
    run = runner(tmp_path, csv_settings(train, test))
    run.execute()
    generation = run.last_generation
    pyfunc.save(tmp_path / "generation", generation.state, generation.model_spec, ["lifelong"])
    served = mlflow.pyfunc.load_model(str(tmp_path / "generation"))
    frame = pd.DataFrame(trained[:200].astype(np.float64), columns=["a", "b", "c"])
    table = served.predict(frame, params={"probabilities": True})
    run.model.eval()
    with torch.no_grad():
        logits = run.model(torch.from_numpy(trained[:200]))
        unscaled = run.model.inner(torch.from_numpy(trained[:200]))
    expected = torch.softmax(logits, dim=1).numpy()
    np.testing.assert_allclose(table[["0", "1", "2"]].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (table["class"].astype(int).to_numpy() == logits.argmax(1).numpy()).all()
    assert not np.allclose(torch.softmax(unscaled, dim=1).numpy(), expected, atol=1e-3)


# -- resume and promotion ------------------------------------------------------------------------------------
def test_resume_is_bit_identical_with_normalize(tmp_path):
    train, test, _ = write_stream(tmp_path, rows=320)
    overrides = csv_settings(
        train,
        test,
        "learner.strategies=['replay', 'ewc']",
        "learner.epochs=2",
        "boundary.detector='window'",
        "boundary.batches=5",
        "checkpoint.every_batches=3",
        "promotion.max_forgetting=0.02",
    )
    summary, final, resumed = resume_from_each_checkpoint(tmp_path, overrides)
    assert "input_mean" in final and final["input_count"].item() == 320
    verdicts = [g["promotion"]["passed"] for g in summary["generations"]]
    assert True in verdicts and False in verdicts  # the champion's weights (and statistics) were swapped in and out
    assert_identical(summary, final, resumed)


def test_promotion_scores_the_champion_with_its_own_statistics(tmp_path):
    train, test, _ = write_stream(tmp_path)
    run = runner(tmp_path, csv_settings(train, test, "promotion.max_forgetting=0.0", "promotion.acc_tolerance=0.0", "boundary.detector='window'", "boundary.batches=4"))
    summary = run.execute()
    champion = run.gate.champion
    assert champion.label != summary["generations"][-1]["index"], "the test needs a champion older than the model"
    assert champion.state["input_count"].item() < run.model.input_count.item()  # an older generation's statistics
    current = {k: v.clone() for k, v in run.model.state_dict().items()}
    # scored again through the live model: the champion's weights *and* statistics come along, so its scores are its own
    assert run._score_with(champion.state, list(champion.scores), current) == champion.scores
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in current.items())  # and the model's come back
