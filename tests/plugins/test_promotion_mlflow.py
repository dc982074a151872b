"""The promotion gate in the MLflow registry: verdict tags, ``challenger`` and ``champion`` aliases, hand moves held."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lifelong.errors import ConfigError
from lifelong_mlflow import registry
from lifelong_mlflow.options import MLflowOptions
from lifelong_mlflow.tracker import MLflowTracker
from tests.conftest import run_pipeline


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A naive Split-Digits run (it forgets at every experience) with the gate on, into a sqlite store."""
    tmp = tmp_path_factory.mktemp("gated")
    uri = f"sqlite:///{tmp / 'store.db'}"
    summary, _ = run_pipeline(
        tmp,
        [
            "tracking.trackers=['mlflow']",
            f"tracking.mlflow.tracking_uri='{uri}'",
            "tracking.mlflow.registered_model='gated'",
            "promotion.max_forgetting=0.05",
        ],
    )
    return summary, MlflowClient(uri)


def test_every_version_carries_its_verdict_and_champion_moves_only_on_a_pass(gated):
    summary, client = gated
    passed = summary["champion"]["passed"]
    assert passed == [0]  # naive forgets the old classes at every later experience
    versions = {int(v.version): v for v in client.search_model_versions("name = 'gated'")}
    assert sorted(versions) == [1, 2, 3, 4, 5]
    for row in summary["generations"]:
        tags = versions[row["version"]].tags
        assert tags[registry.VERDICT_TAG] == ("passed" if row["promotion"]["passed"] else "failed")
        assert json.loads(tags[registry.GATE_TAG]) == row["promotion"]
        forgetting = row["promotion"]["rules"]["max_forgetting"]["value"]
        shown = tags["lifelong.gate.max_forgetting"]
        assert shown == "n/a" if forgetting is None else float(shown) == pytest.approx(forgetting, rel=1e-5)
    aliases = client.get_registered_model("gated").aliases
    assert aliases == {registry.CHALLENGER: 5, registry.CHAMPION: 1}
    first = versions[1].tags
    assert first[registry.BY_TAG] == "gate" and "passed" in first[registry.REASON_TAG]
    assert registry.SINCE_TAG not in versions[2].tags
    assert versions[3].tags["lifelong.gate.champion_version"] == "1"


def test_the_registry_records_each_version_s_weights_digest(gated, tmp_path):
    from mlflow.artifacts import download_artifacts

    from lifelong_mlflow import pyfunc

    _, client = gated
    local = download_artifacts(
        artifact_uri=client.get_model_version_download_uri("gated", "2"),
        dst_path=str(tmp_path),
        tracking_uri=client.tracking_uri,
    )
    recorded = client.get_model_version("gated", "2").tags[registry.WEIGHTS_DIGEST_TAG]
    assert pyfunc.file_digest(Path(local) / "artifacts" / pyfunc.WEIGHTS) == recorded


def test_a_champion_set_by_hand_during_the_run_is_not_overruled(gated, tmp_path):
    """The gate passes version 3, but a person rolled the champion back after the run's last move."""
    _, client = gated
    uri = client.tracking_uri
    tracker = MLflowTracker(MLflowOptions(tracking_uri=uri, registered_model="gated"))
    tracker._client, tracker._crowned_at = client, 0
    registry.set_champion(client, "gated", 2, by="rollback", reason="v1 misbehaves in production")
    tracker._promote("gated", "3", {"passed": True, "reason": "passed"}, {})
    assert client.get_registered_model("gated").aliases[registry.CHAMPION] == 2
    assert "set by hand" in client.get_model_version("gated", "3").tags[registry.HELD_TAG]
    # a hand move older than the run's own last move does not hold
    tracker._crowned_at = 10**15
    tracker._promote("gated", "3", {"passed": True, "reason": "passed"}, {})
    assert client.get_registered_model("gated").aliases == {registry.CHAMPION: 3, registry.CHALLENGER: 3}
    assert client.get_model_version("gated", "3").tags[registry.BY_TAG] == "gate"


def test_an_alias_that_the_gate_owns_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="promotion"):
        run_pipeline(
            tmp_path,
            [
                "tracking.trackers=['mlflow']",
                f"tracking.mlflow.tracking_uri='sqlite:///{tmp_path / 'store.db'}'",
                "tracking.mlflow.alias='champion'",
                "promotion.max_forgetting=0.05",
            ],
        )
    assert not (tmp_path / "store.db").exists()  # refused before anything opened
