"""The `verl` algorithm plugin: RL at scale through verl (FSDP actor, vLLM replicas, Ray), with rollouts
from unchanged agents through agl's store and LLM proxy. See docs/verl.md.

- `algorithm`: the ``verl`` algorithm (`Verl`): the steps of a fit; `plugin` registers it.
- `options`: its options, checked (plain Python), and the verl keys it sets itself.
- `config`: verl's config for a fit: verl's defaults, the plugin's settings, the user's overrides.
- `cluster`: verl's worker group, vLLM replicas, weight pushes and checkpoints (imports verl).
- `conversion`: finished rollouts (their stored spans, as triplets) → a batch in verl's PPO layout
  as plain torch tensors and numpy arrays, with the `grpo` plugin's semantics (exact engine token
  ids, calls merged only where ids continue, per-rollout advantages and loss weights), and
  `pad_to_multiple` for verl's data-parallel split. Needs torch; never imports verl.
- `policy`: synchronous or one-step-off training with an explicit staleness bound, and the
  failure policy for failed or timed-out rollouts.
- `runtime`: where verl is first imported, with an error naming the install command.

Only `cluster`, `config.build_config` and the fit import verl (after `runtime.import_verl`), so the
plugin is listed, and its options checked, without verl.
"""
