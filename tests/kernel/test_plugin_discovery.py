"""Plugins are found through entry points, --plugin and LIFELONG_PLUGINS, can be blocked, and a plugin
whose dependency is missing is listed as unavailable instead of breaking the host."""

import json
import subprocess
import sys
import textwrap

import pytest

from lifelong.host import PluginHost
from tests.conftest import cli

PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass

    from lifelong import hookimpl


    @dataclass
    class ShrinkOptions:
        factor: float = 0.5


    class Shrink:
        """Scales every gradient before the step: a third-party strategy."""

        def __init__(self, options):
            self.factor = options.factor
            self.steps = 0

        @hookimpl
        def before_optimizer_step(self, model):
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.factor)
            self.steps += 1

        def state_dict(self):
            return {"steps": self.steps}


    @hookimpl
    def register_strategies(register):
        register("shrink", Shrink, options=ShrinkOptions, help="scales gradients")
    '''
)

BROKEN = "import lifelong_missing_dependency_xyz  # not installed anywhere\n"

PYPROJECT = textwrap.dedent(
    """
    [build-system]
    requires = ["setuptools>=68"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "lifelong-shrink-demo"
    version = "1.2.3"

    [tool.setuptools]
    packages = ["lifelong_shrink_demo", "lifelong_broken_demo"]

    [project.entry-points.lifelong]
    shrink = "lifelong_shrink_demo"
    broken = "lifelong_broken_demo"
    """
)


@pytest.fixture
def installed_plugin(tmp_path):
    """A third-party plugin distribution built and pip-installed for this test, then uninstalled."""
    src = tmp_path / "dist"
    (src / "lifelong_shrink_demo").mkdir(parents=True)
    (src / "lifelong_shrink_demo" / "__init__.py").write_text(PLUGIN)
    (src / "lifelong_broken_demo").mkdir()
    (src / "lifelong_broken_demo" / "__init__.py").write_text(BROKEN)
    (src / "pyproject.toml").write_text(PYPROJECT)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-build-isolation", "--no-deps", str(src)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "lifelong-shrink-demo"], check=True, capture_output=True)


@pytest.mark.slow
def test_an_installed_third_party_plugin_is_discovered_and_used(installed_plugin, tmp_path):
    listed = cli("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    shrink = plugins["shrink"]
    assert shrink["source"] == "entry point (lifelong-shrink-demo)" and shrink["version"] == "1.2.3"
    assert shrink["hooks"] == ["register_strategies"]
    assert shrink["components"][0]["options"] == [{"name": "factor", "type": "float", "default": 0.5, "help": ""}]
    broken = plugins["broken"]
    assert not broken["available"] and "lifelong_missing_dependency_xyz" in broken["reason"]
    assert broken["hint"] == "pip install lifelong_missing_dependency_xyz"
    assert plugins["streams"]["source"] == "built-in"

    summary = tmp_path / "summary.json"
    result = cli(
        "run", "--set", "learner.strategies=['shrink']", "--set", "strategy.shrink.factor=0.0",
        "--set", "learner.progress=false", "--set", "tracking.trackers=[]", "--set", "learner.epochs=1",
        "--summary", str(summary), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # factor 0 zeroes every gradient: the model never moves from its initial accuracy
    data = json.loads(summary.read_text())
    assert data["accuracy_matrix"][-1] == data["initial_accuracy"]

    blocked = cli("--block", "shrink", "run", "--set", "learner.strategies=['shrink']", cwd=tmp_path)
    assert blocked.returncode == 2 and "unknown strategy 'shrink'" in blocked.stderr


def test_plugins_load_from_a_module_path_and_from_the_environment(monkeypatch):
    host = PluginHost(plugins=["tests.fixtures.recorder"])
    assert host.records["tests.fixtures.recorder"].source == "path"
    assert "recorder" in host.components["strategy"]
    monkeypatch.setenv("LIFELONG_PLUGINS", "tests.fixtures.recorder")
    assert "recorder" in PluginHost().components["strategy"]


def test_a_blocked_plugin_is_not_loaded(monkeypatch):
    assert "mlp" not in PluginHost(blocked=["models"]).components["model"]
    monkeypatch.setenv("LIFELONG_BLOCK_PLUGINS", "models,streams")
    host = PluginHost()
    # other plugins (pathnet, transfer) still register models and readers; none of the blocked ones do
    providers = {c.plugin for kind in ("model", "reader") for c in host.components[kind].values()}
    assert "mlp" not in host.components["model"] and "split-digits" not in host.components["reader"]
    assert not providers & {"models", "streams"}
    assert host.describe()["blocked"] == ["models", "streams"]


def test_a_missing_module_path_is_unavailable_not_fatal():
    host = PluginHost(plugins=["no_such_plugin_module"])
    record = host.records["no_such_plugin_module"]
    assert not record.available and "No module named 'no_such_plugin_module'" in record.reason
    assert "split-digits" in host.components["reader"]


def test_the_builtin_plugins_list_every_component_kind():
    described = PluginHost().describe()
    kinds = {c["kind"] for p in described["plugins"] for c in p["components"]}
    assert {"reader", "model", "strategy", "boundary_detector"} <= kinds
