"""The instrumentors' shared patcher, on a small framework written to a temporary folder and
imported for real (so the post-import hooks run as they do for a framework)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt

from agl.core.tracing.patching import FamilyPatch, Patch, Patcher, Replacement

FRAMEWORK = """
import abc
import contextlib


class Client(abc.ABC):
    @abc.abstractmethod
    def create(self, prompt): ...


class EchoClient(Client):
    def create(self, prompt):
        return "echo " + prompt


class Tool:
    def run(self, value):
        return value * 2


@contextlib.contextmanager
def tool_span(name):
    yield "framework span " + name


def helper(value):
    return value + 1
"""

calls: list[str] = []


def tagging(tag: str) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        calls.append(tag)
        return wrapped(*args, **kwargs)

    return wrapper


def replace_tool_span(original: Any) -> Any:
    @contextlib.contextmanager
    def tool_span(name: str) -> Iterator[str]:
        yield "ours " + name

    return tool_span


@pytest.fixture
def framework(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a fresh, not yet imported module holding `FRAMEWORK`."""
    name = f"agl_fake_framework_{request.node.name.replace('[', '_').replace(']', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FRAMEWORK))
    sys.path.insert(0, str(tmp_path))
    calls.clear()
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def patcher_for(name: str) -> Patcher:
    return Patcher(
        (
            FamilyPatch(name, "Client", {"create": tagging("create")}),
            Patch(name, "Tool", "run", tagging("run")),
            Patch(name, None, "helper", tagging("helper")),
            Replacement(name, "tool_span", replace_tool_span),
        ),
        logging.getLogger("test"),
    )


def exercise(module: Any) -> list[Any]:
    with module.tool_span("t") as span:
        return [module.EchoClient().create("hi"), module.Tool().run(2), module.helper(1), span]


def test_patches_apply_when_the_module_is_imported_later_and_come_off_entirely(framework: str) -> None:
    patcher = patcher_for(framework)
    patcher.activate()
    assert framework not in sys.modules  # nothing imported by activating
    module = importlib.import_module(framework)

    assert exercise(module) == ["echo hi", 4, 2, "ours t"]
    assert calls == ["create", "run", "helper"]
    assert not isinstance(module.Client.__dict__["create"], wrapt.FunctionWrapper)  # abstract: left alone

    class Later(module.Client):  # defined after patching: its own create is wrapped too
        def create(self, prompt: str) -> str:
            return "later " + prompt

    calls.clear()
    assert Later().create("x") == "later x"
    assert calls == ["create"]

    patcher.deactivate()
    calls.clear()
    assert exercise(module)[:3] == ["echo hi", 4, 2]
    assert calls == []
    assert not isinstance(module.EchoClient.__dict__["create"], wrapt.FunctionWrapper)
    assert not isinstance(module.Tool.__dict__["run"], wrapt.FunctionWrapper)
    assert not isinstance(Later.__dict__["create"], wrapt.FunctionWrapper)
    assert "__init_subclass__" not in module.Client.__dict__
    assert not isinstance(module.helper, wrapt.FunctionWrapper)
    assert exercise(module)[3] == "framework span t"


def test_activating_twice_wraps_once_and_an_inactive_patcher_ignores_later_imports(framework: str) -> None:
    patcher = patcher_for(framework)
    module = importlib.import_module(framework)
    patcher.activate()
    patcher.activate()
    assert exercise(module)[:3] == ["echo hi", 4, 2]
    assert calls == ["create", "run", "helper"]
    patcher.deactivate()

    sys.modules.pop(framework)
    reimported = importlib.import_module(framework)  # its hook fires, the patcher is off
    assert not isinstance(reimported.Tool.__dict__["run"], wrapt.FunctionWrapper)


def test_a_foreign_wrapper_keeps_its_place_outside_ours(framework: str) -> None:
    module = importlib.import_module(framework)
    wrapt.wrap_function_wrapper(module, "Tool.run", tagging("theirs"))
    theirs = module.Tool.__dict__["run"]
    patcher = patcher_for(framework)
    patcher.activate()

    assert module.Tool.__dict__["run"] is theirs
    assert module.Tool().run(3) == 6
    assert calls == ["theirs", "run"]  # their wrapper encloses ours

    patcher.deactivate()
    calls.clear()
    assert module.Tool().run(3) == 6
    assert calls == ["theirs"]
    assert not isinstance(theirs.__wrapped__, wrapt.FunctionWrapper)


def test_a_wrapper_put_over_ours_stays_and_ours_is_not_wrapped_again(framework: str) -> None:
    module = importlib.import_module(framework)
    patcher = patcher_for(framework)
    patcher.activate()
    ours = module.Tool.__dict__["run"]
    wrapt.wrap_function_wrapper(module, "Tool.run", tagging("theirs"))
    theirs = module.Tool.__dict__["run"]

    patcher.deactivate()
    assert module.Tool.__dict__["run"] is theirs and theirs.__wrapped__ is ours
    patcher.activate()
    assert module.Tool.__dict__["run"] is theirs
    calls.clear()
    module.Tool().run(1)
    assert calls == ["theirs", "run"]


def test_a_patch_that_does_not_fit_is_skipped_and_the_others_still_apply(framework: str, caplog) -> None:
    patcher = Patcher(
        (Patch(framework, "Missing", "run", tagging("missing")), Patch(framework, "Tool", "run", tagging("run"))),
        logging.getLogger("test.patching"),
    )
    module = importlib.import_module(framework)
    with caplog.at_level(logging.DEBUG, logger="test.patching"):
        patcher.activate()
    assert module.Tool().run(1) == 2
    assert calls == ["run"]
    assert any("Missing" in record.getMessage() for record in caplog.records)
    patcher.deactivate()


def test_on_import_hooks_run_with_the_module(framework: str) -> None:
    seen: list[str] = []
    patcher = Patcher((), logging.getLogger("test"), on_import={framework: lambda module: seen.append(module.__name__)})
    patcher.activate()
    importlib.import_module(framework)
    assert seen == [framework]
    patcher.deactivate()
