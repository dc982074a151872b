"""docs/plugins.md documents every hook and every built-in component, exactly as the code says."""

import inspect
from pathlib import Path

from lifelong import docgen, hookspecs
from lifelong.host import KINDS, PluginHost

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def test_every_hookspec_is_documented():
    text = DOC.read_text()
    for spec in (hookspecs.RegistrationSpecs, hookspecs.LifecycleSpecs):
        for name, fn in inspect.getmembers(spec, inspect.isfunction):
            assert f"### `{name}(" in text, f"hook {name} is missing from docs/plugins.md"
            assert fn.__doc__, f"hook {name} has no docstring"


def test_every_builtin_component_and_option_is_documented():
    text = DOC.read_text()
    host = PluginHost()
    for kind in KINDS:
        for comp in host.components[kind].values():
            if host.records[comp.plugin].source != "built-in":
                continue
            assert f"#### `{comp.name}`" in text, f"{kind} {comp.name} is missing from docs/plugins.md"
            for option in comp.describe()["options"]:
                assert f"| `{option['name']}` |" in text


def test_the_reference_is_up_to_date():
    assert DOC.read_text() == docgen.render(), "regenerate: python -m lifelong.docgen > docs/plugins.md"


def test_every_kernel_option_is_documented():
    text = DOC.read_text()
    assert "## Kernel options" in text, "docs/plugins.md has no Kernel options section"
    section = text.split("## Kernel options", 1)[1].split("## Built-in components", 1)[0]
    kernel = PluginHost().describe()["kernel_options"]
    assert set(kernel) == {"learner", "checkpoint", "promotion", "distributed"}
    for name, rows in kernel.items():
        table = section.split(f"### `[{name}]`", 1)[1].split("### ", 1)[0]
        for row in rows:
            assert f"| `{row['name']}` |" in table, f"{name}.{row['name']} is missing from docs/plugins.md"
