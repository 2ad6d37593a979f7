"""The `verl` plugin's CPU core on hand-checked cases: finished rollouts → verl's batch layout, and the
scheduling options. Nothing here imports verl (its base pins an older transformers than agl's); the
last test checks the batch against verl in an interpreter of its own, ``$AGL_VERL_PYTHON`` (``python3 dev.py
test`` builds ``.venvs/verl``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from typing import Any

import pytest
import torch
from token_triplets import triplet

from agl.core.tracing import semconv
from agl.core.types import Rollout, Span
from agl.trainer.learning.advantages import group_advantages
from agl.trainer.learning.batches import Item, build_batch
from agl.trainer.learning.losses import policy_loss
from agl.trainer.learning.rollouts import Scored
from agl.trainer.verl.conversion import PADDING, FinishedRollout, pad_to_multiple, to_verl_batch
from agl.trainer.verl.policy import Schedule, StaleRollouts, StepPlan, check_staleness
from agl.trainer.verl.runtime import VerlMissing, import_verl


def span(sequence_id: int, name: str, attributes: dict[str, Any], rollout_id: str = "ro-1") -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id="at-1",
        sequence_id=sequence_id,
        trace_id="0" * 31 + "1",
        span_id=f"{sequence_id:016x}",
        name=name,
        attributes=attributes,
    )


def call(sequence_id: int, prompt_ids: list[int], response_ids: list[int], logprobs: list[float]) -> Span:
    """An LLM-call span as the proxy records it; the text is deliberately unrelated to the ids."""
    return span(
        sequence_id,
        "chat tiny",
        {
            semconv.LLM_CALL: True,
            semconv.OPERATION_NAME: "chat",
            semconv.INPUT_MESSAGES: json.dumps([{"role": "user", "content": "text that tokenises otherwise"}]),
            semconv.OUTPUT_MESSAGES: json.dumps([{"role": "assistant", "content": "x"}]),
            semconv.PROMPT_TOKEN_IDS: prompt_ids,
            semconv.RESPONSE_TOKEN_IDS: response_ids,
            semconv.RESPONSE_LOGPROBS: logprobs,
        },
    )


def convert(rollouts: list[FinishedRollout], **options: Any) -> Any:
    options = {"max_prompt_length": 4, "max_response_length": 6, "pad_token_id": 0, **options}
    return to_verl_batch(rollouts, **options)


# --- layout -----------------------------------------------------------------------------------------


def test_prompts_are_left_padded_responses_right_padded_and_every_mask_lines_up() -> None:
    merged = triplet([5, 6], [7, 8, 9, 10], mask=[1, 0, 0, 1], logprobs=[-0.5, 0.0, 0.0, -1.5])
    batch = convert(
        [FinishedRollout("r1", "task", 1.0, [merged]), FinishedRollout("r2", "task", 0.0, [triplet([5], [11])])],
        max_prompt_length=3,
        max_response_length=5,
        pad_token_id=3,
    )
    t = batch.tensors
    assert t["prompts"].tolist() == [[3, 5, 6], [3, 3, 5]]
    assert t["responses"].tolist() == [[7, 8, 9, 10, 3], [11, 3, 3, 3, 3]]
    assert t["input_ids"].tolist() == [[3, 5, 6, 7, 8, 9, 10, 3], [3, 3, 5, 11, 3, 3, 3, 3]]
    assert t["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0, 0]]
    # Positions count real tokens from 0; left padding is 0, right padding repeats the last position.
    assert t["position_ids"].tolist() == [[0, 0, 1, 2, 3, 4, 5, 5], [0, 0, 0, 1, 1, 1, 1, 1]]
    # The two inserted tokens (tool output between merged calls) and all padding are not trained.
    assert t["response_mask"].tolist() == [[1, 0, 0, 1, 0], [1, 0, 0, 0, 0]]
    assert t["response_mask"].dtype == torch.long and t["input_ids"].dtype == torch.long
    assert t["rollout_log_probs"].tolist() == [[-0.5, 0, 0, -1.5, 0], [0, 0, 0, 0, 0]]
    assert t["has_rollout_log_probs"].tolist() == [True, False]
    assert "old_log_probs" not in t  # one row lacks engine logprobs: the actor recomputes them
    assert batch.rows == 2 and batch.stats.trained_tokens == 3
    assert set(batch.data) == set(t) | {"uid", "rollout_id"}


def test_engine_logprobs_become_the_old_logprobs_when_every_row_has_them() -> None:
    batch = convert(
        [
            FinishedRollout("r1", 0, 1.0, [triplet([1], [2, 3], logprobs=[-0.1, -0.2])]),
            FinishedRollout("r2", 0, 0.0, [triplet([1], [4], logprobs=[-0.3])]),
        ]
    )
    expected = [[-0.1, -0.2, 0, 0, 0, 0], [-0.3, 0, 0, 0, 0, 0]]
    assert torch.allclose(batch.tensors["old_log_probs"], torch.tensor(expected))
    assert torch.equal(batch.tensors["rollout_log_probs"], batch.tensors["old_log_probs"])
    # Misaligned logprobs (fewer than the response ids) count as none.
    partial = convert([FinishedRollout("r", 0, 1.0, [triplet([1], [2, 3], logprobs=[-0.1])])])
    assert partial.tensors["has_rollout_log_probs"].tolist() == [False] and "old_log_probs" not in partial.tensors


def test_a_triplet_with_an_empty_prompt_or_response_is_skipped_and_counted() -> None:
    """verl's unpadded layout needs a prompt token before every response: such a row would stop the step."""
    batch = convert(
        [
            FinishedRollout("r", 0, 1.0, [triplet([], [7, 8]), triplet([1], []), triplet([1], [2])]),
            FinishedRollout("s", 0, 0.0, [triplet([1], [3])]),
        ]
    )
    assert batch.stats.skipped == 2 and batch.stats.rows == 2
    assert batch.tensors["input_ids"][:, 3:5].tolist() == [[1, 2], [1, 3]]
    assert batch.tensors["token_level_scores"][0, 0].item() == 1.0  # the reward is on the row that is kept


