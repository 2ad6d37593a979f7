from __future__ import annotations

import pytest
from pydantic import ValidationError

from agl.core import InvalidInput, InvalidTransition, PromptTemplate, ProxyLLM, Rollout, RolloutConfig
from agl.core.types.rollouts import (
    Attempt,
    check_attempt_transition,
    check_rollout_transition,
    rollout_status_after_attempt,
)


def test_terminal_rollout_states_cannot_be_left() -> None:
    for terminal in ("succeeded", "failed", "cancelled"):
        for target in ("queuing", "running", "succeeded", "failed", "requeuing"):
            if target != terminal:
                with pytest.raises(InvalidTransition, match=f"'{terminal}' to '{target}'"):
                    check_rollout_transition("ro-1", terminal, target)


def test_attempt_transitions() -> None:
    check_attempt_transition("at-1", "preparing", "running")
    check_attempt_transition("at-1", "preparing", "unresponsive")
    check_attempt_transition("at-1", "running", "timeout")
    with pytest.raises(InvalidTransition):
        check_attempt_transition("at-1", "timeout", "succeeded")
    with pytest.raises(InvalidTransition):
        check_attempt_transition("at-1", "running", "preparing")
    with pytest.raises(InvalidInput, match="'done'"):
        check_attempt_transition("at-1", "running", "done")


@pytest.mark.parametrize(
    ("status", "sequence_id", "expected"),
    [
        ("running", 1, "running"),
        ("succeeded", 1, "succeeded"),
        ("timeout", 1, "requeuing"),
        ("timeout", 3, "failed"),  # attempts used up
        ("failed", 1, "failed"),  # not in retry_condition
    ],
)
def test_retry_policy(status: str, sequence_id: int, expected: str) -> None:
    config = RolloutConfig(max_attempts=3, retry_condition=("timeout", "unresponsive"))
    attempt = Attempt(rollout_id="ro-1", attempt_id="at-1", sequence_id=sequence_id, status=status, start_time=0)  # type: ignore[arg-type]
    assert rollout_status_after_attempt(attempt, config) == expected


def test_models_are_frozen_and_validated() -> None:
    rollout = Rollout(rollout_id="ro-1", input={"q": 1}, start_time=0.0)
    with pytest.raises(ValidationError):
        rollout.status = "failed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        RolloutConfig(max_attempts=0)
    with pytest.raises(ValidationError):
        RolloutConfig(retry_condition=("exploded",))  # type: ignore[arg-type]


def test_prompt_template_and_proxy_llm() -> None:
    assert PromptTemplate(template="Q: {q}").format(q="2+2") == "Q: 2+2"
    proxy = ProxyLLM(endpoint="http://127.0.0.1:9000/", model="m")
    assert proxy.base_url("ro-1", "at-1") == "http://127.0.0.1:9000/rollout/ro-1/attempt/at-1/v1"
