"""The registry conventions of lifelong's generations: the aliases and tags a service reads.

Aliases of a registered model:

- ``challenger``: the newest generation the promotion gate judged (moved at every registration
  while ``[promotion]`` is on).
- ``champion``: the generation in production. It moves only to a generation that passed the gate,
  by hand (``lifelong models promote``), or back (``lifelong models rollback``). ``lifelong serve
  models:/NAME@champion`` follows it.

Version tags (besides the lineage tags of :func:`lifelong_mlflow.tracker.generation_tags`):

- ``lifelong.gate.verdict``: ``passed`` or ``failed``; ``lifelong.gate``: the whole verdict as JSON
  (:meth:`lifelong.promotion.Verdict.to_dict`); ``lifelong.gate.<rule>``: each rule's measured value.
- ``lifelong.champion.since`` (milliseconds since the epoch), ``lifelong.champion.by`` (``gate``,
  ``promote`` or ``rollback``) and ``lifelong.champion.reason``: set on a version each time it
  becomes champion. The previous champion is therefore the version with the newest ``since``
  before the current one's: rollback needs no history of its own.
- ``lifelong.weights.sha256``: the SHA-256 of the version's ``weights.safetensors`` when it was
  logged; ``lifelong serve`` refuses weights that no longer match (changed in the artifact store).
- ``lifelong.rolled_back``: on a version the champion was rolled back from, the reason; a plain
  rollback never goes back to such a version (``--to`` can). The marker stays when ``--to`` or a
  promote makes it champion again: it records what happened, and a plain rollback still skips it.

Besides :func:`set_champion`, the functions ``lifelong models`` runs on: :func:`models` and
:func:`versions` read (paging through any number of versions), :func:`promote` and
:func:`rollback` move ``champion``. They take an ``MlflowClient`` for any tracking URI, print
nothing, and raise :class:`RegistryError` (a :class:`lifelong.errors.UserError`) for an unknown
name or version or a move that has no target.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lifelong.errors import UserError

CHAMPION = "champion"
CHALLENGER = "challenger"
VERDICT_TAG = "lifelong.gate.verdict"
GATE_TAG = "lifelong.gate"
SINCE_TAG = "lifelong.champion.since"
BY_TAG = "lifelong.champion.by"
REASON_TAG = "lifelong.champion.reason"
ROLLED_BACK_TAG = "lifelong.rolled_back"
# SHA-256 of the version's weights.safetensors, recorded by the tracker; lifelong serve refuses a mismatch.
WEIGHTS_DIGEST_TAG = "lifelong.weights.sha256"
MAX_TAG_LENGTH = 8000


def set_champion(client: Any, name: str, version: int | str, by: str, reason: str) -> None:
    """Point ``champion`` of ``name`` at ``version`` and record when, by whom and why on the version.

    ``client`` is an ``MlflowClient`` bound to the store. The tags are set before the alias moves,
    so a reader that sees the alias also sees why it moved.
    """
    version = str(version)
    client.set_model_version_tag(name, version, SINCE_TAG, str(int(time.time() * 1000)))
    client.set_model_version_tag(name, version, BY_TAG, by)
    client.set_model_version_tag(name, version, REASON_TAG, reason[:MAX_TAG_LENGTH])
    client.set_registered_model_alias(name, CHAMPION, version)


# -- reading and moving the aliases: what ``lifelong models`` does ------------------------------
# Below, ``client`` is an ``MlflowClient``; nothing here prints or exits: the command module does.

GENERATION_TAG = "lifelong.generation"
SESSION_TAG = "lifelong.session"
PARENT_TAG = "lifelong.parent"
HELD_TAG = "lifelong.gate.held"  # the tracker's: passed, but champion was moved by hand and stays
SCORE_PREFIX = "lifelong.acc.exp_"
COVERED_TAG = "lifelong.experiences_covered"
# Versions per search request: MLflow's SQL stores and its server accept up to 200,000, but a page
# of 1,000 keeps each HTTP response small and each request well inside the client's timeout.
PAGE_SIZE = 1000
_RM_PAGE_SIZE = 1000  # registered models per request: MLflow's maximum


class RegistryError(UserError):
    """A name, version or move the registry cannot honour; the CLI prints it and exits with status 2."""


@dataclass
class VersionInfo:
    """One registered version as ``lifelong models`` shows it: lineage, scores, verdict, champion history."""

    name: str
    version: int
    generation: int | str | None = None  # the ``lifelong.generation`` tag; None on a version lifelong did not write
    session: str | None = None
    parent: str | None = None
    scores: dict[int, float] = field(default_factory=dict)  # experience id -> score (``lifelong.acc.exp_<i>``)
    covered: list[int] | None = None  # experiences its lineage trained on (``lifelong.experiences_covered``)
    verdict: str | None = None  # ``passed``, ``failed`` or None (not judged)
    failed_rules: dict[str, float | None] = field(default_factory=dict)  # rule -> measured value
    gate: dict[str, Any] | None = None  # the parsed ``lifelong.gate`` JSON; None when absent or unreadable
    held: str | None = None  # why a version that passed did not become champion (``lifelong.gate.held``)
    since: int | None = None  # ms since the epoch it last became champion
    by: str | None = None
    reason: str | None = None
    rolled_back: str | None = None  # the reason the champion was rolled back from it
    aliases: list[str] = field(default_factory=list)
    created: int | None = None
    run_id: str | None = None

    @property
    def acc(self) -> float | None:
        """ACC: the mean score over the experiences its lineage trained on, as the gate computes it.

        A benchmark scores every generation on every experience, the future ones included, so a
        plain mean over all scores would count experiences it was never trained on. Without the
        ``lifelong.experiences_covered`` tag, the mean of every score.
        """
        scores = self.acc_scores
        return sum(scores.values()) / len(scores) if scores else None

    @property
    def acc_scores(self) -> dict[int, float]:
        """The scores ACC averages."""
        if self.covered is None:
            return self.scores
        return {exp: score for exp, score in self.scores.items() if exp in self.covered}

    def to_dict(self) -> dict[str, Any]:
        champion = None
        if self.since is not None or self.by is not None:
            champion = {"since": self.since, "since_utc": utc(self.since), "by": self.by, "reason": self.reason}
        return {
            "version": self.version,
            "generation": self.generation,
            "session": self.session,
            "parent": self.parent,
            "acc": self.acc,
            "n_scores": len(self.acc_scores),
            "covered": self.covered,
            "scores": {str(exp): score for exp, score in sorted(self.scores.items())},
            "verdict": self.verdict,
            "failed_rules": self.failed_rules,
            "gate": self.gate,
            "held": self.held,
            "champion": champion,
            "rolled_back": self.rolled_back,
            "aliases": self.aliases,
            "created": self.created,
            "run_id": self.run_id,
        }


@dataclass
class ModelSummary:
    """One registered model with lifelong versions: how many, the newest, and its aliases."""

    name: str
    versions: int
    latest: int
    aliases: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "latest": self.latest,
            "champion": self.aliases.get(CHAMPION),
            "challenger": self.aliases.get(CHALLENGER),
            "aliases": self.aliases,
        }


@dataclass
class Move:
    """What a promote or rollback did: ``champion`` of ``name`` went from ``before`` to ``after``."""

    name: str
    before: int | None
    after: int
    by: str
    reason: str
    moved: bool = True  # False: ``after`` already was champion, nothing was written
    warnings: list[str] = field(default_factory=list)


def utc(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), or None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def quote(value: str) -> str:
    """A string literal for an MLflow search filter."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_version(version: int | str) -> int:
    """``3``, ``"3"`` or ``"v3"`` as 3; anything else is a :class:`RegistryError`."""
    text = str(version).strip()
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise RegistryError(f"version {text!r} is not a version number: give one such as 3 (or v3)")
    return int(digits)


