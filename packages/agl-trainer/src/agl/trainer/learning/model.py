"""What trains in a causal LM (everything, the top layers, or LoRA adapters) and how it is saved.

Training only the top layers is what made RL on SmolLM2-135M affordable on CPU (see FACTS): the
embeddings (tied to the output head in small models) hold most of the parameters, and freezing
them and the lower layers cuts the backward pass and the optimizer state. LoRA (peft) is the other
option; it injects adapters into the very module it is given, so an engine serving that module
serves the adapted model at once. Checkpoints are always saved as a plain, merged model folder
with the tokenizer, which ``agl serve`` and ``from_pretrained`` load like any other model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a Llama/Qwen/Mistral-style (``model.layers``) or GPT-style (``h``) LM."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h") and len(module):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def prepare_trainable(
    model: torch.nn.Module,
    *,
    top_layers: int | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
) -> list[torch.nn.Parameter]:
    """Make only the chosen parameters require grad and return them (for the optimizer).

    ``lora_rank``: LoRA adapters on every linear projection of the decoder layers (in place, see the
    module docstring). Else ``top_layers``: the last ``k`` decoder layers and the final norm. Else
    every parameter.
    """
    if lora_rank is not None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = sorted(
            {
                name.split(".")[-1]
                for name, module in decoder_layers(model).named_modules()
                if isinstance(module, torch.nn.Linear)
            }
        )
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank, target_modules=targets)
        inject_adapter_in_model(config, model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("lora_" in name)
    elif top_layers is not None:
        layers = decoder_layers(model)
        if not 1 <= top_layers <= len(layers):
            raise ValueError(f"top_layers must be between 1 and {len(layers)}, not {top_layers}")
        model.requires_grad_(False)
        for layer in list(layers)[-top_layers:]:
            layer.requires_grad_(True)
        norm = _final_norm(model)
        if norm is not None:
            norm.requires_grad_(True)
    else:
        model.requires_grad_(True)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    return getattr(inner, "norm", None) or getattr(inner, "ln_f", None)


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with LoRA adapters folded into the base weights (a plain model to save)."""
    if not has_lora(model):
        return model
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = merged.get_submodule(parent_name) if parent_name else merged
            setattr(parent, child, module.get_base_layer())
    return merged


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """Save ``model`` (LoRA merged) and ``tokenizer`` as a servable model folder; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = merged_copy(model)
    plain.save_pretrained(folder)  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