def test_no_rollouts_give_an_empty_batch_of_the_configured_widths() -> None:
    batch = convert([], max_prompt_length=3, max_response_length=2)
    assert batch.tensors["input_ids"].shape == (0, 5) and batch.tensors["advantages"].shape == (0, 2)
    assert batch.non_tensors["uid"].shape == (0,) and batch.stats.rows == 0


# --- from spans: exact ids, merging -----------------------------------------------------------------


def test_calls_whose_ids_continue_merge_into_one_row_with_the_engine_ids_unchanged() -> None:
    spans = [
        call(1, [1, 2], [3, 4], [-0.1, -0.2]),
        call(2, [1, 2, 3, 4, 50, 51], [5], [-0.3]),  # 50, 51: tool output the agent inserted
        span(3, "agl.reward", {semconv.SPAN_KIND: "reward", semconv.REWARD: 1.0}),
    ]
    rollout = FinishedRollout.from_spans("ro-1", "task", spans, reward=1.0)
    batch = convert([rollout], max_prompt_length=2, max_response_length=6)
    t = batch.tensors
    assert batch.rows == 1
    assert t["input_ids"].tolist() == [[1, 2, 3, 4, 50, 51, 5, 0]]
    assert t["response_mask"].tolist() == [[1, 1, 0, 0, 1, 0]]
    assert torch.allclose(t["old_log_probs"], torch.tensor([[-0.1, -0.2, 0, 0, -0.3, 0]]))
    assert t["token_level_scores"].tolist() == [[0, 0, 0, 0, 1.0, 0]]


