"""What one `sft` optimizer step learns from, checked against a loss written out by hand on the
tiny model: only generated tokens (not the prompt, not tool output between merged calls, not
padding), each kept rollout weighing the same whatever its length or number of calls, and the
same gradient however the step is split into micro-batches."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.core.types.triplets import Triplet  # noqa: E402
from agl.trainer.algorithms.sft import SFT  # noqa: E402
from agl.trainer.learning.losses import token_logprobs  # noqa: E402
from agl.trainer.learning.optimizer import MasterAdamW  # noqa: E402
from agl.trainer.learning.rollouts import Scored  # noqa: E402
from agl.trainer.testing import build_tiny_model  # noqa: E402


def triplet(prompt: list[int], response: list[int], mask: list[int] | None = None) -> Triplet:
    return Triplet(prompt=None, response=None, prompt_token_ids=prompt, response_token_ids=response, response_mask=mask)


def kept_rollout(rollout_id: str, *triplets: Triplet) -> Scored:
    rollout: Any = SimpleNamespace(rollout_id=rollout_id, status="succeeded")
    return Scored(rollout=rollout, group=0, reward=1.0, triplets=list(triplets))


CHUNK = [
    kept_rollout("long", triplet([5, 6, 7], [8, 9, 10, 11, 12, 13, 2]), triplet([5, 6], [14, 2])),
    kept_rollout("short", triplet([3, 4, 5, 6, 7, 8, 9], [20, 2])),
    # One merged conversation: answer, tool output (masked), answer.
    kept_rollout("merged", triplet([1, 3], [21, 22, 30, 31, 32, 23, 2], [1, 1, 0, 0, 0, 1, 1])),
]


def by_hand(model: Any, chunk: list[Scored]) -> Any:
    """Mean over rollouts of each rollout's mean negative logprob over its generated tokens."""
    per_rollout = []
    for scored in chunk:
        total, count = 0.0, 0
        for t in scored.triplets:
            prompt, response = t.prompt_token_ids or [], t.response_token_ids or []
            ids = torch.tensor([prompt + response])
            logprobs = token_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt) :]
            mask = torch.tensor(t.response_mask or [1] * len(response), dtype=torch.float32)
            total, count = total - (logprobs * mask).sum(), count + int(mask.sum())
        per_rollout.append(total / count)
    return sum(per_rollout) / len(per_rollout)


def gradient_of_one_step(model: Any, micro_batch_rows: int) -> tuple[float, list[Any]]:
    student = copy.deepcopy(model)
    parameters = list(student.parameters())
    sft = SFT(model="m", batch_size=micro_batch_rows, grad_clip=1e9)  # the step clips the gradient in place
    loss, dropped = sft._step(student, MasterAdamW(parameters, lr=1e-3), CHUNK, 0)
    assert loss is not None and dropped == 0
    return loss, [p.grad.clone() for p in parameters]


def test_one_step_is_the_per_rollout_mean_of_generated_tokens_whatever_the_micro_batches(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "tiny", seed=0)).eval()
    reference = copy.deepcopy(model)
    expected = by_hand(reference, CHUNK)
    expected.backward()

    for rows in (1, 2, 8):  # the chunk's 4 rows in 4, 2 or 1 micro-batches
        loss, gradients = gradient_of_one_step(model, rows)
        assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
        for gradient, wanted in zip(gradients, reference.parameters(), strict=True):
            assert torch.allclose(gradient, wanted.grad, atol=1e-6), rows
