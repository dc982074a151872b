"""The promotion gate: judges every generation against the champion, on the same held-out data.

A generation (the *challenger*) may replace the *champion*, the generation a service serves, only
if it passes every rule of ``[promotion]``. Both are scored on the same held-out sets: the
experiences the challenger's lineage has covered (which include the champion's) and, when the
champion has no score yet on one of them (its set appeared after the champion was made), the
kernel scores the champion on it first. Numbers measured on different sets are never compared.

The rules (each reported with its measured value, whether it passed or not):

- ``min_new_score``: the lowest score on the experiences the generation was just trained on.
- ``min_acc``: the mean score over the compared experiences (ACC).
- ``max_forgetting``: the largest drop below the champion's score on any other compared
  experience. This is the rule a continual learner needs and a plain metric threshold (MLflow's
  ``MetricThreshold``, TFX's blessing) lacks: a generation that gained on the new data and lost an
  old task can keep its mean and still fail here.
- ``acc_tolerance``: ACC may be at most this far below the champion's ACC on the same experiences.

Without a champion (the first generation of a session that started from scratch), the relative
rules pass as "no champion" and the generation is promoted when it passes the absolute ones. When
the run continues from a stored generation, that model, as it was before training, is the first
champion. A rule that cannot be measured (no held-out data for the new experience) fails: the
gate fails closed.

The score is whatever the kernel's evaluation measures per experience (accuracy today): the gate
only assumes that higher is better, so any such metric (ROC-AUC for anomaly detectors) plugs in.
The gate itself is plain Python over score dicts; :class:`lifelong.session.Runner` does the
scoring and keeps the champion's weights (one CPU copy).

>>> gate = Gate(PromotionOptions(max_forgetting=0.05))
>>> gate.judge({0: 0.9}, compared=[0], new=[0]).passed
True
>>> gate.crown(0, {"w": None}, {0: 0.75, 1: 0.25})
>>> verdict = gate.judge({0: 0.5, 1: 1.0}, compared=[0, 1], new=[1])  # better on 1, forgot 0
>>> verdict.passed, verdict.rules["max_forgetting"].value, verdict.rules["acc_tolerance"].passed
(False, 0.25, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RELATIVE = ("max_forgetting", "acc_tolerance")


@dataclass
class PromotionOptions:
    min_new_score: float = field(
        default=0.0, metadata={"help": "lowest score allowed on the experiences the generation was just trained on; 0: no minimum"}
    )
    min_acc: float = field(default=0.0, metadata={"help": "lowest mean score (ACC) over the compared experiences; 0: no minimum"})
    max_forgetting: float = field(
        default=0.05,
        metadata={"help": "largest drop allowed below the champion's score on any older experience, on the same held-out data"},
    )
    acc_tolerance: float = field(
        default=0.01, metadata={"help": "ACC may be at most this far below the champion's ACC on the same experiences"}
    )

    def check(self) -> None:
        for name in ("min_new_score", "min_acc", "max_forgetting", "acc_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):  # scores (accuracy, ROC-AUC) are in [0, 1]
                raise ValueError(f"{name} must be a number in [0, 1] (scores are accuracies), got {value}")


@dataclass
class Rule:
    """One rule's outcome: the measured value (None when not measurable), its threshold, and why."""

    value: float | None
    threshold: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "threshold": self.threshold, "passed": self.passed, "detail": self.detail}


@dataclass
class Verdict:
    passed: bool
    champion: Any  # the champion's label (a generation index, or the reference the run continued from); None: none
    compared: list[int]  # the experience ids both were scored on
    new: list[int]
    scores: dict[int, float]  # the challenger's, on ``compared``
    champion_scores: dict[int, float]  # the champion's, on ``compared``
    rules: dict[str, Rule]

    def reason(self) -> str:
        """One line: why it passed or which rules failed, with their values."""
        failed = [f"{name}: {rule.detail}" for name, rule in self.rules.items() if not rule.passed]
        if failed:
            return "failed " + "; ".join(failed)
        against = "no champion" if self.champion is None else f"champion {self.champion}"
        return f"passed every rule against {against}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "champion": self.champion,
            "compared": self.compared,
            "new": self.new,
            "scores": {str(k): v for k, v in self.scores.items()},
            "champion_scores": {str(k): v for k, v in self.champion_scores.items()},
            "rules": {name: rule.to_dict() for name, rule in self.rules.items()},
            "reason": self.reason(),
        }


