"""The learning side of the trainer's built-in `sft` and `grpo`: triplets → tensors → losses → steps.

Each module has one job: `batches` turns triplets (exact engine token ids) into padded tensors with
per-rollout weights, `advantages` scores rollouts within their task's group, `losses` holds the
policy-gradient, KL and SFT losses, `model` chooses what trains (top layers or LoRA) and saves a
servable checkpoint, `step` runs one weighted backward pass in micro-batches. Needs torch (the
``train`` extra); nothing here talks to the store or the runners.
"""
