"""``lifelong models list / promote / rollback`` against real MLflow stores: sqlite files and a real server.

Versions are registered directly with ``MlflowClient.create_model_version`` and the tags the tracker
and the gate write, which is far cheaper than training; the commands run as a user runs them (a
subprocess) or in-process with click's runner where that is enough.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from lifelong_mlflow import registry
from lifelong_mlflow.models_command import HTTP_DEFAULTS, models
from mlflow import MlflowClient

from tests.conftest import cli
from tests.fixtures.mlflow_server import free_port, mlflow_server

NAME = "lifelong"
FAILED_GATE = {
    "passed": False,
    "champion": 1,
    "rules": {
        "max_forgetting": {"value": 0.21, "threshold": 0.1, "passed": False},
        "min_acc": {"value": 0.8, "threshold": 0.5, "passed": True},
    },
}
# v1..v4 of NAME: generation i scored on experiences 0..i. v3 forgets (fails the gate).
SCORES = {1: [0.9], 2: [0.92, 0.88], 3: [0.6, 0.7, 0.95], 4: [0.9, 0.86, 0.84, 0.9]}


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made once (that takes seconds); each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_registered_models()
    return path


class Store:
    """A store, its client and a run that versions name as their source (a server accepts no bare paths)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(uri)
        self.run_id = self.client.create_run(self.client.create_experiment("models-cli")).info.run_id

    def register(self, name: str, generation: int | None, scores=(), verdict=None, gate=None, **tags) -> int:
        client = self.client
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        all_tags = dict(tags)
        if generation is not None:
            all_tags.update({"lifelong.generation": str(generation), "lifelong.session": "0123456789abcdef"})
            all_tags["lifelong.parent"] = str(generation - 1) if generation else "none"
        all_tags.update({f"lifelong.acc.exp_{i}": f"{s:.6g}" for i, s in enumerate(scores)})
        if verdict is not None:
            all_tags["lifelong.gate.verdict"] = verdict
        if gate is not None:
            all_tags["lifelong.gate"] = gate if isinstance(gate, str) else json.dumps(gate)
        source = f"runs:/{self.run_id}/model"
        return int(client.create_model_version(name, source, run_id=self.run_id, tags=all_tags).version)

    def crown(self, version: int, by: str = "gate", reason: str = "passed every rule") -> None:
        registry.set_champion(self.client, NAME, version, by=by, reason=reason)
        time.sleep(0.005)  # distinct ``since`` milliseconds, as champions moved by separate runs have

    def champion(self, name: str = NAME) -> int:
        return int(self.client.get_model_version_by_alias(name, "champion").version)

    def tags(self, version: int, name: str = NAME) -> dict[str, str]:
        return self.client.get_model_version(name, str(version)).tags

    def lineage(self) -> None:
        """v1-v4 of NAME: the gate crowned v1 then v2; v3 failed; v4 passed and is the challenger."""
        for version, scores in SCORES.items():
            failed = version == 3
            self.register(NAME, version - 1, scores, "failed" if failed else "passed", FAILED_GATE if failed else None)
        self.crown(1)
        self.crown(2)
        self.client.set_registered_model_alias(NAME, "challenger", "4")


@pytest.fixture
def store(tmp_path, empty_db) -> Store:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def lineage(store) -> Store:
    store.lineage()
    return store


def run(store: Store, *args: str, code: int = 0):
    """``lifelong models ARGS --tracking-uri STORE`` in-process; asserts the exit status."""
    result = CliRunner().invoke(models, [*args, "--tracking-uri", store.uri])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