@dataclass
class Champion:
    """The generation the gate compares with: its label, weights (CPU) and scores per experience."""

    label: Any
    state: dict[str, Any]
    scores: dict[int, float]


def _below(gap: float) -> str:
    return f"{gap:.4g} below" if gap > 0 else f"{-gap:.4g} above" if gap < 0 else "level with"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Gate:
    """Judges challengers and remembers the champion; its state goes into checkpoints."""

    def __init__(self, options: PromotionOptions):
        self.options = options
        self.champion: Champion | None = None

    def crown(self, label: Any, state: dict[str, Any], scores: dict[int, float]) -> None:
        """Make ``label`` the champion: the generation that passed, or the model a run continued from."""
        self.champion = Champion(label, state, dict(scores))

    def missing(self, compared: list[int]) -> list[int]:
        """Experiences the champion must be scored on before :meth:`judge` can compare."""
        if self.champion is None:
            return []
        return [exp for exp in compared if exp not in self.champion.scores]

    def judge(
        self,
        scores: dict[int, float],
        compared: list[int],
        new: list[int],
        champion_scores: dict[int, float] | None = None,
    ) -> Verdict:
        """The verdict on a challenger scoring ``scores``; ``compared`` are the experiences to compare
        on (those with held-out data), ``new`` those it was just trained on. ``champion_scores``
        defaults to the champion's known scores."""
        o = self.options
        compared = [exp for exp in compared if exp in scores]
        theirs = dict(champion_scores if champion_scores is not None else (self.champion.scores if self.champion else {}))
        ours = {exp: scores[exp] for exp in compared}
        fresh = [exp for exp in new if exp in ours]
        rules: dict[str, Rule] = {}

        low = min((ours[exp] for exp in fresh), default=None)
        if low is None:
            rules["min_new_score"] = Rule(None, o.min_new_score, False, f"no held-out data for experience(s) {new}")
        else:
            worst = min(fresh, key=lambda exp: ours[exp])
            rules["min_new_score"] = Rule(
                low, o.min_new_score, low >= o.min_new_score, f"{low:.4g} on experience {worst} (minimum {o.min_new_score:g})"
            )
        acc = _mean(list(ours.values()))
        if acc is None:
            rules["min_acc"] = Rule(None, o.min_acc, False, "no held-out data to score")
        else:
            rules["min_acc"] = Rule(acc, o.min_acc, acc >= o.min_acc, f"ACC {acc:.4g} (minimum {o.min_acc:g})")

        both = [exp for exp in compared if exp in theirs]
        if self.champion is None and champion_scores is None:
            for name in RELATIVE:
                rules[name] = Rule(None, getattr(o, name), True, "no champion to compare with")
        else:
            older = [exp for exp in both if exp not in fresh]
            drops = {exp: theirs[exp] - ours[exp] for exp in older}
            if drops:
                exp = max(drops, key=drops.get)
                drop = drops[exp]
                rules["max_forgetting"] = Rule(
                    drop,
                    o.max_forgetting,
                    drop <= o.max_forgetting + 1e-12,
                    f"{_below(drop)} the champion on experience {exp} (budget {o.max_forgetting:g})",
                )
            else:
                rules["max_forgetting"] = Rule(None, o.max_forgetting, True, "no older experience to compare on")
            if both:
                gap = _mean([theirs[exp] for exp in both]) - _mean([ours[exp] for exp in both])
                rules["acc_tolerance"] = Rule(
                    gap,
                    o.acc_tolerance,
                    gap <= o.acc_tolerance + 1e-12,
                    f"ACC {_below(gap)} the champion's on {both} (tolerance {o.acc_tolerance:g})",
                )
            else:
                rules["acc_tolerance"] = Rule(None, o.acc_tolerance, False, "no experience both were scored on")
        return Verdict(
            passed=all(rule.passed for rule in rules.values()),
            champion=None if self.champion is None else self.champion.label,
            compared=compared,
            new=fresh,
            scores=ours,
            champion_scores={exp: theirs[exp] for exp in both},
            rules=rules,
        )

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        champion = self.champion
        if champion is None:
            return {"champion": None}
        return {
            "champion": {
                "label": champion.label,
                "state": champion.state,
                "scores": [[exp, score] for exp, score in champion.scores.items()],
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("champion")
        self.champion = None if saved is None else Champion(saved["label"], saved["state"], {int(e): s for e, s in saved["scores"]})
