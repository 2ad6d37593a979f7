"""datasette's meta-tests: every hook is documented with its exact signature, and has a summary and Args."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from agl.trainer import hookspecs

DOCS = Path(__file__).resolve().parents[3] / "docs" / "writing-an-algorithm.md"
HOOKS = [name for name, value in vars(hookspecs).items() if name.startswith("agl_") and callable(value)]


def test_the_hooks_are_the_ones_the_design_names() -> None:
    assert sorted(HOOKS) == sorted(
        [
            "agl_register_algorithms",
            "agl_register_model_servers",
            "agl_fit_start",
            "agl_fit_end",
            "agl_rollout_end",
            "agl_step_end",
        ]
    )


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_parameters(name: str) -> None:
    function = getattr(hookspecs, name)
    docs = DOCS.read_text()
    heading = next((line for line in docs.splitlines() if line.startswith(f"### `{name}(")), None)
    assert heading is not None, f"{name} has no section in {DOCS.name}"
    inside = re.sub(r"\[.*?\]", "", heading.split("(", 1)[1].rsplit(")", 1)[0])  # dict[str, float] -> dict
    documented = [part.split(":")[0].strip() for part in inside.split(",")]
    assert documented == list(inspect.signature(function).parameters)
    docstring = inspect.getdoc(function) or ""
    assert docstring.splitlines()[0] and "Args:" in docstring
