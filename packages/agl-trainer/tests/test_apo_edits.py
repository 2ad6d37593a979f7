"""``apo`` on optimizer edits that look valid at a glance but are not (a placeholder whose format
spec or conversion was changed, a reply cut short after an earlier quoted template) and on rollouts
without a reward. Real trainer, runners and memory store; the optimizer a scripted chat server."""

from __future__ import annotations

from typing import Any

import pytest
from step_log import StepLog

from agl.core.agent import rollout
from agl.core.store.base import LightningStore
from agl.core.testing.chat_server import chat_log, chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.types import PromptTemplate
from agl.trainer import Trainer

LIMIT = 30.0
TASKS = [{"q": "1+1"}, {"q": "2+2"}]


@rollout
def penalising_agent(task: dict[str, Any], prompt: PromptTemplate) -> float:
    """-1 unless the prompt says MAGIC: a rollout that fails (no reward, counted 0) outscores a wrong one."""
    return 1.0 if "MAGIC" in prompt.format(q=task["q"]) else -1.0


async def fit_one_edit(
    store: LightningStore, edit: str, agent: Any = penalising_agent, **apo_options: Any
) -> tuple[Any, StepLog]:
    """One round, one child, whose only edit is the optimizer's reply ``edit``."""
    steps = StepLog()
    with ServingThread(chat_server_app(["Needs magic.", edit])) as server:
        options = {
            "optimizer_model": "agl-toy",
            "optimizer_endpoint": f"{server.url}/v1",
            "timeout": LIMIT,
            "rounds": 1,
            "beam_width": 1,
            "branch_factor": 1,
            **apo_options,
        }
        trainer = Trainer("apo", store=store, plugins=[steps], algorithm_options=options)
        resources = {"prompt": PromptTemplate(template="Answer: {q}")}
        return await trainer.fit_async(agent, TASKS, None, resources), steps


@pytest.mark.parametrize(
    "edit",
    [
        "<prompt>MAGIC {q:{width}}</prompt>",  # a new field hidden in the format spec: KeyError
        "<prompt>MAGIC {q!z}</prompt>",  # an unknown conversion: ValueError
        "<prompt>MAGIC {q:.2f}</prompt>",  # a number's format for a text value: ValueError
    ],
)
async def test_an_edit_changing_a_placeholders_spec_is_rejected_not_published(store: LightningStore, edit: str) -> None:
    result, steps = await fit_one_edit(store, edit)

    assert steps.seen[0][1]["candidates/rejected"] == 1.0 and steps.seen[0][1]["candidates/new"] == 0.0
    assert result["best_prompts"] == {"prompt": "Answer: {q}"} and result["best_reward"] == -1.0
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources["prompt"].format(q="1+1") == "Answer: 1+1"  # type: ignore[union-attr]


async def test_a_reply_cut_after_quoting_a_template_is_rejected(store: LightningStore) -> None:
    edit = "The template <prompt>Worse: {q}</prompt> lacks the word. Better: <prompt>MAGIC Answer: {q}"
    result, steps = await fit_one_edit(store, edit)

    assert steps.seen[0][1]["candidates/rejected"] == 1.0 and steps.seen[0][1]["candidates/new"] == 0.0
    assert result["best_prompts"] == {"prompt": "Answer: {q}"}


async def test_an_edit_keeping_each_placeholder_as_written_is_accepted(store: LightningStore) -> None:
    result, steps = await fit_one_edit(store, "<prompt>MAGIC {q}: {q}</prompt>")

    assert steps.seen[0][1]["candidates/rejected"] == 0.0 and steps.seen[0][1]["candidates/new"] == 1.0
    assert result["best_prompts"] == {"prompt": "MAGIC {q}: {q}"} and result["best_reward"] == 1.0


@rollout
def unscored_or_failing_agent(task: dict[str, Any], prompt: PromptTemplate) -> float | None:
    """No reward for the first task, a crash on the second."""
    if task["q"] == "1+1":
        return None
    raise RuntimeError("the agent broke")


async def test_the_critique_says_whether_an_unrewarded_rollout_failed(store: LightningStore) -> None:
    app = chat_server_app(["Needs magic.", "<prompt>MAGIC {q}</prompt>"])
    with ServingThread(app) as server:
        options = {"optimizer_model": "agl-toy", "optimizer_endpoint": f"{server.url}/v1", "timeout": LIMIT}
        trainer = Trainer("apo", store=store, algorithm_options={**options, "rounds": 1, "branch_factor": 1})
        await trainer.fit_async(unscored_or_failing_agent, TASKS, None, {"prompt": PromptTemplate(template="{q}")})

    critique = chat_log(app).requests[0]["messages"][-1]["content"]
    assert 'Task: {"q": "1+1"}\nReward: none (rollout succeeded)' in critique
    assert 'Task: {"q": "2+2"}\nReward: none (rollout failed)' in critique


@rollout
def crashing_agent(task: dict[str, Any], prompt: PromptTemplate) -> float:
    """Rewards below 0, and no reward at all (a crash) for a prompt that says CRASH."""
    if "CRASH" in prompt.template:
        raise RuntimeError("the prompt broke the agent")
    return -0.5


@pytest.mark.parametrize(("missing_reward", "best"), [(None, "CRASH {q}"), (-1.0, "Answer: {q}")])
async def test_missing_reward_sets_what_a_failing_prompt_scores(
    store: LightningStore, missing_reward: float | None, best: str
) -> None:
    """By default a rollout without a reward counts 0, which beats rewards below 0; a user whose
    rewards can be negative sets ``missing_reward`` to their lowest."""
    options = {} if missing_reward is None else {"missing_reward": missing_reward}
    result, _ = await fit_one_edit(store, "<prompt>CRASH {q}</prompt>", crashing_agent, **options)

    assert result["best_prompts"] == {"prompt": best}


@pytest.mark.parametrize("value", [float("nan"), True, "0"])
def test_missing_reward_must_be_a_finite_number(value: Any) -> None:
    with pytest.raises(ValueError, match="missing_reward must be a finite number"):
        Trainer("apo", algorithm_options={"missing_reward": value})