# -- list ----------------------------------------------------------------------------------------
def test_list_without_a_name_shows_the_models_holding_generations(lineage):
    lineage.register("not-lifelong", None)  # a version lifelong did not write: no such model in the list
    lines = run(lineage, "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "LATEST", "CHAMPION", "CHALLENGER"]
    assert [line.split() for line in lines[1:]] == [[NAME, "4", "v4", "v2", "v4"]]
    listed = json.loads(run(lineage, "list", "--json").stdout)
    assert listed["tracking_uri"] == lineage.uri
    assert listed["models"] == [
        {
            "name": NAME,
            "versions": 4,
            "latest": 4,
            "champion": 2,
            "challenger": 4,
            "aliases": {"champion": 2, "challenger": 4},
        }
    ]


def test_list_a_name_shows_each_version_newest_first(lineage):
    lines = run(lineage, "list", NAME).stdout.splitlines()
    header = lines[0]
    assert header.split()[:8] == ["VERSION", "GEN", "SESSION", "PARENT", "ACC", "N", "GATE", "ALIASES"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["v4", "v3", "v2", "v1"]
    for version, scores in SCORES.items():  # ACC is the mean of the version's scores, N their count
        cells = rows[f"v{version}"].split()
        assert cells[1:6] == [
            str(version - 1),
            "01234567",
            str(version - 2) if version > 1 else "none",
            f"{sum(scores) / len(scores):.3f}",
            str(len(scores)),
        ]
    assert "failed: max_forgetting=0.21" in rows["v3"]
    assert rows["v4"].split()[6:8] == ["passed", "challenger"]
    assert rows["v2"].split()[6:8] == ["passed", "champion"]
    assert "gate" in rows["v2"] and "passed every rule" in rows["v2"]
    # Every column starts at the same place on every line: an aligned table.
    start = header.index("ALIASES")
    assert {line[start - 2 : start] for line in lines} == {"  "}


def test_list_json_carries_every_score_the_verdict_and_the_champion_record(lineage):
    listed = json.loads(run(lineage, "list", NAME, "--json").stdout)
    assert listed["aliases"] == {"champion": 2, "challenger": 4}
    by_version = {v["version"]: v for v in listed["versions"]}
    assert [v["version"] for v in listed["versions"]] == [4, 3, 2, 1]
    v3, v2 = by_version[3], by_version[2]
    assert v3["scores"] == {"0": 0.6, "1": 0.7, "2": 0.95} and v3["n_scores"] == 3
    assert v3["acc"] == pytest.approx(0.75)
    assert v3["verdict"] == "failed" and v3["failed_rules"] == {"max_forgetting": 0.21}
    assert v3["gate"] == FAILED_GATE and v3["champion"] is None and v3["aliases"] == []
    assert (v3["generation"], v3["session"], v3["parent"]) == (2, "0123456789abcdef", "1")
    assert v2["aliases"] == ["champion"]
    assert v2["champion"]["by"] == "gate" and v2["champion"]["reason"] == "passed every rule"
    assert v2["champion"]["since"] > by_version[1]["champion"]["since"]


def test_list_tolerates_missing_and_unreadable_gate_tags(store):
    store.register(NAME, 0, [0.9])  # never judged
    store.register(NAME, 1, [0.9], verdict="failed", gate="{not json")
    store.register(
        NAME,
        2,
        [0.9],
        gate={
            "passed": False,
            "rules": {"min_acc": "?", "min_new_score": {"value": 1}, "acc_tolerance": {"passed": False}},
        },
    )
    held = "passed, but champion v1 was set by hand"
    store.register(NAME, 3, [0.9], verdict="passed", **{"lifelong.gate.held": held})
    rows = {v["version"]: v for v in json.loads(run(store, "list", NAME, "--json").stdout)["versions"]}
    assert (rows[1]["verdict"], rows[1]["gate"]) == (None, None)
    assert (rows[4]["verdict"], rows[4]["held"], rows[1]["held"]) == ("passed", held, None)
    assert (rows[2]["verdict"], rows[2]["gate"], rows[2]["failed_rules"]) == ("failed", None, {})
    assert (rows[3]["verdict"], rows[3]["failed_rules"]) == ("failed", {"acc_tolerance": None})
    table = run(store, "list", NAME).stdout
    assert "failed: acc_tolerance" in table and "passed (held)" in table


def test_listing_pages_through_the_store(store):
    """Small pages give the same answer as one big page: the page tokens are followed to the end."""
    for generation in range(5):
        store.register(NAME, generation, [0.5])
    store.register("second", 0, [0.5])
    store.register("second", 1, [0.5])
    everything = registry.versions(store.client, NAME)
    assert [v.version for v in everything] == [5, 4, 3, 2, 1]
    assert registry.versions(store.client, NAME, page_size=2) == everything
    paged = registry.models(store.client, page_size=1)
    assert [(m.name, m.versions, m.latest) for m in paged] == [(NAME, 5, 5), ("second", 2, 2)]


# -- promote -------------------------------------------------------------------------------------
def test_promote_moves_the_champion_and_records_who_when_and_why(lineage):
    before = int(time.time() * 1000)
    result = cli("models", "promote", NAME, "4", "--reason", "ops: v4 looks right", "--tracking-uri", lineage.uri)
    after = int(time.time() * 1000)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "champion: v2 -> v4 (promote: ops: v4 looks right)"
    assert "warning" not in result.stderr
    assert lineage.champion() == 4
    tags = lineage.tags(4)
    assert tags["lifelong.champion.by"] == "promote" and tags["lifelong.champion.reason"] == "ops: v4 looks right"
    assert before <= int(tags["lifelong.champion.since"]) <= after


def test_promoting_a_version_that_failed_the_gate_warns_but_overrides(lineage):
    result = run(lineage, "promote", NAME, "v3", "--reason", "known good on prod traffic")
    assert "warning: v3 failed the promotion gate (max_forgetting)" in result.stderr
    assert result.stdout.strip() == "champion: v2 -> v3 (promote: known good on prod traffic)"
    assert lineage.champion() == 3


def test_promoting_the_champion_moves_nothing(lineage):
    since = lineage.tags(2)["lifelong.champion.since"]
    assert (
        run(lineage, "promote", NAME, "2", "--reason", "again").stdout.strip() == "champion: v2 already; nothing moved"
    )
    assert lineage.tags(2)["lifelong.champion.since"] == since


# -- rollback ------------------------------------------------------------------------------------
def test_rollback_walks_back_through_earlier_champions_skipping_rolled_back_ones(lineage):
    # Champions so far, oldest first: v1, v2, v1 again, v4. "Previous" is by time, not by version number.
    lineage.crown(1, by="promote", reason="v2 misbehaves")
    lineage.crown(4, by="promote", reason="try v4")
    out = run(lineage, "rollback", NAME, "--reason", "v4 drops on exp 1").stdout
    assert out.splitlines() == ["champion: v4 -> v1 (rollback: v4 drops on exp 1)", "v4 is marked rolled back"]
    assert lineage.champion() == 1
    assert lineage.tags(4)["lifelong.rolled_back"] == "v4 drops on exp 1"
    assert (lineage.tags(1)["lifelong.champion.by"], lineage.tags(1)["lifelong.champion.reason"]) == (
        "rollback",
        "v4 drops on exp 1",
    )
    # v4 became champion after v2 but is rolled back from: the next rollback goes past it, to v2.
    assert run(lineage, "rollback", NAME, "--reason", "v1 too").stdout.startswith("champion: v1 -> v2 ")
    assert lineage.champion() == 2 and lineage.tags(1)["lifelong.rolled_back"] == "v1 too"
    error = run(lineage, "rollback", NAME, "--reason", "and again", code=2).stderr
    assert "no earlier champion to roll back to from v2" in error and "--to VERSION" in error
    assert lineage.champion() == 2 and "lifelong.rolled_back" not in lineage.tags(2)  # nothing written


def test_previous_champion_is_the_last_one_before_the_current():
    def v(version, since, rolled_back=None):
        return registry.VersionInfo(NAME, version, since=since, rolled_back=rolled_back)

    rows = [v(1, 300), v(2, 100), v(3, 200, rolled_back="bad"), v(4, 400), v(5, None), v(6, 500)]
    assert registry.previous_champion(rows, rows[3]).version == 1  # v6 came later, v3 is rolled back from
    assert registry.previous_champion(rows, rows[0]).version == 2
    assert registry.previous_champion(rows, rows[1]) is None
    # A champion whose alias moved outside lifelong (no ``since``) counts as the newest.
    assert registry.previous_champion(rows, rows[4]).version == 6


def test_rollback_to_a_chosen_version(lineage):
    result = run(lineage, "rollback", NAME, "--to", "3", "--reason", "v3 it is")
    assert result.stdout.startswith("champion: v2 -> v3 (rollback: v3 it is)")
    assert "v3 failed the promotion gate" in result.stderr
    assert lineage.champion() == 3 and lineage.tags(2)["lifelong.rolled_back"] == "v3 it is"
    # --to may go back to a version rolled back from (a plain rollback never does), with a warning.
    result = run(lineage, "rollback", NAME, "--to", "v2", "--reason", "v2 after all")
    assert "rolled back from v2 before: v3 it is" in result.stderr and lineage.champion() == 2
    assert "already champion" in run(lineage, "rollback", NAME, "--to", "2", "--reason", "x", code=2).stderr


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["list", "nope"], "there is no registered model 'nope'"),
        (["promote", "nope", "1", "--reason", "r"], "there is no registered model 'nope'"),
        (["rollback", "nope", "--reason", "r"], "there is no registered model 'nope'"),
        (["promote", NAME, "9", "--reason", "r"], f"registered model '{NAME}' has no version 9"),
        (["rollback", NAME, "--to", "9", "--reason", "r"], f"registered model '{NAME}' has no version 9"),
        (["promote", NAME, "latest", "--reason", "r"], "version 'latest' is not a version number"),
        (["promote", NAME, "1", "--reason", " "], "--reason must say why"),
        (["promote", NAME, "1"], "Missing option '--reason'"),
        (["rollback", NAME], "Missing option '--reason'"),
    ],
)
def test_user_errors_exit_2_with_one_paragraph(lineage, args, message):
    error = run(lineage, *args, code=2).stderr
    assert message in error
    assert len(error.strip().splitlines()) == 1 or error.startswith("Usage:")


