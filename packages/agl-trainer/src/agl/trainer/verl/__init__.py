"""The CPU-testable core of the `verl` algorithm plugin (RL at scale through verl, Ray and vLLM).

- `conversion`: finished rollouts (their stored spans, as triplets) → a batch in verl's PPO layout
  as plain torch tensors and numpy arrays, with the `grpo` plugin's semantics (exact engine token
  ids, calls merged only where ids continue, per-rollout advantages and loss weights), and
  `pad_to_multiple` for verl's data-parallel split. Needs torch (the ``train`` extra); never
  imports verl.
- `policy`: synchronous or one-step-off training with an explicit staleness bound, and the
  failure policy for failed or timed-out rollouts.
- `runtime`: the one place verl will be imported, with an error naming the install command.

The plugin that drives verl's workers is not here yet: it needs GPUs to run. See docs/verl.md.
"""
