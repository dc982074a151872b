"""The plugin host: finds plugins, records where each came from, and holds their components.

Plugins come from three places, in this order: the ``lifelong`` entry-point group (first-party
plugins register exactly like third-party ones), modules named with ``--plugin`` and modules in the
``LIFELONG_PLUGINS`` environment variable (comma-separated). Modules named with ``--plugin`` or
``LIFELONG_PLUGINS`` are imported with the current directory on ``sys.path`` (first, as
``python -m`` does), so ``lifelong --plugin mymodule`` finds ``./mymodule.py``. ``--block NAME`` or
``LIFELONG_BLOCK_PLUGINS`` keeps a plugin out. A plugin that fails to import (an optional dependency
is missing) does not break the host: it is listed as unavailable with the reason and a hint: the
extra that provides the dependency (``pip install '.[extra]'`` from the lifelong checkout for
lifelong's own plugins, which are not published on a package index), ``pip install`` for another
missing dependency, or, for a ``--plugin`` module that is itself not found, where it was looked for.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from lifelong import hookspecs
from lifelong import options as opts
from lifelong.errors import ConfigError, UserError

ENTRY_POINT_GROUP = "lifelong"
KINDS = ("reader", "model", "strategy", "tracker", "boundary_detector")
RESERVED_COMMANDS = ("run", "plugins")  # the kernel's own subcommands
_REGISTER_HOOK = {
    "reader": "register_readers",
    "model": "register_models",
    "strategy": "register_strategies",
    "tracker": "register_trackers",
    "boundary_detector": "register_boundary_detectors",
}


@dataclass
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    options: type
    help: str
    plugin: str
    # A model component that loads weights from a path or URI its options name (``file``, ``mlflow``):
    # a stored generation or checkpoint never rebuilds through one (Components.build_generation).
    initializer: bool = False

    def describe(self) -> dict[str, Any]:
        described = {
            "kind": self.kind,
            "name": self.name,
            "help": self.help,
            "plugin": self.plugin,
            "options": opts.describe(self.options),
        }
        if self.initializer:
            described["initializer"] = True
        if self.kind == "strategy":  # how it trains across data-parallel ranks; "" when it cannot
            described["data_parallel"] = getattr(self.factory, "data_parallel", "") or ""
        return described


@dataclass
class PluginRecord:
    name: str
    source: str  # "built-in", "entry point (dist x.y)", "path"
    module: str
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    available: bool = True
    reason: str = ""
    hint: str = ""


def _split_env(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra_requirement(dist: md.Distribution, top: str) -> tuple[str, str] | None:
    """(extra, requirement) of ``dist``'s optional dependency that provides the module ``top``."""
    for req in dist.requires or []:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)([^;]*);.*extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if not match:
            continue
        name = _normalise(match.group(1))
        # the module is the distribution's name (mlxtend) or its first word (avalanche of avalanche-lib)
        if name.replace("-", "") == top.replace("-", "") or name.startswith(top + "-"):
            return match.group(3), f"{match.group(1)}{match.group(2).strip()}"
    return None


def _install_hint(dist: md.Distribution | None, missing: str | None) -> str:
    """Point at the extra of ``dist`` that provides ``missing``, else at the module itself.

    lifelong is installed from its checkout, not from a package index, so an extra of lifelong
    itself is ``pip install '.[extra]'`` run in the checkout (or the requirement on its own).
    """
    if not missing:
        return ""
    top = _normalise(missing.split(".")[0])
    if dist is not None:
        found = _extra_requirement(dist, top)
        if found is not None:
            extra, requirement = found
            name = dist.metadata["Name"]
            if _normalise(name) == "lifelong":
                return f"pip install '.[{extra}]' in the lifelong checkout (or pip install '{requirement}')"
            return f"pip install '{name}[{extra}]'"
    return f"pip install {missing.split('.')[0]}"


def _not_found_hint(module: str) -> str:
    """The hint for a ``--plugin`` / ``LIFELONG_PLUGINS`` module that is itself not importable."""
    first = module.split(".")[0]
    return (
        f"module {module!r} was not found on the Python path, which includes the current directory "
        f"({os.getcwd()}): check the name, run lifelong where {first}.py (or the package {first}/) is, "
        f"or install the distribution that provides it"
    )


def _with_cwd_on_path() -> None:
    """The current directory first on ``sys.path``, as ``python -m`` puts it (once)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def kernel_options() -> dict[str, list[dict[str, Any]]]:
    """Rows (:func:`lifelong.options.describe`) of the kernel's own sections: learner, checkpoint, promotion, distributed."""
    from lifelong.config import CheckpointOptions, LearnerOptions  # lazily: config is the kernel's, not the host's
    from lifelong.distributed import DistributedOptions
    from lifelong.promotion import PromotionOptions

    return {
        "learner": opts.describe(LearnerOptions),
        "checkpoint": opts.describe(CheckpointOptions),
        "promotion": opts.describe(PromotionOptions),
        "distributed": opts.describe(DistributedOptions),
    }


