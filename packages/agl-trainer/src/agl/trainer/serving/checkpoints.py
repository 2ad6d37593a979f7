"""Reading models and weights from disk for the embedded engine: model folders, GGUF files, checkpoints.

A GGUF file is dequantised by transformers into a model that refuses ``save_pretrained``; it is
rebuilt here as a plain model from its config (the quantisation note dropped) with the same
state dict, so it can be trained, saved and served again like any folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


class CheckpointError(ValueError):
    """A model or checkpoint folder that cannot be loaded; carries the path."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """float32 on CPU, bfloat16 elsewhere, unless asked otherwise (``"float16"``, ``torch.bfloat16``...)."""
    if dtype is None or dtype == "auto":
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype), None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return found


def load_model_and_tokenizer(path: str | Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """A causal LM and its tokenizer (with its chat template) from a model folder or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such model folder or GGUF file")
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        return _plain_copy(gguf_model, dtype), tokenizer
    if not (path / "config.json").exists():
        raise CheckpointError(path, "not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def _plain_copy(gguf_model: Any, dtype: torch.dtype) -> Any:
    """The same weights in a model built from the config alone, which ``save_pretrained`` accepts."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    return model


def is_adapter(folder: Path) -> bool:
    """A peft adapter folder (``adapter_config.json``) rather than full weights."""
    return (folder / "adapter_config.json").exists()


def read_full_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files of a ``save_pretrained`` folder (single file or shards)."""
    if not folder.is_dir():
        raise CheckpointError(folder, "no such checkpoint folder")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(folder, "no *.safetensors weights (nor adapter_config.json)")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(file))
    return weights


def copy_full_weights(model: Any, folder: Path) -> None:
    """Copy a checkpoint's weights into ``model`` in place; every weight must match by name and shape."""
    weights = read_full_weights(folder)
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    if unexpected:
        raise CheckpointError(folder, f"weights this model does not have: {', '.join(unexpected[:5])}")
    for name, tensor in weights.items():
        if own[name].shape != tensor.shape:
            raise CheckpointError(folder, f"{name} has shape {tuple(tensor.shape)}, the model {tuple(own[name].shape)}")
    missing = set(own) - set(weights)
    if getattr(model.config, "tie_word_embeddings", False):
        missing.discard("lm_head.weight")  # tied to the input embeddings, saved once
    if missing:
        raise CheckpointError(folder, f"weights missing from the checkpoint: {', '.join(sorted(missing)[:5])}")
    model.load_state_dict(weights, strict=False)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def merge_adapter(model: Any, folder: Path) -> Any:
    """``model`` with a peft (e.g. LoRA) adapter merged into its weights; returns the merged model."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return merged
