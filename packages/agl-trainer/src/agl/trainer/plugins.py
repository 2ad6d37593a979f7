"""Finding plugins: a fresh pluggy manager per use, loaded from the ``agl.trainer`` entry points.

A plugin that fails to import, or whose registration hook raises, is reported by name (see
`PluginManager.failures`, shown by ``agl algorithms``) and the others still work. Tests build a
manager with ``plugin_manager(load_entrypoints=False)`` and register fakes on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from agl.trainer import hookspecs

ENTRY_POINT_GROUP = "agl.trainer"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, or whose hook raised."""

    name: str
    error: str
    distribution: str | None = None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which distribution each plugin came from and what failed."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.distributions: dict[str, str] = {}  # plugin name -> distribution that provided it

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Register every plugin of ``group`` (like pluggy's ``load_setuptools_entrypoints``, but a
        plugin that fails to import is recorded in `failures` instead of raised); returns how many."""
        loaded = 0
        for entry_point in entry_points(group=group):
            if self.get_plugin(entry_point.name) is not None or self.is_blocked(entry_point.name):
                continue
            distribution = entry_point.dist.name if entry_point.dist is not None else None
            try:
                plugin = entry_point.load()
                self.register(plugin, name=entry_point.name)
            except Exception as error:
                self.failures.append(PluginFailure(entry_point.name, _describe(error), distribution))
                logger.warning("agl plugin %r (%s) not loaded: %s", entry_point.name, entry_point.value, error)
                continue
            if distribution is not None:
                self.distributions[entry_point.name] = distribution
            loaded += 1
        return loaded

    def provider(self, plugin_name: str) -> str:
        """The distribution that provided a plugin, else the plugin's own name (registered by hand)."""
        return self.distributions.get(plugin_name, plugin_name)


def plugin_manager(plugins: Iterable[Any] = (), *, load_entrypoints: bool = True) -> PluginManager:
    """A fresh manager with agl's hook specs, the installed plugins and then ``plugins`` (so those
    are called first). `check_pending` catches misspelt hook implementations."""
    manager = PluginManager()
    if load_entrypoints:
        manager.load_entry_points()
    for plugin in plugins:
        manager.register(plugin)
    manager.check_pending()
    return manager


AlgorithmFactory = Callable[..., Any]


def algorithms(manager: PluginManager) -> dict[str, tuple[AlgorithmFactory, str]]:
    """Every registered algorithm: name -> (factory, providing distribution or plugin name).

    Each plugin's ``agl_register_algorithms`` is called in pluggy's order; a plugin whose hook
    raises, or that registers a name already taken, is added to ``manager.failures``."""
    return _registry(manager, "agl_register_algorithms", "algorithm")


def model_servers(manager: PluginManager) -> dict[str, tuple[Callable[..., Any], str]]:
    """Every registered model server: name -> (factory, providing distribution or plugin name)."""
    return _registry(manager, "agl_register_model_servers", "model server")


def _registry(manager: PluginManager, hook_name: str, kind: str) -> dict[str, tuple[Callable[..., Any], str]]:
    """Name -> (factory, provider) from one registration hook; the first registration of a name wins."""
    found: dict[str, tuple[Callable[..., Any], str]] = {}
    for name, factory, plugin_name in _registrations(manager, hook_name):
        if name in found:
            _fail(manager, plugin_name, f"{kind} {name!r} is already registered by {found[name][1]}")
            continue
        found[name] = (factory, manager.provider(plugin_name))
    return found


def _registrations(manager: PluginManager, hook_name: str) -> list[tuple[str, Callable[..., Any], str]]:
    """Call each implementation of a registration hook on its own, so a broken one is attributed."""
    registered: list[tuple[str, Callable[..., Any], str]] = []
    caller = getattr(manager.hook, hook_name)
    for implementation in reversed(caller.get_hookimpls()):  # pluggy calls the last in the list first
        plugin_name = implementation.plugin_name
        mine: list[tuple[str, Callable[..., Any], str]] = []

        def register(name: str, factory: Callable[..., Any], _into: list[Any] = mine, _by: str = plugin_name) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a registered name must be a non-empty string, not {name!r}")
            if not callable(factory):
                raise TypeError(f"the factory registered as {name!r} is not callable")
            _into.append((name, factory, _by))

        try:
            implementation.function(**{arg: register for arg in implementation.argnames})
        except Exception as error:
            _fail(manager, plugin_name, f"{hook_name} raised {_describe(error)}")
            continue
        registered.extend(mine)
    return registered


def _fail(manager: PluginManager, plugin_name: str, error: str) -> None:
    failure = PluginFailure(plugin_name, error, manager.distributions.get(plugin_name))
    if failure not in manager.failures:
        manager.failures.append(failure)
    logger.warning("agl plugin %r: %s", plugin_name, error)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
