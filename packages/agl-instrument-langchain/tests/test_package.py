"""The package as OpenTelemetry's auto-loader sees it: one source of truth for the supported
versions, the entry point, and the switch that turns it off."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from agl.instrument.langchain import LangChainInstrumentor
from agl.instrument.langchain.package import _instruments

PACKAGE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_the_instruments_extra_is_what_the_instrumentor_declares() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["instruments"] == list(_instruments)
    assert list(LangChainInstrumentor().instrumentation_dependencies()) == list(_instruments)
    assert project["dependencies"] == ["agl-core"]


def test_the_entry_point_names_this_instrumentor() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "agl_langchain"]
    assert entry.load() is LangChainInstrumentor


CHECK = """
from langchain_core.language_models.chat_models import BaseChatModel
from langgraph.pregel import _runner
print(type(BaseChatModel.__dict__["_generate_with_cache"]).__name__, type(_runner.run_with_retry).__name__)
"""


def test_the_disable_switch_leaves_langchain_alone(tmp_path: Path) -> None:
    def patched_under(**env: str) -> str:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGL_"))}
        done = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", CHECK],
            env={**inherited, "OTEL_TRACES_EXPORTER": "none", **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert patched_under() == "FunctionWrapper FunctionWrapper"
    assert patched_under(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="agl_langchain") == "function function"
