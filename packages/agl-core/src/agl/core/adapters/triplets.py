"""Spans of one attempt → training triplets: what the model saw, what it said, what it earned.

Token ids and logprobs are taken from the LLM-call spans exactly as the serving engine returned
them, never re-tokenised: text re-tokenised gives other ids than the model sampled, and RL on
ids the model never produced trains the wrong thing.
"""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agl.core.adapters._calls import Call, agent_pattern, in_order, llm_calls
from agl.core.errors import InvalidInput
from agl.core.tracing import semconv
from agl.core.types.spans import Span
from agl.core.types.triplets import Triplet

RewardRule = Literal["final", "matched"]


def spans_to_triplets(
    spans: Sequence[Span], *, agent_match: str | None = None, merge: bool = True, reward: RewardRule = "final"
) -> list[Triplet]:
    """One triplet per LLM call of one attempt (per merged run of calls with ``merge``), in order.

    - ``agent_match``: keep only calls of agents whose name this regex finds (``re.search``); a
      call's agent is its own ``agl.agent.name``, else its nearest named ancestor's.
    - A call that failed (status ERROR) without producing any output is skipped: it holds nothing
      to train on (a stream cut off midway keeps what it produced).
    - Calls of an attempt that failed and was retried (a LangGraph node's ``RetryPolicy``) are
      skipped: the framework threw their output away, so they are not the rollout's path.
    - A call answered from a client-side cache (``agl.llm.cached``) stays a triplet, as the agent
      acted on it, but has no token ids (no request was sent), so it merges with no other call and
      id-based trainers skip it; its reply is no sample of this policy.
    - ``merge``: a call whose prompt token ids start with the previous call's prompt + response ids
      extends that triplet: its response then covers everything after the first prompt, with
      ``response_mask`` 1 for generated tokens and 0 for inserted ones (tool output,
      the next user turn), whose logprobs are 0.0. Calls without token ids are never merged, nor
      calls of two agents or two models (where both calls record the name).
    - ``reward``: only reward spans with a primary ``agl.reward`` value count. "final" puts the
      last one on the last triplet (the others get None); "matched" gives each triplet the first
      reward emitted after its first call and before the next triplet's first call.

    Every triplet with response ids carries ``response_mask`` (all ones unless merged).
    """
    _check_reward_rule(reward)
    ordered = in_order(spans)
    runs: list[_Run] = []
    for call in llm_calls(ordered, agent_match):
        if not call.generated or call.retried:
            continue
        if not (merge and runs and runs[-1].extend(call)):
            runs.append(_Run(call))
    rewards = [(span.sequence_id, value) for span in ordered if (value := _reward_of(span)) is not None]
    if reward == "final":
        final = rewards[-1][1] if rewards else None
        return [run.triplet(final if index == len(runs) - 1 else None) for index, run in enumerate(runs)]
    # Rewards are in sequence order: each run's window is found by bisection, not by a scan.
    positions = [at for at, _ in rewards]
    starts = [run.calls[0].span.sequence_id for run in runs]
    ends: list[int | None] = [*starts[1:], None] if runs else []  # no call: no window
    triplets = []
    for run, start, end in zip(runs, starts, ends, strict=True):
        first = bisect.bisect_right(positions, start)
        inside = first < len(rewards) and (end is None or rewards[first][0] < end)
        triplets.append(run.triplet(rewards[first][1] if inside else None))
    return triplets


@dataclass(frozen=True)
class TraceTripletAdapter:
    """`spans_to_triplets` with its options fixed, for an algorithm to hold and apply per attempt."""

    agent_match: str | None = None
    merge: bool = True
    reward: RewardRule = "final"

    def __post_init__(self) -> None:
        """Bad options are refused when the adapter is made, not after a batch of rollouts ran."""
        _check_reward_rule(self.reward)
        agent_pattern(self.agent_match)

    def adapt(self, spans: Sequence[Span]) -> list[Triplet]:
        return spans_to_triplets(spans, agent_match=self.agent_match, merge=self.merge, reward=self.reward)