def test_calls_whose_ids_do_not_continue_stay_separate_rows_of_one_rollout() -> None:
    spans = [
        call(1, [1, 2], [3, 4], [-0.1, -0.2]),
        call(2, [1, 9, 3, 4, 50], [5], [-0.3]),  # the history was re-rendered: 9 where 2 was
    ]
    batch = convert([FinishedRollout.from_spans("ro-1", "task", spans, reward=0.5)], max_prompt_length=5)
    t = batch.tensors
    assert t["prompts"].tolist() == [[0, 0, 0, 1, 2], [1, 9, 3, 4, 50]]
    assert t["input_ids"].tolist() == [
        [0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0],
        [1, 9, 3, 4, 50, 5, 0, 0, 0, 0, 0],
    ]
    assert t["response_mask"].tolist() == [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert batch.non_tensors["rollout_id"].tolist() == ["ro-1", "ro-1"]
    # The reward sits once, on the last generated token of the rollout's last row.
    assert t["token_level_scores"].tolist() == [[0] * 6, [0.5, 0, 0, 0, 0, 0]]
    assert float(t["token_level_scores"].sum()) == 0.5


def test_the_reward_goes_on_the_last_generated_token_not_on_trailing_inserted_ones() -> None:
    batch = convert([FinishedRollout("r", 0, 2.0, [triplet([1], [2, 3, 4], mask=[1, 1, 0])])])
    assert batch.tensors["token_level_scores"].tolist() == [[0, 2.0, 0, 0, 0, 0]]


# --- dropping, skipping -----------------------------------------------------------------------------


def test_over_long_prompts_and_responses_are_dropped_and_counted_never_truncated() -> None:
    rollouts = [
        FinishedRollout(
            "r1",
            0,
            1.0,
            [
                triplet([1, 2, 3, 4, 5], [6]),  # prompt 5 > 4: dropped
                triplet([1], [2, 3]),  # kept
                triplet([1], [2, 3, 4, 5, 6, 7, 8]),  # response 7 > 6: dropped
                triplet(None, [2]),  # no ids: skipped
            ],
        ),
        FinishedRollout("r2", 0, 0.0, [triplet([1], [9])]),
    ]
    batch = convert(rollouts)
    s = batch.stats
    assert (s.rows, s.dropped_prompt, s.dropped_response, s.skipped) == (2, 1, 1, 1)
    assert batch.meta_info["agl_stats"]["dropped_prompt"] == 1
    assert batch.tensors["responses"].tolist() == [[2, 3, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]]
    # r1's reward moves to its last kept row; its weight spreads over that row's tokens.
    assert batch.tensors["token_level_scores"][0].tolist() == [0, 1.0, 0, 0, 0, 0]
    expected = torch.tensor([[0.25, 0.25, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 0]])
    assert torch.allclose(batch.tensors["loss_weights"], expected)
    # The advantages come from both rollouts, before the dropping: +1 and -1.
    assert batch.tensors["advantages"][:, 0].tolist() == [1.0, -1.0]


def test_a_mask_of_the_wrong_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="response_mask has 1 entries for 2"):
        convert([FinishedRollout("r", 0, 1.0, [triplet([1], [2, 3], mask=[1])])])


# --- grouping, advantages, failures ------------------------------------------------------------------


def test_uid_names_the_task_group_and_advantages_are_per_rollout_within_it() -> None:
    rollouts = [
        FinishedRollout("a1", "task-a", 1.0, [triplet([1], [2]), triplet([1, 2, 9], [3])]),  # two rows
        FinishedRollout("a2", "task-a", 0.0, [triplet([1], [4])]),
        FinishedRollout("b1", "task-b", 0.5, [triplet([7], [8])]),
        FinishedRollout("b2", "task-b", 0.5, [triplet([7], [8])]),  # tied group: no signal
    ]
    batch = convert(rollouts)
    assert batch.non_tensors["uid"].tolist() == ["task-a", "task-a", "task-a", "task-b", "task-b"]
    assert batch.non_tensors["rollout_id"].tolist() == ["a1", "a1", "a2", "b1", "b2"]
    # Per rollout, not per row: a1 counts once against a2 although it has two rows.
    assert batch.tensors["advantages"][:, 0].tolist() == [1.0, 1.0, -1.0, 0.0, 0.0]
    assert group_advantages([1.0, 0.0, 0.5, 0.5], ["a", "a", "b", "b"]) == [1.0, -1.0, 0.0, 0.0]
    unscaled = convert(
        [FinishedRollout("x", 0, 3.0, [triplet([1], [2])]), FinishedRollout("y", 0, 1.0)], scale_advantages=False
    )
    assert unscaled.tensors["advantages"][:, 0].tolist() == [1.0]


