"""The built-in ``apo`` end to end: real runners and store, the optimizer a scripted chat server over HTTP."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from step_log import StepLog

from agl.core import open_store
from agl.core.agent import rollout
from agl.core.store.base import LightningStore
from agl.core.testing.chat_server import chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.types import LLM, PromptTemplate
from agl.trainer import Trainer

LIMIT = 30.0
TEMPLATE = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL)
TASKS = [{"q": "1+1"}, {"q": "2+2"}, {"q": "3+3"}]


@rollout
def magic_agent(task: dict[str, Any], prompt_template: PromptTemplate) -> float:
    """Rewards a prompt that says MAGIC; formatting it proves the placeholder survived."""
    return 1.0 if "MAGIC" in prompt_template.format(q=task["q"]) else 0.0


@rollout
def two_prompt_agent(task: dict[str, Any], system: PromptTemplate, user: PromptTemplate) -> float:
    return 0.5 * ("ALPHA" in system.format()) + 0.5 * ("BETA" in user.format(q=task["q"]))


def optimizer(edit: Callable[[str], str]) -> Callable[[list[dict[str, Any]]], str]:
    """Critiques are canned; an edit request's template goes through ``edit``."""

    def answer(messages: list[dict[str, Any]]) -> str:
        request = messages[-1]["content"]
        if request.startswith("Critique"):
            return "The prompt never says the magic word."
        found = TEMPLATE.search(request)
        assert found is not None
        return f"Here it is: <prompt>{edit(found.group(1))}</prompt>"

    return answer


@pytest.fixture
def magic_server() -> Iterator[tuple[ServingThread, FastAPI]]:
    """Every other edit drops the ``{q}`` placeholder (to be rejected); the rest prepend MAGIC."""
    edits = itertools.count()
    app = chat_server_app(optimizer(lambda t: "MAGIC answer" if next(edits) % 2 == 0 else f"MAGIC {t}"))
    with ServingThread(app) as server:
        yield server, app


def options(server: ServingThread, **more: Any) -> dict[str, Any]:
    return {"optimizer_model": "agl-toy", "optimizer_endpoint": f"{server.url}/v1", "timeout": LIMIT, **more}


async def test_apo_finds_the_magic_prompt_and_publishes_it(
    store: LightningStore, magic_server: tuple[ServingThread, FastAPI]
) -> None:
    server, app = magic_server
    steps = StepLog()
    apo_options = options(server, rounds=2, beam_width=2, branch_factor=2, train_batch_size=2, val_batch_size=2)
    trainer = Trainer("apo", store=store, n_runners=2, plugins=[steps], algorithm_options=apo_options)
    initial = {"prompt": PromptTemplate(template="Answer: {q}")}
    result = await trainer.fit_async(magic_agent, TASKS, TASKS[:2], initial)

    assert result["best_prompts"] == {"prompt": "MAGIC Answer: {q}"} and result["best_reward"] == 1.0
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources == {"prompt": PromptTemplate(template="MAGIC Answer: {q}")}
    assert (
        (latest.resources_id, latest.version) == (result["resources_id"], result["version"]) == (latest.resources_id, 2)
    )

    assert [step for step, _ in steps.seen] == [0, 1]
    first = steps.seen[0][1]
    assert first["candidates/rejected"] == 1.0 and first["candidates/new"] == 1.0
    assert first["train/reward_mean"] == 0.0 and first["val/reward_best"] == 1.0 and first["val/reward_mean"] == 0.5
    assert steps.seen[1][1]["val/reward_best"] == 1.0

    rollouts = await store.query_rollouts()
    assert {r.mode for r in rollouts} == {"train", "val"} and all(r.status == "succeeded" for r in rollouts)
    assert any(span.name == "agent.rollout" for span in await store.query_spans(rollouts[0].rollout_id))
    ran_with = {(await store.get_resources_by_id(r.resources_id)).resources["prompt"].template for r in rollouts}  # type: ignore[union-attr]
    assert "MAGIC answer" not in ran_with and all("{q}" in template for template in ran_with)

    first_critique = chat_log(app).requests[0]["messages"][-1]["content"]
    assert "<prompt>Answer: {q}</prompt>" in first_critique and "Reward: 0" in first_critique


async def test_apo_optimises_several_named_templates_with_the_optimizer_resource(tmp_path: Path, tracing: None) -> None:
    def edit(template: str) -> str:
        return f"ALPHA {template}" if template.startswith("You are") else f"BETA {template}"

    app = chat_server_app(optimizer(edit))
    store = open_store(f"sqlite:///{tmp_path}/store.db", watchdog_interval=None)
    with ServingThread(app) as server:
        resources = {
            "system": PromptTemplate(template="You are terse."),
            "user": PromptTemplate(template="Question: {q}"),
            "unused": PromptTemplate(template="Untouched {x}"),
            "optimizer": LLM(endpoint=f"{server.url}/v1", model="agl-toy", api_key="secret"),
        }
        apo_options = {"prompts": ["system", "user"], "rounds": 1, "beam_width": 1, "branch_factor": 1}
        trainer = Trainer("apo", store=store, algorithm_options={**apo_options, "timeout": LIMIT})
        result = await trainer.fit_async(two_prompt_agent, TASKS, None, resources)
    latest = await store.get_latest_resources()
    await store.close()

    best = {"system": "ALPHA You are terse.", "user": "BETA Question: {q}"}
    assert result["best_prompts"] == best and result["best_reward"] == 1.0
    assert latest is not None and latest.version == 2
    assert {name: value.template for name, value in latest.resources.items() if isinstance(value, PromptTemplate)} == {
        **best,
        "unused": "Untouched {x}",
    }
    requests = chat_log(app).requests
    assert all(request["model"] == "agl-toy" for request in requests)
    assert not any("Untouched" in request["messages"][-1]["content"] for request in requests)


@pytest.mark.parametrize(
    ("bad", "option"),
    [
        ({"beam_width": 0}, "beam_width"),
        ({"branch_factor": True}, "branch_factor"),
        ({"rounds": "3"}, "rounds"),
        ({"train_batch_size": -1}, "train_batch_size"),
        ({"val_batch_size": 0}, "val_batch_size"),
        ({"critique_examples": 0}, "critique_examples"),
        ({"prompts": []}, "prompts"),
        ({"prompts": "prompt"}, "prompts"),
        ({"prompts": ["a", "a"]}, "prompts"),
        ({"optimizer_endpoint": ""}, "optimizer_endpoint"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_options_are_rejected_by_name(bad: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=option):
        Trainer("apo", store=object(), algorithm_options=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("apo_options", "resources", "message"),
    [
        ({"prompts": ["missing"]}, {"prompt": PromptTemplate(template="{q}")}, "'missing'"),
        ({}, {"llm": LLM(endpoint="http://127.0.0.1:1/v1", model="m")}, "no PromptTemplate"),
        ({}, {"prompt": PromptTemplate(template="{q}", engine="jinja")}, "f-string"),
        ({}, {"prompt": PromptTemplate(template="{q")}, "placeholders"),
        ({}, {"prompt": PromptTemplate(template="{q}")}, "optimizer_model"),
    ],
)
async def test_unusable_resources_fail_the_fit_clearly(
    store: LightningStore, apo_options: dict[str, Any], resources: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await Trainer("apo", store=store, algorithm_options=apo_options).fit_async(magic_agent, TASKS, None, resources)