def test_rollback_without_a_champion_says_what_to_do(store):
    store.register(NAME, 0, [0.9])
    error = run(store, "rollback", NAME, "--reason", "r", code=2).stderr
    assert f"has no champion to roll back from; make one with `lifelong models promote {NAME} VERSION" in error


def test_a_missing_sqlite_store_is_named_not_created(tmp_path):
    db = tmp_path / "nothing-here.db"
    result = CliRunner().invoke(models, ["list", "--tracking-uri", f"sqlite:///{db}"])
    assert result.exit_code == 2 and f"there is no MLflow store at {db}" in result.stderr
    assert not db.exists()


def test_an_unreachable_server_fails_in_seconds(tmp_path):
    """Nothing listens on the port: the user's command answers at once, and says which store is down."""
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = cli("models", "list", NAME, "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach the MLflow store at {uri}" in result.stderr and "Connection refused" in result.stderr
    assert time.monotonic() - started < 20  # the interpreter and MLflow's import take most of it


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_in_seconds(tmp_path, monkeypatch):
    """A port that accepts but never replies: the CLI's short timeout and single retry end it in ~10 s, not minutes."""
    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts connections; nobody reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = CliRunner().invoke(models, ["promote", NAME, "1", "--reason", "r", "--tracking-uri", uri])
        elapsed = time.monotonic() - started
    assert result.exit_code == 2 and "cannot reach the MLflow store" in result.stderr and "timed out" in result.stderr
    assert elapsed < 20
    assert not set(HTTP_DEFAULTS) & set(os.environ)  # the defaults held for the command only


# -- a real server -------------------------------------------------------------------------------
@pytest.mark.slow
def test_list_promote_and_rollback_through_a_real_mlflow_server(tmp_path):
    """In-process where that is enough (the HTTP store is the same); the rollback as a user runs it."""
    with mlflow_server(tmp_path) as uri:
        store = Store(uri)
        store.lineage()
        listed = json.loads(run(store, "list", NAME, "--json").stdout)
        assert [v["version"] for v in listed["versions"]] == [4, 3, 2, 1]
        assert listed["aliases"] == {"champion": 2, "challenger": 4}
        assert listed["versions"][1]["failed_rules"] == {"max_forgetting": 0.21}
        # The server's page tokens are text, sqlite's bytes: both are followed to the end.
        assert [v.version for v in registry.versions(store.client, NAME, page_size=3)] == [4, 3, 2, 1]
        assert "failed the promotion gate" in run(store, "promote", NAME, "3", "--reason", "override").stderr
        assert store.champion() == 3 and store.tags(3)["lifelong.champion.by"] == "promote"
        result = cli("models", "rollback", NAME, "--reason", "v3 forgets", "--tracking-uri", uri)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("champion: v3 -> v2 (rollback: v3 forgets)")
        assert store.champion() == 2 and store.tags(3)["lifelong.rolled_back"] == "v3 forgets"
        assert run(store, "list").stdout.splitlines()[1].split() == [NAME, "4", "v4", "v2", "v4"]


def test_acc_counts_only_the_experiences_the_lineage_trained_on(store):
    """A benchmark scores a generation on future experiences too (near 0): ACC must leave them out."""
    store.register(NAME, 0, [0.9, 0.0, 0.1], **{"lifelong.experiences_covered": "[0]"})
    store.register(NAME, 1, [0.8, 0.9, 0.0], **{"lifelong.experiences_covered": "[0, 1]"})
    listed = {v["version"]: v for v in json.loads(run(store, "list", NAME, "--json").stdout)["versions"]}
    assert listed[1]["acc"] == pytest.approx(0.9) and listed[1]["n_scores"] == 1
    assert listed[2]["acc"] == pytest.approx(0.85) and listed[2]["n_scores"] == 2
    assert len(listed[2]["scores"]) == 3  # every score is still there