def test_failure_policy_zero_scores_failed_and_timed_out_rollouts_0_and_keeps_them() -> None:
    rollouts = [
        FinishedRollout("ok", 0, 1.0, [triplet([1], [2])]),
        FinishedRollout("crashed", 0, 0.7, [triplet([1], [3])], succeeded=False),
        FinishedRollout("no-reward", 0, None, [triplet([1], [4])]),
    ]
    batch = convert(rollouts, failed_rollouts="zero")
    assert (batch.stats.failed, batch.stats.kept_rollouts, batch.rows) == (2, 3, 3)
    assert batch.tensors["token_level_scores"][:, 0].tolist() == [1.0, 0.0, 0.0]
    assert batch.tensors["advantages"][:, 0].tolist() == pytest.approx(group_advantages([1.0, 0.0, 0.0], [0, 0, 0]))
    assert rollouts[1].reward == 0.7  # the caller's records are left as stored


def test_failure_policy_drop_group_removes_the_whole_task_group() -> None:
    rollouts = [
        FinishedRollout("a1", "a", 1.0, [triplet([1], [2])]),
        FinishedRollout("a2", "a", 0.0, [triplet([1], [3])], succeeded=False),
        FinishedRollout("b1", "b", 1.0, [triplet([5], [6])]),
        FinishedRollout("b2", "b", 0.0, [triplet([5], [7])]),
    ]
    batch = convert(rollouts, failed_rollouts="drop_group")
    assert batch.non_tensors["rollout_id"].tolist() == ["b1", "b2"]
    assert (batch.stats.failed, batch.stats.kept_rollouts) == (1, 2)
    assert batch.meta_info["agl_failed_rollouts"] == "drop_group"


def test_from_scored_reads_a_stored_rollout_that_failed_or_timed_out() -> None:
    rollout = Rollout(rollout_id="ro-9", input={}, status="failed", resources_id="rs-3", start_time=0.0)
    record = FinishedRollout.from_scored(Scored(rollout, 4, 1.0, [triplet([1], [2])]))
    assert (record.rollout_id, record.group, record.reward, record.resources_id) == ("ro-9", 4, 1.0, "rs-3")
    assert record.failed and not record.succeeded


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_prompt_length": 0}, "max_prompt_length must be a positive integer"),
        ({"max_response_length": True}, "max_response_length must be a positive integer"),
        ({"failed_rollouts": "retry"}, "failed_rollouts must be 'zero' or 'drop_group'"),
        ({"normalize": "sequence"}, "normalize must be 'rollout' or 'token'"),
    ],
)
def test_bad_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert([], **options)


# --- normalisation: the same as grpo's ---------------------------------------------------------------


def rollouts_for_weights() -> list[FinishedRollout]:
    return [
        FinishedRollout(
            "two-rows",
            "t",
            1.0,
            [triplet([1], [2, 3], logprobs=[-0.5, -0.7]), triplet([1, 2], [4, 5, 6, 7], logprobs=[-1, -2, -3, -4])],
        ),
        FinishedRollout("one-row", "t", 0.0, [triplet([1], [8, 60, 9], mask=[1, 0, 1], logprobs=[-0.2, 0, -0.9])]),
        FinishedRollout("other", "u", 0.3, [triplet([3, 4], [5], logprobs=[-0.4])]),
    ]


