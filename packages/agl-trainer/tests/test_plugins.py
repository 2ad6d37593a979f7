"""Plugin discovery, ordering, and broken plugins reported rather than fatal."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pluggy
import pytest

import agl.trainer.algorithms
from agl.trainer import hookimpl, plugin_manager
from agl.trainer import plugins as plugins_module
from agl.trainer.algorithms.baseline import Baseline
from agl.trainer.plugins import algorithms, model_servers


class Registers:
    """A plugin registering ``name`` with a factory that says who made it."""

    def __init__(self, name: str, tag: str) -> None:
        self.name, self.tag = name, tag

    @hookimpl
    def agl_register_algorithms(self, register: Any) -> None:
        register(self.name, lambda: self.tag)


class Raises:
    @hookimpl
    def agl_register_algorithms(self, register: Any) -> None:
        register("half_registered", Baseline)
        raise RuntimeError("plugin bug")


def test_the_builtin_baseline_registers_through_its_entry_point() -> None:
    manager = plugin_manager()
    assert manager.get_plugin("builtin") is agl.trainer.algorithms
    factory, provider = algorithms(manager)["baseline"]
    assert factory is Baseline
    assert provider == "agl-trainer"
    assert manager.failures == []


def test_a_fresh_manager_holds_only_what_it_is_given() -> None:
    manager = plugin_manager([Registers("fake", "a")], load_entrypoints=False)
    found = algorithms(manager)
    assert list(found) == ["fake"]
    assert found["fake"][0]() == "a"
    assert plugin_manager(load_entrypoints=False).get_plugins() == set()


def test_the_plugin_registered_last_wins_a_name_and_the_other_is_reported() -> None:
    first, second = Registers("same", "first"), Registers("same", "second")
    manager = plugin_manager([first, second], load_entrypoints=False)
    found = algorithms(manager)
    assert found["same"][0]() == "second"
    (failure,) = manager.failures
    assert failure.name == manager.get_name(first)
    assert "already registered" in failure.error


def test_tryfirst_beats_registration_order() -> None:
    class Early(Registers):
        @hookimpl(tryfirst=True)
        def agl_register_algorithms(self, register: Any) -> None:
            register(self.name, lambda: self.tag)

    manager = plugin_manager([Early("same", "early"), Registers("same", "late")], load_entrypoints=False)
    assert algorithms(manager)["same"][0]() == "early"


def test_a_plugin_whose_hook_raises_is_reported_and_the_others_still_register() -> None:
    broken = Raises()
    manager = plugin_manager([broken])  # on top of the installed ones
    found = algorithms(manager)
    assert "baseline" in found
    assert "half_registered" not in found  # all or nothing per plugin
    (failure,) = manager.failures
    assert failure.name == manager.get_name(broken)
    assert "RuntimeError: plugin bug" in failure.error


def test_a_plugin_that_fails_to_import_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    real = plugins_module.entry_points(group="agl.trainer")
    broken = EntryPoint("broken", "agl_no_such_module_for_tests", "agl.trainer")
    monkeypatch.setattr(plugins_module, "entry_points", lambda group: [broken, *real])
    manager = plugin_manager()
    assert "baseline" in algorithms(manager)
    (failure,) = manager.failures
    assert failure.name == "broken"
    assert "ModuleNotFoundError" in failure.error and "agl_no_such_module_for_tests" in failure.error


def test_check_pending_catches_a_misspelt_hook() -> None:
    class Misspelt:
        @hookimpl
        def agl_fit_strat(self, trainer: Any) -> None: ...

    with pytest.raises(pluggy.PluginValidationError, match="agl_fit_strat"):
        plugin_manager([Misspelt()], load_entrypoints=False)


def test_a_bad_registration_is_reported() -> None:
    class NotCallable:
        @hookimpl
        def agl_register_algorithms(self, register: Any) -> None:
            register("x", 42)

    manager = plugin_manager([NotCallable()], load_entrypoints=False)
    assert algorithms(manager) == {}
    assert "not callable" in manager.failures[0].error


class ServesModels:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    @hookimpl
    def agl_register_model_servers(self, register: Any) -> None:
        register("engine", lambda: self.tag)


def test_model_servers_register_like_algorithms_and_a_taken_name_is_reported() -> None:
    first, second = ServesModels("first"), ServesModels("second")
    manager = plugin_manager([first, second], load_entrypoints=False)
    found = model_servers(manager)
    assert found["engine"][0]() == "second"
    (failure,) = manager.failures
    assert failure.name == manager.get_name(first)
    assert failure.error.startswith("model server 'engine' is already registered")