def iter_versions(client: Any, filter_string: str | None = None, page_size: int = PAGE_SIZE) -> Iterator[Any]:
    """Every model version matching ``filter_string``, page by page (by name, newest version first).

    The order is explicit because MLflow's default (last updated first) shifts while someone
    tags versions, and offset-based page tokens would then skip or repeat versions.
    """
    token = None
    while True:
        page = client.search_model_versions(
            filter_string, max_results=page_size, order_by=["name ASC", "version_number DESC"], page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def version_info(mv: Any, aliases: dict[str, int] | None = None) -> VersionInfo:
    """A :class:`VersionInfo` from an MLflow ``ModelVersion``; unreadable tags are left out, never fatal.

    ``aliases`` (alias -> version) are the registered model's: MLflow's SQL stores do not fill in a
    version's own ``aliases`` when searching.
    """
    tags = dict(mv.tags or {})
    number = int(mv.version)
    info = VersionInfo(name=mv.name, version=number, created=mv.creation_timestamp, run_id=mv.run_id or None)
    generation = tags.get(GENERATION_TAG)
    info.generation = int(generation) if generation is not None and generation.isdigit() else generation
    info.session = tags.get(SESSION_TAG)
    info.parent = tags.get(PARENT_TAG)
    for key, value in tags.items():
        exp = key[len(SCORE_PREFIX) :] if key.startswith(SCORE_PREFIX) else ""
        score = _float(value)
        if exp.isdigit() and score is not None:
            info.scores[int(exp)] = score
    try:
        covered = json.loads(tags.get(COVERED_TAG, "null"))
        info.covered = [int(exp) for exp in covered] if isinstance(covered, list) else None
    except (ValueError, TypeError):
        info.covered = None
    info.gate = _json_dict(tags.get(GATE_TAG))
    verdict = tags.get(VERDICT_TAG)
    if verdict is None and info.gate is not None and isinstance(info.gate.get("passed"), bool):
        verdict = "passed" if info.gate["passed"] else "failed"
    info.verdict = verdict
    info.held = tags.get(HELD_TAG)
    rules = info.gate.get("rules") if info.gate else None
    if isinstance(rules, dict):
        for rule, result in rules.items():
            if isinstance(result, dict) and result.get("passed") is False:
                info.failed_rules[str(rule)] = _float(result.get("value"))
    since = tags.get(SINCE_TAG)
    info.since = int(since) if since is not None and since.isdigit() else None
    info.by, info.reason = tags.get(BY_TAG), tags.get(REASON_TAG)
    info.rolled_back = tags.get(ROLLED_BACK_TAG)
    info.aliases = sorted(alias for alias, v in (aliases or {}).items() if int(v) == number)
    return info


def registered_model(client: Any, name: str) -> Any:
    """The registered model ``name``; a :class:`RegistryError` when there is none."""
    try:
        return client.get_registered_model(name)
    except Exception as exc:
        if _not_found(exc):
            raise RegistryError(
                f"there is no registered model {name!r}; `lifelong models list` shows the registered models "
                "that hold lifelong generations"
            ) from None
        raise


def versions(client: Any, name: str, page_size: int = PAGE_SIZE) -> list[VersionInfo]:
    """Every version of ``name``, newest first (versions lifelong did not write have no lineage)."""
    aliases = _aliases(registered_model(client, name))
    found = iter_versions(client, f"name = {quote(name)}", page_size)
    return sorted((version_info(mv, aliases) for mv in found), key=lambda v: -v.version)


def get_version(client: Any, name: str, version: int | str) -> VersionInfo:
    """One version of ``name``; a :class:`RegistryError` naming what is missing: the model or the version."""
    number = parse_version(version)
    model = registered_model(client, name)
    try:
        mv = client.get_model_version(name, str(number))
    except Exception as exc:
        if _not_found(exc):
            raise RegistryError(
                f"registered model {name!r} has no version {number}; `lifelong models list {name}` shows its versions"
            ) from None
        raise
    return version_info(mv, _aliases(model))


def models(client: Any, page_size: int = PAGE_SIZE) -> list[ModelSummary]:
    """The registered models that hold lifelong generations (versions tagged ``lifelong.generation``), by name."""
    counts: dict[str, list[int]] = {}
    for mv in iter_versions(client, f"tags.`{GENERATION_TAG}` LIKE '%'", page_size):
        seen = counts.setdefault(mv.name, [0, 0])
        seen[0] += 1
        seen[1] = max(seen[1], int(mv.version))
    aliases: dict[str, dict[str, int]] = {}
    token = None
    while counts:  # one search of the registered models, not one request per model
        page = client.search_registered_models(max_results=min(page_size, _RM_PAGE_SIZE), page_token=token)
        for model in page:
            if model.name in counts:
                aliases[model.name] = _aliases(model)
        token = page.token
        if not token:
            break
    return [ModelSummary(n, count, latest, aliases.get(n, {})) for n, (count, latest) in sorted(counts.items())]


def champion(client: Any, name: str) -> int | None:
    """The version ``champion`` of ``name`` points at, or None."""
    found = _aliases(registered_model(client, name)).get(CHAMPION)
    return None if found is None else int(found)


def previous_champion(candidates: list[VersionInfo], current: VersionInfo) -> VersionInfo | None:
    """Where a plain rollback from ``current`` goes: the champion before it.

    That is the version, other than ``current``, that became champion last before ``current`` did
    (the newest ``lifelong.champion.since`` older than ``current``'s) and was never rolled back
    from. A current champion without ``since`` (its alias moved outside lifelong) counts as newest.
    """
    cutoff = current.since if current.since is not None else float("inf")
    earlier = [
        v
        for v in candidates
        if v.version != current.version and v.since is not None and v.since < cutoff and v.rolled_back is None
    ]
    return max(earlier, key=lambda v: (v.since, v.version), default=None)


def promote(client: Any, name: str, version: int | str, reason: str) -> Move:
    """Make ``version`` champion by hand (``by = promote``), whatever the gate said about it.

    The move is returned with warnings for a version that failed the gate or was rolled back from:
    an override is allowed, but it should not go unnoticed.
    """
    _need_reason(reason)
    target = get_version(client, name, version)
    before = champion(client, name)
    if before == target.version:
        return Move(name, before, target.version, "promote", reason, moved=False)
    move = Move(name, before, target.version, "promote", reason, warnings=_doubts(target))
    set_champion(client, name, target.version, by="promote", reason=reason)
    return move


def rollback(client: Any, name: str, reason: str, to: int | str | None = None) -> Move:
    """Move ``champion`` back: to ``to``, or else to :func:`previous_champion`.

    The version it leaves is tagged ``lifelong.rolled_back`` = ``reason`` (so no later plain
    rollback returns to it), then the target becomes champion with ``by = rollback``. Nothing is
    written unless there is a target.
    """
    _need_reason(reason)
    current_version = champion(client, name)
    if current_version is None:
        raise RegistryError(
            f"registered model {name!r} has no champion to roll back from; make one with "
            f"`lifelong models promote {name} VERSION --reason TEXT`"
        )
    current = get_version(client, name, current_version)
    if to is not None:
        target = get_version(client, name, to)
        if target.version == current.version:
            raise RegistryError(f"v{target.version} of {name!r} is already champion; choose another version with --to")
    else:
        # Only versions that were ever champion carry ``since``: the store filters, however many versions there are.
        ever = iter_versions(client, f"name = {quote(name)} AND tags.`{SINCE_TAG}` LIKE '%'")
        target = previous_champion([version_info(mv) for mv in ever], current)
        if target is None:
            raise RegistryError(
                f"registered model {name!r} has no earlier champion to roll back to from v{current.version} (none "
                f"became champion before it, or each was rolled back from); choose the version with --to VERSION"
            )
    move = Move(name, current.version, target.version, "rollback", reason, warnings=_doubts(target))
    client.set_model_version_tag(name, str(current.version), ROLLED_BACK_TAG, reason[:MAX_TAG_LENGTH])
    set_champion(client, name, target.version, by="rollback", reason=reason)
    return move


def _doubts(target: VersionInfo) -> list[str]:
    """Why making ``target`` champion deserves a second look: a failed gate, an earlier rollback."""
    doubts = []
    if target.verdict == "failed":
        rules = ", ".join(target.failed_rules) or "see its lifelong.gate tag"
        doubts.append(f"v{target.version} failed the promotion gate ({rules}); it becomes champion as an override")
    if target.rolled_back is not None:
        doubts.append(f"the champion was rolled back from v{target.version} before: {target.rolled_back}")
    return doubts


def _need_reason(reason: str) -> None:
    if not reason or not reason.strip():
        raise RegistryError("--reason must say why the champion moves (it is kept on the version as an audit trail)")


def _aliases(model: Any) -> dict[str, int]:
    return {alias: int(version) for alias, version in (getattr(model, "aliases", None) or {}).items()}


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _json_dict(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