@pytest.mark.parametrize("normalize", ["rollout", "token"])
def test_loss_weights_match_the_grpo_batches_token_for_token(normalize: str) -> None:
    rollouts = rollouts_for_weights()
    batch = convert(rollouts, normalize=normalize)
    advantages = group_advantages([r.reward or 0.0 for r in rollouts], [r.group for r in rollouts])
    items = [Item(r.rollout_id, t, a) for r, a in zip(rollouts, advantages, strict=True) for t in r.triplets]
    agl = build_batch(items, max_length=64, normalize=normalize)  # type: ignore[arg-type]

    weights = batch.tensors["loss_weights"]
    assert float(weights.sum()) == pytest.approx(1.0)
    for row, item in enumerate(items):
        start = len(item.triplet.prompt_token_ids or [])
        width = len(item.triplet.response_token_ids or [])
        # The same weight on the same response token, and the same advantage per row.
        assert weights[row, :width].tolist() == pytest.approx(agl.weights[row, start : start + width].tolist())
        assert float(batch.tensors["advantages"][row, 0]) == pytest.approx(float(agl.advantages[row]))
    if normalize == "rollout":
        totals = {rid: 0.0 for rid in ("two-rows", "one-row", "other")}
        for rid, row_weights in zip(batch.non_tensors["rollout_id"], weights, strict=True):
            totals[rid] += float(row_weights.sum())
        assert totals == pytest.approx({"two-rows": 1 / 3, "one-row": 1 / 3, "other": 1 / 3})
        assert weights[0, :2].tolist() == pytest.approx([1 / 18, 1 / 18])  # 1 / (3 rollouts * 6 tokens)


def test_weighted_advantages_with_a_token_sum_give_grpo_s_clipped_loss() -> None:
    """verl's clipped loss with ``advantages * loss_weights`` and loss_agg_mode="token-sum" is grpo's loss."""
    rollouts = rollouts_for_weights()
    batch = convert(rollouts)
    advantages = group_advantages([r.reward or 0.0 for r in rollouts], [r.group for r in rollouts])
    items = [Item(r.rollout_id, t, a) for r, a in zip(rollouts, advantages, strict=True) for t in r.triplets]
    agl = build_batch(items, max_length=64)

    generator = torch.Generator().manual_seed(0)
    shift = torch.randn(batch.tensors["responses"].shape, generator=generator) * 0.5  # new minus old, per token
    new_verl = batch.tensors["old_log_probs"] + shift
    new_agl = agl.old_logprobs.clone()
    for row, item in enumerate(items):
        start = len(item.triplet.prompt_token_ids or [])
        width = len(item.triplet.response_token_ids or [])
        new_agl[row, start : start + width] += shift[row, :width]
    expected = policy_loss(new_agl, agl.old_logprobs, agl.advantages, agl.weights, clip=0.2).loss

    # The vanilla PPO clip written out on verl's layout (no dual clip), aggregated as a token sum.
    ratio = torch.exp(new_verl - batch.tensors["old_log_probs"])
    folded = batch.tensors["advantages"] * batch.tensors["loss_weights"]
    per_token = torch.maximum(-folded * ratio, -folded * torch.clamp(ratio, 0.8, 1.2))
    verl_style = (per_token * batch.tensors["response_mask"]).sum()
    assert float(verl_style) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert float(expected) != 0.0


# --- scheduling and staleness ------------------------------------------------------------------------


