"""The built-in algorithms on unusual but legitimate input: an optimizer that fails or cuts its
reply short, an SFT round where no rollout is good enough, options of the wrong type. Real
trainer, runners, SQLite store and (for `sft`) the tiny model; the optimizer a scripted chat server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from digits_task import TRAIN, digits_agent
from step_log import StepLog

from agl.core import open_store
from agl.core.agent import rollout
from agl.core.errors import AglError
from agl.core.store.base import LightningStore
from agl.core.testing.chat_server import chat_server_app
from agl.core.testing.server import ServingThread
from agl.core.types import PromptTemplate
from agl.trainer import Trainer
from agl.trainer.algorithms.apo import OptimizerError

LIMIT = 30.0
TASKS = [{"q": "1+1"}, {"q": "2+2"}]


@rollout
def magic_agent(task: dict[str, Any], prompt: PromptTemplate) -> float:
    return 1.0 if "MAGIC" in prompt.format(q=task["q"]) else 0.0


@pytest.fixture
async def store(tracing: None, tmp_path: Path) -> AsyncIterator[LightningStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}", watchdog_interval=None)
    yield opened
    await opened.close()


async def fit_apo(store: LightningStore, replies: list[str], template: str, **options: Any) -> tuple[Any, StepLog]:
    """``apo`` over `TASKS` with ``replies`` as the optimizer's script (answered 500 once used up)."""
    steps = StepLog()
    with ServingThread(chat_server_app(replies)) as server:
        endpoint = {"optimizer_model": "agl-toy", "optimizer_endpoint": f"{server.url}/v1", "timeout": LIMIT}
        trainer = Trainer("apo", store=store, plugins=[steps], algorithm_options={**endpoint, **options})
        resources = {"prompt": PromptTemplate(template=template)}
        return await trainer.fit_async(magic_agent, TASKS, None, resources), steps


async def test_a_failing_optimizer_is_one_agl_error_and_leaves_the_best_prompt_latest(store: LightningStore) -> None:
    # Round 1 scores MAGIC (1.0), then Worse (0.0), last; round 2's critique is answered 500.
    replies = ["Needs magic.", "<prompt>MAGIC {q}</prompt>", "<prompt>Worse {q}</prompt>"]
    with pytest.raises(OptimizerError, match=r"optimizer .* answered 500") as failure:
        await fit_apo(store, replies, "Answer: {q}", rounds=2, beam_width=1, branch_factor=2)
    assert isinstance(failure.value, AglError)  # `agl train` reports it in one line

    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources["prompt"].template == "MAGIC {q}"  # type: ignore[union-attr]


async def test_an_unreachable_optimizer_is_named(store: LightningStore) -> None:
    options = {"optimizer_model": "m", "optimizer_endpoint": "http://127.0.0.1:1/v1", "rounds": 1, "timeout": LIMIT}
    trainer = Trainer("apo", store=store, algorithm_options=options)
    with pytest.raises(OptimizerError, match=r"optimizer http://127\.0\.0\.1:1/v1/chat/completions could not be"):
        await trainer.fit_async(magic_agent, TASKS, None, {"prompt": PromptTemplate(template="Answer: {q}")})


@pytest.mark.parametrize(
    ("template", "edit"),
    [
        ("Answer: {q}", "Here it is: <prompt>MAGIC Answer: {q}"),  # cut at the token limit: no </prompt>
        ("Be terse.", ""),  # an empty reply would be an empty template
    ],
)
async def test_an_empty_or_cut_edit_is_rejected(store: LightningStore, template: str, edit: str) -> None:
    result, steps = await fit_apo(store, ["Needs magic.", edit], template, rounds=1, beam_width=1, branch_factor=1)

    assert result["best_prompts"] == {"prompt": template}
    assert steps.seen[0][1]["candidates/rejected"] == 1.0 and steps.seen[0][1]["candidates/new"] == 0.0


