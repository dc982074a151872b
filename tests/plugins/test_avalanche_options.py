"""The ``avalanche`` strategy without Avalanche: it loads, validates its options, refuses plugins that
need Avalanche's own loop, and points at the install when Avalanche is missing.

These run in the core suite (no Avalanche there); the adapter's behaviour with Avalanche installed is
tests/plugins/test_avalanche_adapter.py, which runs in .venv-avalanche.
"""

from __future__ import annotations

import sys

import pytest

from lifelong import config, pipeline
from lifelong.errors import ConfigError, UserError
from lifelong.host import PluginHost
from lifelong_avalanche import catalogue
from lifelong_avalanche.adapter import AvalancheOptions, make
from tests.conftest import QUIET


def avalanche_host() -> PluginHost:
    """A host with the plugin: by its entry point once installed with one, else loaded by module name."""
    host = PluginHost()
    if "avalanche" not in host.components["strategy"]:
        host = PluginHost(plugins=["lifelong_avalanche"])
    return host


def build(tmp_path, *overrides):
    raw = config.load(None, [*QUIET, "tracking.trackers=[]", "learner.strategies=['avalanche']", *overrides])
    return pipeline.build(avalanche_host(), raw, tmp_path / "dead_letters.jsonl")


def test_without_avalanche_the_factory_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "avalanche", None)  # import avalanche now raises ImportError
    with pytest.raises(UserError) as caught:
        make(AvalancheOptions(plugin="SynapticIntelligencePlugin", args={"si_lambda": 1.0}))
    message = str(caught.value)
    assert message.startswith("strategy.avalanche: Avalanche is not importable")
    assert "pip install '.[avalanche]' in the lifelong checkout" in message  # lifelong is on no package index
    assert "pip install 'avalanche-lib==0.6.0'" in message and "lifelong[avalanche]" not in message
    assert "torchvision" in message and "bench/avalanche_env.sh" in message and "docs/avalanche.md" in message


def test_without_avalanche_a_pipeline_fails_before_training_with_the_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "avalanche", None)
    with pytest.raises(UserError, match=r"pip install '\.\[avalanche\]' in the lifelong checkout"):
        build(tmp_path, "strategy.avalanche.plugin='MAS'")


@pytest.mark.parametrize("name", ["ReplayPlugin", "GDumb", "bicplugin", "GSS_greedyPlugin", "RARPlugin"])
def test_plugins_that_replace_the_data_loader_are_refused_with_the_replay_hint(tmp_path, name):
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, f"strategy.avalanche.plugin='{name}'")
    message = str(caught.value)
    assert message.startswith("strategy.avalanche: plugin: Avalanche's ")
    assert catalogue.canonical(name) in message
    assert "DataLoader" in message and "`replay` strategy" in message


@pytest.mark.parametrize("name, words", [("CWRStarPlugin", "before training"), ("EvaluationPlugin", "accuracy matrix"), ("LRSchedulerPlugin", "optimizer")])
def test_other_refusals_say_why(name, words):
    with pytest.raises(ConfigError, match=words):
        from lifelong import options as opts

        opts.validate(AvalancheOptions, {"plugin": name}, "strategy.avalanche")


def test_an_unknown_plugin_lists_the_supported_ones(tmp_path):
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, "strategy.avalanche.plugin='SynapticIntelligense'")
    message = str(caught.value)
    assert "unknown Avalanche plugin 'SynapticIntelligense'" in message
    for name in catalogue.SUPPORTED:
        assert name in message


def test_a_missing_plugin_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="name the Avalanche plugin"):
        build(tmp_path)


def test_args_must_be_a_table(tmp_path):
    with pytest.raises(ConfigError, match=r"strategy\.avalanche\.args: expected a table"):
        build(tmp_path, "strategy.avalanche.plugin='MAS'", "strategy.avalanche.args=3")


def test_names_resolve_with_or_without_the_suffix_in_any_case():
    assert catalogue.canonical("SynapticIntelligence") == "SynapticIntelligencePlugin"
    assert catalogue.canonical("lwf") == "LwFPlugin"
    assert catalogue.canonical("GSS_greedy") == "GSS_greedyPlugin"
    assert catalogue.canonical("Nope") is None
    assert not set(catalogue.SUPPORTED) & set(catalogue.REFUSED)


def test_the_catalogue_matches_avalanche_when_it_is_installed():
    """Every name in the catalogue is a class of avalanche.training.plugins (0.6.0), when available."""
    plugins = pytest.importorskip("avalanche.training.plugins", reason="Avalanche is not installed here")
    from avalanche.training.plugins import checkpoint

    for name in [*catalogue.SUPPORTED, *catalogue.REFUSED]:
        assert hasattr(plugins, name) or hasattr(checkpoint, name), name