def test_sync_trains_on_fresh_rollouts_and_one_step_off_on_rollouts_one_version_old() -> None:
    assert Schedule().plan(3) == [StepPlan(1, 0, 0, False), StepPlan(2, 1, 1, False), StepPlan(3, 2, 2, False)]
    off = Schedule(mode="one_step_off").plan(4)
    assert [(p.sampled_with, p.trains_at, p.staleness) for p in off] == [(0, 0, 0), (0, 1, 1), (1, 2, 1), (2, 3, 1)]
    assert [p.launch_next_first for p in off] == [True, True, True, False]
    assert Schedule(mode="one_step_off").bound == 1 and Schedule(mode="sync", max_staleness=0).bound == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "fully_async"}, "mode must be one of sync, one_step_off"),
        ({"mode": "sync", "max_staleness": 1}, "max_staleness must be 0 with mode 'sync'"),
        ({"mode": "one_step_off", "max_staleness": 2}, "max_staleness must be 1 with mode 'one_step_off'"),
        ({"mode": "one_step_off", "max_staleness": 0}, "max_staleness must be 1"),
        ({"max_staleness": 0.5}, "max_staleness must be an integer"),
        ({"failed_rollouts": "ignore"}, "failed_rollouts must be 'zero' or 'drop_group'"),
        ({"rollout_timeout": 0}, "rollout_timeout must be a positive number"),
    ],
)
def test_bad_schedules_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(**options)


