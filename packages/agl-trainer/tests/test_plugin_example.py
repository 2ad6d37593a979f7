"""examples/plugin-example, installed as a user would install a third-party plugin.

It is installed (not editable) with pip into a temporary folder that only the subprocesses of
this module see through PYTHONPATH: the test venv stays as it was, and discovery goes through the
installed distribution's own entry-point metadata, exactly as for a real plugin. pip builds it
offline from the local wheels that already built agl's own packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "plugin-example"

TRAIN = """
import json
from agl.core import open_store
from agl.core.agent import rollout
from agl.core.types import PromptTemplate
from agl.trainer import Trainer

@rollout
def agent(task, prompt_template):
    # The reward says how well the prompt suits the task: "short" prompts win.
    return 1.0 if len(prompt_template.format(q=task["q"])) < 12 else 0.0

store = open_store("memory://")
trainer = Trainer("random_search", store=store, n_runners=2,
                  algorithm_options={"variants": ["Please answer the question {q}", "A: {q}", "Think first: {q}"]})
result = trainer.fit(agent, [{"q": "1+1"}], val_dataset=[{"q": "2+2"}, {"q": "3+3"}],
                     resources={"prompt": PromptTemplate(template="{q}")})

async def latest():
    update = await store.get_latest_resources()
    return update.resources["prompt"].template, update.version

import asyncio
template, version = asyncio.run(latest())
print(json.dumps({"result": result, "latest": template, "version": version}))
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("plugin-site")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(EXAMPLE)]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=300)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_the_example_is_not_installed_in_the_test_venv() -> None:
    listed = subprocess.run([sys.executable, "-m", "agl.core.cli", "algorithms"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "random_search" not in listed.stdout


def test_installed_it_is_listed_with_its_distribution(plugin_path: dict[str, str]) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "agl.core.cli", "algorithms"], capture_output=True, text=True, env=plugin_path
    )
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["random_search", "agl-plugin-example"] in rows
    assert ["baseline", "agl-trainer"] in rows


def test_training_with_it_publishes_the_best_prompt(plugin_path: dict[str, str]) -> None:
    ran = subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True, env=plugin_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert found["result"] == {"best_prompt": "A: {q}", "best_reward": 1.0}
    assert found["latest"] == "A: {q}"
    assert found["version"] == 2  # a new version of the fit's resources, not a new id
