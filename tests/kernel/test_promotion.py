"""The promotion gate: its rules on constructed scores, and on real runs where it must score the champion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.host import PluginHost
from lifelong.objective import Classification
from lifelong.promotion import Gate, PromotionOptions
from tests.conftest import run_pipeline


def gate_with_champion(scores: dict[int, float], **rules) -> Gate:
    gate = Gate(PromotionOptions(**rules))
    gate.crown(3, {}, scores)
    return gate


# -- the rules, on constructed generations ------------------------------------------------------------------
def test_a_generation_that_forgets_fails_and_one_that_does_not_passes():
    champion = {0: 0.90, 1: 0.85, 2: 0.10}
    gate = gate_with_champion(champion, max_forgetting=0.05, acc_tolerance=0.01)
    # better on the new experience and in the mean, but lost 0.2 on experience 1
    forgetful = gate.judge({0: 0.90, 1: 0.65, 2: 0.95}, compared=[0, 1, 2], new=[2])
    assert not forgetful.passed
    assert forgetful.rules["max_forgetting"].value == pytest.approx(0.20)
    assert not forgetful.rules["max_forgetting"].passed
    assert forgetful.rules["acc_tolerance"].passed  # the mean alone would have let it through
    assert "experience 1" in forgetful.reason()
    steady = gate.judge({0: 0.88, 1: 0.84, 2: 0.95}, compared=[0, 1, 2], new=[2])
    assert steady.passed, steady.reason()
    assert steady.champion == 3 and steady.champion_scores == champion


def test_each_rule_fails_on_its_own():
    champion = {0: 0.9, 1: 0.9}
    gate = gate_with_champion(champion, min_new_score=0.8, min_acc=0.5, max_forgetting=0.5, acc_tolerance=0.05)
    low_new = gate.judge({0: 0.9, 1: 0.7}, compared=[0, 1], new=[1])
    assert [n for n, r in low_new.rules.items() if not r.passed] == ["min_new_score", "acc_tolerance"]
    gate = gate_with_champion(champion, min_acc=0.95, max_forgetting=1, acc_tolerance=1)
    assert [n for n, r in gate.judge({0: 0.9, 1: 0.9}, [0, 1], [1]).rules.items() if not r.passed] == ["min_acc"]


def test_without_a_champion_only_the_absolute_rules_count():
    gate = Gate(PromotionOptions(min_new_score=0.5))
    first = gate.judge({0: 0.6}, compared=[0], new=[0])
    assert first.passed and first.champion is None
    assert first.rules["max_forgetting"].detail == "no champion to compare with"
    assert not gate.judge({0: 0.4}, compared=[0], new=[0]).passed


def test_a_rule_that_cannot_be_measured_fails():
    gate = Gate(PromotionOptions())
    verdict = gate.judge({0: 0.9}, compared=[0], new=[1])  # no held-out data for the new experience
    assert not verdict.passed
    assert verdict.rules["min_new_score"].value is None


def test_the_verdict_is_plain_data_and_the_champion_survives_a_state_round_trip():
    gate = gate_with_champion({0: 0.5}, max_forgetting=0.1)
    gate.crown(4, {"w": torch.ones(2)}, {0: 0.75, 1: 0.5})
    again = Gate(PromotionOptions())
    again.load_state_dict(gate.state_dict())
    assert again.champion.label == 4 and again.champion.scores == {0: 0.75, 1: 0.5}
    verdict = again.judge({0: 0.5, 1: 0.75}, [0, 1], [1]).to_dict()
    assert verdict["rules"]["max_forgetting"]["value"] == 0.25 and verdict["passed"] is False
    assert verdict["champion_scores"] == {"0": 0.75, "1": 0.5}


@pytest.mark.parametrize("bad", ["promotion.max_forgetting=-0.1", "promotion.min_acc=nan", "promotion.nope=1"])
def test_bad_rules_are_refused_naming_the_field(tmp_path, bad):
    with pytest.raises(ConfigError, match="promotion"):
        run_pipeline(tmp_path, [bad])


# -- real runs ------------------------------------------------------------------------------------------------
def test_naive_forgets_so_the_champion_stays_while_replay_moves_it(tmp_path):
    """Class-incremental Split-Digits: naive forgets the old classes at once; replay keeps them."""
    naive, _ = run_pipeline(tmp_path, ["promotion.max_forgetting=0.05"])
    rows = naive["generations"]
    assert rows[0]["promotion"]["passed"]
    assert [r["promotion"]["passed"] for r in rows[1:]] == [False] * 4
    assert all("max_forgetting" in r["promotion"]["reason"] for r in rows[1:])
    assert naive["champion"] == {"champion": 0, "passed": [0], "judged": 5}
    # judged against generation 0 on the same held-out sets: its row of the accuracy matrix
    columns = naive["experiences"]
    verdict = rows[1]["promotion"]
    assert verdict["champion"] == 0
    assert verdict["champion_scores"] == {str(e): naive["accuracy_matrix"][0][columns.index(e)] for e in (0, 1)}
    assert verdict["scores"] == {str(e): naive["accuracy_matrix"][1][columns.index(e)] for e in (0, 1)}

    replay, _ = run_pipeline(
        tmp_path, ["learner.epochs=3", "learner.strategies=['replay']", "promotion.max_forgetting=0.3", "promotion.acc_tolerance=0.3"]
    )
    assert len(replay["champion"]["passed"]) > 1


def test_the_champion_is_scored_on_held_out_sets_that_appeared_after_it(tmp_path):
    """A csv stream hands out an experience's held-out rows as it passes it: the champion (generation 0)
    never saw experience 1's set, so the kernel scores its weights on it before comparing."""
    rng = np.random.default_rng(1)
    lines = ["a,b,label,exp"]
    for i in range(400):
        exp, label = i // 200, int(rng.integers(0, 2))
        a, b = rng.normal(label * 2 - 1 + 3 * exp, 1.0, 2)
        lines.append(f"{a:.4f},{b:.4f},{label},{exp}")
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    overrides = [
        "stream.reader='csv'",
        f"stream.path='{tmp_path / 's.csv'}'",
        "stream.experience='exp'",
        "stream.test_fraction=0.25",
        "model.name='mlp'",
        "model.hidden=[8]",
        "learner.batch_size=16",
        "tracking.trackers=['generation-log']",
        "promotion.max_forgetting=1.0",
        "promotion.acc_tolerance=1.0",
    ]
    host = PluginHost(plugins=["tests.fixtures.generation_log"])
    summary, runner = run_pipeline(tmp_path, overrides, host=host)
    first, second = runner.plan.trackers["generation-log"].generations
    assert first.accuracy.keys() == {0}  # experience 1's set did not exist yet
    assert first.promotion["passed"] and second.promotion["champion"] == 0
    model = runner.model
    # scoring the champion borrowed the live model: it holds the challenger's weights again
    assert all(torch.equal(v, second.state[k]) for k, v in model.state_dict().items())
    model.load_state_dict(first.state)
    expected = Classification().measure(model, runner.test_sets[1], runner.device, 1024)["accuracy"]
    assert second.promotion["champion_scores"]["1"] == expected
    assert second.promotion["compared"] == [0, 1]


def test_a_run_that_continues_from_a_checkpoint_is_judged_against_that_model(tmp_path):
    source = tmp_path / "source"
    run_pipeline(tmp_path, ["learner.epochs=1", "learner.max_batches=60", f"checkpoint.dir='{source}'"])
    summary, _ = run_pipeline(
        tmp_path,
        [
            "learner.epochs=1",
            "model.name='file'",
            f"model.path='{source}'",
            "promotion.max_forgetting=0.05",
            "boundary.detector='window'",
            "boundary.batches=1000",
        ],
    )
    verdict = summary["generations"][0]["promotion"]
    assert verdict["champion"] == str(source) or str(source) in str(verdict["champion"])
    assert verdict["rules"]["max_forgetting"]["detail"] != "no champion to compare with"
    # the source model's own scores, measured before training: the run's initial accuracy
    initial = dict(zip(summary["experiences"], summary["initial_accuracy"]))
    assert verdict["champion_scores"] == {str(e): initial[e] for e in verdict["compared"]}