def test_staleness_is_checked_on_the_versions_rollouts_actually_ran_with() -> None:
    assert check_staleness([], 5, 0) == 0
    assert check_staleness([3, 3], 3, 0) == 0
    assert check_staleness([2, 3], 3, 1) == 1
    with pytest.raises(StaleRollouts, match="staleness 1 exceeds the bound 0"):
        check_staleness([2], 3, 0)
    with pytest.raises(StaleRollouts, match="staleness 2 exceeds the bound 1"):
        check_staleness([1, 3], 3, 1)
    with pytest.raises(StaleRollouts, match="newer than the update's 3"):
        check_staleness([4], 3, 1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        Schedule().plan(0)


def test_padding_to_the_data_parallel_size_adds_rows_that_weigh_nothing() -> None:
    batch = convert(rollouts_for_weights())  # 4 rows
    padded = pad_to_multiple(batch, 3)
    assert padded.rows == 6 and padded.meta_info["agl_padding_rows"] == 2
    t = padded.tensors
    assert torch.equal(t["input_ids"][4:], batch.tensors["input_ids"][:2])  # real sequences, repeated
    assert torch.equal(t["attention_mask"][4:], batch.tensors["attention_mask"][:2])
    for name in ("response_mask", "advantages", "loss_weights", "token_level_scores"):
        assert not t[name][4:].any(), name
    assert float(t["loss_weights"].sum()) == pytest.approx(1.0)
    assert padded.non_tensors["uid"].tolist()[4:] == [PADDING, PADDING]
    assert padded.non_tensors["rollout_id"].tolist()[4:] == [PADDING, PADDING]
    assert pad_to_multiple(batch, 4).rows == 4 and pad_to_multiple(batch, 1).meta_info["agl_padding_rows"] == 0
    with pytest.raises(ValueError, match="multiple must be a positive integer"):
        pad_to_multiple(batch, 0)


def test_a_missing_verl_is_one_clear_error_naming_the_install_command() -> None:
    if importlib.util.find_spec("verl") is not None:
        pytest.skip("verl is installed here")
    with pytest.raises(VerlMissing, match=r"pip install agl-trainer\[verl\]"):
        import_verl()


# --- against verl itself, in an environment of its own -----------------------------------------------

VERL_CHECK = """
import sys
import torch
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.utils.model import compute_position_id_with_mask

saved = torch.load(sys.argv[1], weights_only=False)


class Config(dict):
    clip_ratio, clip_ratio_low, clip_ratio_high = 0.2, None, None
    global_batch_info = {}


config = Config(clip_ratio_c=1e9)
proto = DataProto.from_single_dict(saved["data"], meta_info=saved["meta_info"])
assert len(proto) == saved["rows"], len(proto)
batch = proto.batch
assert torch.equal(compute_position_id_with_mask(batch["attention_mask"]), batch["position_ids"])
loss, _ = core_algos.get_policy_loss_fn("vanilla")(
    old_log_prob=batch["old_log_probs"],
    log_prob=saved["new_log_probs"],
    advantages=batch["advantages"] * batch["loss_weights"],
    response_mask=batch["response_mask"].bool(),
    loss_agg_mode="token-sum",
    config=config,
)
assert abs(float(loss) - saved["grpo_loss"]) < 1e-6, (float(loss), saved["grpo_loss"])

single = DataProto.from_single_dict(saved["single_rows"])
for scale in (False, True):
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=single.batch["token_level_scores"],
        response_mask=single.batch["response_mask"],
        index=single.non_tensor_batch["uid"],
        norm_adv_by_std_in_grpo=scale,
    )
    print("scale" if scale else "mean", advantages[:, 0].tolist())
print("verl ok")
"""


def test_verl_itself_takes_the_batch_and_its_clipped_loss_is_grpo_s(tmp_path: Any) -> None:
    """Runs where ``$AGL_VERL_PYTHON`` names an interpreter with verl installed (verl's own pins keep
    it out of agl's environment; ``python3 dev.py test`` builds ``.venvs/verl``); skipped otherwise."""
    python = os.environ.get("AGL_VERL_PYTHON")
    if not python:
        pytest.skip("AGL_VERL_PYTHON is not set (python3 dev.py test builds .venvs/verl and sets it)")
    rollouts = rollouts_for_weights()
    batch = convert(rollouts)
    advantages = group_advantages([r.reward or 0.0 for r in rollouts], [r.group for r in rollouts])
    items = [Item(r.rollout_id, t, a) for r, a in zip(rollouts, advantages, strict=True) for t in r.triplets]
    agl = build_batch(items, max_length=64)
    shift = torch.randn(batch.tensors["responses"].shape, generator=torch.Generator().manual_seed(1)) * 0.5
    new_agl = agl.old_logprobs.clone()
    for row, item in enumerate(items):
        start, width = len(item.triplet.prompt_token_ids or []), len(item.triplet.response_token_ids or [])
        new_agl[row, start : start + width] += shift[row, :width]
    grpo_loss = float(policy_loss(new_agl, agl.old_logprobs, agl.advantages, agl.weights, clip=0.2).loss)

    single_rows = [
        FinishedRollout("a1", "a", 1.0, [triplet([1], [2])]),
        FinishedRollout("a2", "a", 0.0, [triplet([1], [3, 4])]),
        FinishedRollout("a3", "a", 0.0, [triplet([1], [5])]),
        FinishedRollout("b1", "b", 0.5, [triplet([6], [7])]),
        FinishedRollout("b2", "b", 0.5, [triplet([6], [8])]),
    ]
    single = convert(single_rows, scale_advantages=False)
    path = tmp_path / "batch.pt"
    torch.save(
        {
            "data": batch.data,
            "meta_info": batch.meta_info,
            "rows": batch.rows,
            "new_log_probs": batch.tensors["old_log_probs"] + shift,
            "grpo_loss": grpo_loss,
            "single_rows": single.data,
        },
        path,
    )
    done = subprocess.run([python, "-c", VERL_CHECK, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("mean", "scale")))
    # Mean-only (Dr.GRPO style): verl's own estimator on uid and token_level_scores gives the
    # per-rollout advantages when every rollout is one row.
    assert json.loads(lines["mean"]) == pytest.approx(single.tensors["advantages"][:, 0].tolist(), abs=1e-6)
    # Scaled, verl divides by the sample std (ddof 1) plus epsilon, agl by the population std:
    # group a = [1, 0, 0] has sample std 0.57735 (population 0.4714); the tied group b gives 0 in both.
    sample_std = 0.5773503 + 1e-6
    expected = [(2 / 3) / sample_std, (-1 / 3) / sample_std, (-1 / 3) / sample_std, 0.0, 0.0]
    assert json.loads(lines["scale"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert "verl ok" in done.stdout
