"""Building registered components from inside a plugin, with the plugin host that started the run.

Some components build others: an initializer rebuilds the architecture a stored generation names,
PathNet rebuilds its backbone, a served generation rebuilds its model. They must see exactly the
plugins of the run (``--plugin``, ``--block``), so they ask the kernel's :class:`Components`
instead of constructing a plugin host of their own. A model factory that needs it declares a
keyword parameter ``components``; the kernel passes it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from lifelong import options as opts
from lifelong.errors import ConfigError, UserError
from lifelong.types import ModelSpec, StreamInfo

if TYPE_CHECKING:
    import torch

    from lifelong.host import Component, PluginHost


class Components:
    """The components of one plugin host; ``build_model`` builds a registered model from a spec."""

    def __init__(self, host: PluginHost):
        self.host = host

    @classmethod
    def default(cls) -> Components:
        """The components of a host loaded from entry points and ``LIFELONG_PLUGINS``, for a process
        that has no run (a serving process loading a generation)."""
        from lifelong.host import PluginHost

        return cls(PluginHost())

    def component(self, kind: str, name: str, where: str) -> Component:
        return self.host.component(kind, name, where)

    def build_model(self, spec: ModelSpec, where: str = "model") -> torch.nn.Module:
        """The model component ``spec.name`` built with ``spec.options`` (validated) for ``spec.info``."""
        model, _ = self.build_model_options(spec.name, spec.options, spec.info, where)
        return model

    def build_generation(self, spec: ModelSpec, where: str = "model.json") -> torch.nn.Module:
        """The model a stored generation's spec names, for weights the caller loads itself.

        A spec is data anyone who can write the artifact store can edit: it may name only an
        architecture. A component registered as an ``initializer`` (it reads weights from a path or
        URI in its options: ``file``, ``mlflow``) is refused, and so is any option that allows
        unpickling, so a tampered ``model.json`` cannot make a loader run ``torch.load`` on a pickle.
        """
        component = self.component("model", spec.name, f"{where}.name")
        if component.initializer:
            raise UserError(
                f"{where} names the initializer {spec.name!r}: a stored generation names the architecture its "
                "weights fit, never a component that loads weights from elsewhere (was the artifact edited?)"
            )
        if any(key == "allow_pickle" and value for key, value in _items(spec.options)):
            raise UserError(f"{where} sets allow_pickle: a stored generation never unpickles (was the artifact edited?)")
        return self.build_model(spec, where)

    def build_model_options(
        self, name: str, raw: dict[str, Any] | None, info: StreamInfo, where: str
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model component ``name`` with options ``raw``; returns the model and its resolved options."""
        component = self.component("model", name, f"{where}.name")
        validated = opts.validate(component.options, raw, f"{where}.options")
        return construct(component.factory, where, validated, info, components=self), opts.to_dict(validated)


def _items(options: Any):
    """Every (key, value) of nested options (an architecture's own options may nest another's)."""
    if isinstance(options, dict):
        for key, value in options.items():
            yield key, value
            yield from _items(value)
    elif isinstance(options, list):
        for value in options:
            yield from _items(value)


def construct(factory: Callable[..., Any], where: str, *args: Any, components: Components | None = None) -> Any:
    """Call a component factory; ValueError/TypeError become a ConfigError naming ``where``.

    ``components`` is passed only to factories that declare a ``components`` parameter.

    A **model** factory is one called with a :class:`~lifelong.types.StreamInfo` (``factory(options,
    info)``): every model the kernel builds comes through here — the run's ``[model]``, the
    architecture an initializer rebuilds (``file``, ``mlflow``), a served generation and PathNet's
    backbone (:meth:`Components.build_model`) — so this is where the stream's input scaling is
    attached (:func:`lifelong.scaling.standardized`, when ``info.normalize`` asks for it). Built from
    the same spec, a model thus always has the same buffers, and a generation's weights load into
    the model that serves or continues it.
    """
    kwargs = {}
    if components is not None and _accepts(factory, "components"):
        kwargs["components"] = components
    try:
        built = factory(*args, **kwargs)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, str(exc)) from None
    info = next((a for a in args if isinstance(a, StreamInfo)), None)
    if info is not None and info.normalize is not None:
        import torch

        from lifelong.scaling import standardized

        if isinstance(built, torch.nn.Module):
            built = standardized(built, info, where)
    return built


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
