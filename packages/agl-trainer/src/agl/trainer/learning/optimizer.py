"""AdamW for the trainers, stepping float32 master copies of weights held in half precision.

Off the CPU the engine loads the model in bfloat16, and `grpo` trains that very module (`sft` a copy
of it). bfloat16 keeps 8 significant bits, so adding a change smaller than about 1/256 of a weight
rounds back to the same weight, and AdamW moves each weight by about ``lr`` per step: at lr 5e-5
every weight above ~0.013 in magnitude (about half of a typical layer) would never move, at 1e-6
almost none would, and training would silently do little. Here AdamW steps float32 copies and the
model gets their rounded values after each step; the copies keep the small updates, which add up
until the rounded weight moves. Other parameters (float32) are stepped in place, exactly as plain AdamW does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

HALF = (torch.bfloat16, torch.float16)


class MasterAdamW:
    """AdamW (no weight decay) over ``parameters``; half-precision ones through float32 masters."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], *, lr: float) -> None:
        self.parameters = list(parameters)
        self.masters = [
            p.detach().float().clone().requires_grad_(True) if p.dtype in HALF else p for p in self.parameters
        ]
        self.adamw = torch.optim.AdamW(self.masters, lr=lr, weight_decay=0.0)

    def zero_grad(self) -> None:
        for tensor in (*self.parameters, *self.masters):
            tensor.grad = None

    def step(self, grad_clip: float) -> float:
        """Clip the gradient to a global norm of ``grad_clip``, step, and return the norm before clipping."""
        for parameter, master in self._pairs():
            master.grad = None if parameter.grad is None else parameter.grad.float()
        norm = float(torch.nn.utils.clip_grad_norm_(self.masters, grad_clip))
        self.adamw.step()
        with torch.no_grad():
            for parameter, master in self._pairs():
                parameter.copy_(master)
        return norm

    def _pairs(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """The half-precision parameters with their masters (the others need no copying)."""
        return [(p, m) for p, m in zip(self.parameters, self.masters, strict=True) if m is not p]