async def test_sft_says_when_no_rollout_reaches_the_threshold_and_saves_no_untrained_checkpoint(
    store: LightningStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agl.trainer.testing import build_tiny_model

    options = {
        "model": str(build_tiny_model(tmp_path / "tiny", seed=0)),
        "rounds": 1,
        "n": 2,
        "threshold": 2.0,  # a digit share never exceeds 1
        "max_tokens": 4,
        "checkpoint_dir": str(tmp_path / "sft"),
        "timeout": 60.0,
    }
    with caplog.at_level(logging.WARNING, logger="agl.trainer.algorithm"):
        result = await Trainer("sft", store=store, n_runners=4, algorithm_options=options).fit_async(
            digits_agent, TRAIN
        )

    assert result["losses"] == [] and result["checkpoint"] is None
    assert not (tmp_path / "sft" / "round-1").exists()
    assert "sft round 1 trained nothing: no rollout reached the threshold 2.0" in caplog.text


@pytest.mark.parametrize("algorithm", ["sft", "grpo"])
@pytest.mark.parametrize(
    ("bad", "option"),
    [
        ({"checkpoint_dir": 5}, "checkpoint_dir"),  # grpo would first use it after the whole training
        ({"resource": ""}, "resource"),
        ({"seed": "0"}, "seed"),
        ({"grad_clip": float("nan")}, "grad_clip"),  # every gradient, then every weight, became NaN
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_options_of_the_wrong_type_are_refused_by_name(algorithm: str, bad: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=f"{algorithm} option {option} "):
        Trainer(algorithm, store=object(), algorithm_options={"model": "m", **bad})  # type: ignore[arg-type]


def test_grpo_scale_advantages_must_be_a_boolean() -> None:
    with pytest.raises(ValueError, match="grpo option scale_advantages"):
        Trainer("grpo", store=object(), algorithm_options={"model": "m", "scale_advantages": "no"})  # type: ignore[arg-type]


@rollout
def agent_ignoring_its_llm(task: dict[str, Any], llm: Any) -> float:
    """An agent that answers without the model it was given: nothing of it can be trained."""
    return float(len(task["prompt"]) % 2)


async def grpo_step_warnings(
    store: LightningStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, agent: Any, **options: Any
) -> list[str]:
    """The warnings about its steps of a 2-step grpo fit of ``agent`` on a tiny model."""
    from agl.trainer.testing import build_tiny_model

    options = {
        "model": str(build_tiny_model(tmp_path / "tiny", seed=0)),
        "steps": 2,
        "n": 2,
        "tasks_per_step": 2,
        "val_every": 100,
        "timeout": 60.0,
        **options,
    }
    with caplog.at_level(logging.WARNING, logger="agl.trainer.algorithm"):
        await Trainer("grpo", store=store, n_runners=4, algorithm_options=options).fit_async(agent, TRAIN)
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("grpo step")]


async def test_grpo_says_when_a_step_has_nothing_to_train_on(
    store: LightningStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert await grpo_step_warnings(store, tmp_path, caplog, agent_ignoring_its_llm) == [
        "grpo step 1 has nothing to train on: its rollouts made no LLM call"
        " (the agent must call the LLM resource grpo publishes)"
    ]


@rollout
def agent_whose_tool_is_down(task: dict[str, Any], llm: Any) -> float:
    """Fails every rollout before its first LLM call, as an agent whose tool or service is down."""
    raise ConnectionError("the search tool is unreachable")


@pytest.mark.parametrize("policy", ["zero", "drop_group"])
async def test_grpo_says_when_every_rollout_of_a_step_failed(
    store: LightningStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """A broken agent made the fit run every step on nothing: under ``drop_group`` without a word,
    under ``zero`` with a warning blaming an agent that made no LLM call, never the failure."""
    warnings = await grpo_step_warnings(store, tmp_path, caplog, agent_whose_tool_is_down, failed_rollouts=policy)
    assert warnings == [
        "grpo step 1 has nothing to train on: all 4 of its rollouts failed"
        " (the first with ConnectionError: the search tool is unreachable)"
    ]
