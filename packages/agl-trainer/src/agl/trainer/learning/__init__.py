"""The learning side of the trainer's built-in `sft` and `grpo`: rollouts → triplets → tensors → steps.

One job per module: `rollouts` runs task groups and reads each rollout's reward and triplets back
from the store (exact engine token ids); `advantages` scores rollouts within their task's group;
`batches` turns triplets into padded tensors with per-rollout loss weights; `losses` holds the
clipped policy-gradient, k3 KL and SFT losses; `step` runs one weighted backward pass in
micro-batches; `optimizer` is AdamW with float32 master copies of half-precision (GPU) weights, whose
own rounding would swallow small updates; `model` chooses what trains (top layers or LoRA) and saves a
servable checkpoint; `session` serves the model being trained through the LLM proxy; `options` checks
the options both trainers take. All but `rollouts` and `session` never touch the store. Needs torch
(the ``train`` extra), except `options`.
"""
