"""What trains in a causal LM (everything, the top layers, or LoRA adapters) and how it is saved.

Training only the top layers is what made RL on SmolLM2-135M affordable on CPU (see FACTS): the
embeddings (tied to the output head in small models) hold most of the parameters, and freezing
them and the lower layers cuts the backward pass and the optimizer state. LoRA (peft) is the other
option; it injects adapters into the very module it is given, so an engine serving that module
serves the adapted model at once. Checkpoints are always saved as a plain, merged model folder
with the tokenizer, which ``agl serve`` and ``from_pretrained`` load like any other model.

A save is written whole before it replaces the previous one (`save_checkpoint`): a crash, Ctrl-C or
full disk while writing leaves the previous checkpoint whole, not old and new weight files mixed
(with shards, a mix that loads).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import os
import shutil
import tempfile
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


SAVING = ".saving-"
"""Name start of the hidden folder a save is written into, inside the checkpoint folder."""
MODEL_FILES = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
)
"""What a model save writes: an earlier save's that this one did not write must go (loaders read
every shard the folder holds, and an ``adapter_config.json`` makes the folder an adapter). Named
narrowly: a user's own files (an ``optimizer.pt``, notes) stay."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates",
)
"""What a tokenizer save writes, files and a folder: an earlier tokenizer's go when a tokenizer is
saved (a stale template would be rendered), and stay when none is."""


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, folder: str | Path, *, durable: bool = True) -> Path:
    """Save ``model`` (LoRA merged) and ``tokenizer`` as a servable model folder; returns it.

    The save is written whole into a hidden folder inside ``folder`` first, then each entry is
    moved into place (``os.replace``, atomic per file), weights last, and what an earlier save wrote
    that this one did not is removed (`MODEL_FILES`, and `TOKENIZER_FILES` when a tokenizer is
    saved); the user's other files stay. So a save that fails while writing (a crash, Ctrl-C, a
    full disk: the long part) leaves the previous checkpoint as it was; a move that fails keeps the
    rest of the new save in its hidden folder, named in the error. Staged inside ``folder``, not
    beside it, so that a folder that is a mount point, a symlink or an image's layer can be saved
    into, as a plain save could. Old files are unlinked, not overwritten: a model memory-mapped from
    them (``folder`` is its own folder) keeps working. ``durable``: flush the files and the folder
    to disk (a power loss then never leaves empty files or the old entries); off for a save that is
    loaded and deleted at once. One save into a folder at a time: a second, started meanwhile,
    removes the first's hidden folder as a crashed save's leftover.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"the checkpoint folder {folder} is a file")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(f"{SAVING}*"):  # of a save that crashed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=SAVING, dir=folder))
    try:
        merged_copy(model).save_pretrained(staging)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if durable:
            _flush(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:  # a first save that failed leaves no folder that looks like a checkpoint
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        _move_in(staging, folder, (*MODEL_FILES, *(TOKENIZER_FILES if tokenizer is not None else ())))
    except BaseException as error:
        error.add_note(f"the new checkpoint's entries not moved into {folder} are in {staging}")
        raise
    shutil.rmtree(staging, ignore_errors=True)
    if durable:
        _flush_folder(folder)
    return folder


def _move_in(staging: Path, folder: Path, replaced: tuple[str, ...]) -> None:
    """Move a finished save into ``folder``, weights last, then remove what an earlier save wrote
    that this one did not (a stale shard beside new weights would be loaded with them)."""
    written = sorted(staging.iterdir(), key=lambda entry: _matches(entry.name, MODEL_FILES))
    for entry in written:
        target = folder / entry.name
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    names = {entry.name for entry in written}
    for entry in folder.iterdir():
        if entry.name in names or not _matches(entry.name, replaced):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _flush(folder: Path) -> None:
    """Flush a save's files to disk. Windows cannot flush a file opened for reading: skipped there."""
    if os.name == "nt":
        return
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as file:
                os.fsync(file.fileno())


def _flush_folder(folder: Path) -> None:
    """Flush a folder's entries (the moves and removals) to disk, where a folder can be opened."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