class PluginHost:
    """Loads plugins and collects their components; one per process (the CLI) or per test."""

    def __init__(self, plugins: list[str] = (), blocked: list[str] = (), entry_points: bool = True):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs.RegistrationSpecs)
        self.records: dict[str, PluginRecord] = {}
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.commands: dict[str, tuple[Any, str]] = {}  # subcommand name -> (click command, plugin)
        self.blocked = sorted({*blocked, *_split_env("LIFELONG_BLOCK_PLUGINS")})
        for name in self.blocked:
            self.pm.set_blocked(name)
        if entry_points:
            self._load_entry_points()
        by_path = [*plugins, *_split_env("LIFELONG_PLUGINS")]
        if by_path:
            _with_cwd_on_path()
        for module in by_path:
            self._load_module(module, module, "path", None)
        self._collect()

    def _load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            builtin = dist is not None and _normalise(dist.metadata["Name"]) == "lifelong"
            source = "built-in" if builtin else f"entry point ({dist.metadata['Name'] if dist else '?'})"
            version = dist.version if dist is not None else None
            self._load_module(ep.name, ep.value, source, version, dist)

    def _load_module(
        self, name: str, module: str, source: str, version: str | None, dist: md.Distribution | None = None
    ) -> None:
        if self.pm.is_blocked(name) or name in self.records:
            return
        record = PluginRecord(name=name, source=source, module=module, version=version)
        self.records[name] = record
        try:
            plugin = importlib.import_module(module)
        except ImportError as exc:
            record.available = False
            record.reason = f"{type(exc).__name__}: {exc}"
            missing = getattr(exc, "name", None)
            if source == "path" and missing and (module == missing or module.startswith(missing + ".")):
                record.hint = _not_found_hint(module)  # the named module itself, not a dependency
            else:
                record.hint = _install_hint(dist, missing)
            return
        if record.version is None:
            record.version = getattr(plugin, "__version__", None)
        self.pm.register(plugin, name=name)
        record.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])

    def _collect(self) -> None:
        for kind, hook_name in _REGISTER_HOOK.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                impl.function(**{"register": self._registrar(kind, impl.plugin_name)})
        for impl in self.pm.hook.register_commands.get_hookimpls():
            impl.function(register=self._command_registrar(impl.plugin_name))

    def _command_registrar(self, plugin: str) -> Callable[[Any], None]:
        def register(command: Any) -> None:
            name = getattr(command, "name", None)
            if not name:
                raise UserError(f"plugin {plugin!r} registered a command without a name: {command!r}")
            if name in RESERVED_COMMANDS:
                raise UserError(f"plugin {plugin!r} registers the command {name!r}, which is lifelong's own")
            if name in self.commands:
                raise UserError(f"command {name!r} is registered by both plugin {self.commands[name][1]!r} and plugin {plugin!r}")
            self.commands[name] = (command, plugin)

        return register

    def _registrar(self, kind: str, plugin: str) -> Callable[..., None]:
        def register(
            name: str, factory: Callable[..., Any], options: type = opts.NoOptions, help: str = "", initializer: bool = False
        ) -> None:
            if name in self.components[kind]:
                other = self.components[kind][name].plugin
                raise UserError(f"{kind} {name!r} is registered by both plugin {other!r} and plugin {plugin!r}")
            self.components[kind][name] = Component(kind, name, factory, options, help, plugin, initializer)

        return register

    def component(self, kind: str, name: str, where: str) -> Component:
        """The component ``name`` of ``kind``; an unknown name is a UserError listing the known ones."""
        found = self.components[kind].get(name)
        if found is not None:
            return found
        known = ", ".join(sorted(self.components[kind])) or "none"
        message = f"unknown {kind.replace('_', ' ')} {name!r} (available: {known})"
        unavailable = [r for r in self.records.values() if not r.available]
        if unavailable:
            message += "; unavailable plugins: " + ", ".join(f"{r.name} ({r.hint or r.reason})" for r in unavailable)
        raise ConfigError(where, message)

    def describe(self) -> dict[str, Any]:
        """Everything ``lifelong plugins --json`` prints."""
        plugins = []
        for record in self.records.values():
            entry = {
                "name": record.name,
                "source": record.source,
                "module": record.module,
                "version": record.version,
                "available": record.available,
                "hooks": record.hooks,
                "components": [
                    c.describe() for kind in KINDS for c in self.components[kind].values() if c.plugin == record.name
                ],
                "commands": sorted(name for name, (_, plugin) in self.commands.items() if plugin == record.name),
            }
            if not record.available:
                entry["reason"] = record.reason
                entry["hint"] = record.hint
            plugins.append(entry)
        return {"plugins": plugins, "blocked": self.blocked, "kernel_options": kernel_options()}