def _check_reward_rule(reward: str) -> None:
    if reward not in ("final", "matched"):
        raise InvalidInput(f"reward must be 'final' or 'matched', not {reward!r}")


class _Run:
    """Consecutive calls whose token ids continue exactly, as one growing token sequence."""

    def __init__(self, call: Call) -> None:
        self.calls = [call]
        self.tokens: list[int] | None = None  # prompt + response so far; None: cannot be extended
        if call.prompt_token_ids is not None and call.response_token_ids is not None:
            self.tokens = call.prompt_token_ids + call.response_token_ids
        self.mask = [1] * len(call.response_token_ids or [])
        # Logprobs only with one per response token: a guessed alignment is worse than none.
        aligned = call.response_logprobs is not None and len(call.response_logprobs) == len(self.mask)
        self.logprobs = call.response_logprobs if aligned else None
        self.source = _source(call)

    def extend(self, call: Call) -> bool:
        """Take ``call`` if its prompt ids start with the whole sequence so far and it is the same
        agent's call to the same model."""
        prompt, generated = call.prompt_token_ids, call.response_token_ids
        if self.tokens is None or prompt is None or generated is None or prompt[: len(self.tokens)] != self.tokens:
            return False
        source = _source(call)
        if not _agree(self.source, source):
            return False
        self.source = tuple(mine or theirs for mine, theirs in zip(self.source, source, strict=True))
        inserted = prompt[len(self.tokens) :]
        # Merged logprobs only where every call has one per generated token: a guessed value is worse than none.
        if (
            self.logprobs is not None
            and call.response_logprobs is not None
            and len(call.response_logprobs) == len(generated)
        ):
            self.logprobs = [*self.logprobs, *[0.0] * len(inserted), *call.response_logprobs]
        else:
            self.logprobs = None
        self.tokens += inserted + generated
        self.mask += [0] * len(inserted) + [1] * len(generated)
        self.calls.append(call)
        return True

    def triplet(self, reward: float | None) -> Triplet:
        first, last = self.calls[0], self.calls[-1]
        metadata: dict[str, Any] = {
            "rollout_id": first.span.rollout_id,
            "attempt_id": first.span.attempt_id,
            "span_ids": [call.span.span_id for call in self.calls],
            "agent_name": first.agent_name,
        }
        response, response_ids = first.response, first.response_token_ids
        if len(self.calls) > 1 and self.tokens is not None and first.prompt_token_ids is not None:
            # The messages after the first prompt: what later prompts added, then the last answer.
            response = (last.prompt or [])[len(first.prompt or []) :] + (last.response or [])
            response_ids = self.tokens[len(first.prompt_token_ids) :]
        return Triplet(
            prompt=first.prompt,
            response=response,
            reward=reward,
            prompt_token_ids=first.prompt_token_ids,
            response_token_ids=response_ids,
            response_logprobs=self.logprobs,
            response_mask=self.mask if first.response_token_ids is not None else None,
            metadata=metadata,
        )


def _source(call: Call) -> tuple[str | None, ...]:
    """Who made a call, as far as recorded: its agent, the model asked for, the model that answered.
    A run takes only calls whose known names agree with its own: another agent's call would be
    filed under this agent's name and reward, another model's tokens and logprobs trained as the
    policy's. A name left unrecorded (None) agrees with any."""
    return (call.agent_name, *call.models)


def _agree(mine: tuple[str | None, ...], theirs: tuple[str | None, ...]) -> bool:
    return all(a is None or b is None or a == b for a, b in zip(mine, theirs, strict=True))


def _reward_of(span: Span) -> float | None:
    """The primary reward a span carries: reward spans write it in ``agl.reward``."""
    value = span.attributes.get(semconv.REWARD)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None
