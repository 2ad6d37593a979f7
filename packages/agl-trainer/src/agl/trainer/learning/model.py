"""What trains in a causal LM (everything, the top layers, or LoRA adapters) and how it is saved.

Training only the top layers is what made RL on SmolLM2-135M affordable on CPU (see FACTS): the
embeddings (tied to the output head in small models) hold most of the parameters, and freezing
them and the lower layers cuts the backward pass and the optimizer state. LoRA (peft) is the other
option; it injects adapters into the very module it is given, so an engine serving that module
serves the adapted model at once. Checkpoints are always saved as a plain, merged model folder
with the tokenizer, which ``agl serve`` and ``from_pretrained`` load like any other model.

A save is all or nothing (`save_checkpoint`): a crash, Ctrl-C or full disk midway leaves the
previous checkpoint whole, never old and new weight files mixed (with shards, a mix that loads).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import errno
import fnmatch
import os
import secrets
import shutil
import sys
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
REPLACED = ".replaced-"
"""Name parts of a save's sibling folders: ``.<name>.saving-*`` (being written) and
``.<name>.replaced-*`` (the previous checkpoint, being deleted). Hidden, so never taken for a checkpoint."""
MODEL_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json", "adapter_config.json")
"""Files of a previous save that must not survive beside new weights (loaders read every shard,
and an ``adapter_config.json`` makes the folder an adapter); a user's other files are kept."""
TOKENIZER_FILES = (
    "tokenizer*",
    "vocab.*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
)
"""The previous tokenizer's files, replaced when a tokenizer is saved (kept when none is)."""
RENAME_EXCHANGE = 2
"""Linux's renameat2 flag: swap two paths in one step."""
AT_FDCWD = -100


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """Save ``model`` (LoRA merged) and ``tokenizer`` as a servable model folder; returns it.

    All or nothing: the save is written into a sibling folder (same filesystem) and swapped into
    place, so a reader sees the previous checkpoint or the new one, whole. ``folder`` may be the
    model's own folder (the old files are unlinked, not overwritten: a memory map of them stays
    valid). Files there that a save does not write are kept (hard links), except weights and
    configs of an earlier save (`MODEL_FILES`, and `TOKENIZER_FILES` when a tokenizer is saved).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"the checkpoint folder {folder} is a file")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    staging = _sibling(folder, SAVING)
    try:
        merged_copy(model).save_pretrained(staging)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if folder.is_dir():
            replaced = TOKENIZER_FILES if tokenizer is not None else ()
            _keep_other_files(folder, staging, (*MODEL_FILES, *replaced))
        _sync_tree(staging)
        _put_in_place(staging, folder)
    finally:  # a failed save; after a swap, the previous checkpoint; after a rename, nothing
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _sibling(folder: Path, kind: str) -> Path:
    """A new empty hidden folder beside ``folder``, with the mode ``folder`` has (else the umask's,
    not `tempfile`'s owner-only mode, which would stay on the checkpoint)."""
    while True:
        sibling = folder.parent / f".{folder.name}{kind}{secrets.token_hex(4)}"
        try:
            sibling.mkdir()
        except FileExistsError:
            continue
        if folder.is_dir():
            shutil.copymode(folder, sibling)
        return sibling


def _leftovers(folder: Path, kind: str) -> list[Path]:
    prefix = f".{folder.name}{kind}"
    return sorted(entry for entry in folder.parent.iterdir() if entry.name.startswith(prefix))


def _remove_leftovers(folder: Path) -> None:
    """Delete what crashed saves into ``folder`` left beside it; if one crashed between moving the
    old checkpoint aside and the new one in (only without `RENAME_EXCHANGE`), put the old one back."""
    for leftover in _leftovers(folder, REPLACED):
        if not folder.exists():
            os.rename(leftover, folder)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in _leftovers(folder, SAVING):
        shutil.rmtree(leftover, ignore_errors=True)


def _keep_other_files(old: Path, new: Path, replaced: tuple[str, ...]) -> None:
    """Hard-link into ``new`` what ``old`` holds that the save did not write (a README, a ``.git``),
    except top-level files matching ``replaced``."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or target.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        elif not any(fnmatch.fnmatch(entry.name, pattern) for pattern in replaced):
            _link_or_copy(entry, target)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (no copy of the data); a copy where the file is on another filesystem."""
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _sync_tree(folder: Path) -> None:
    """Flush the save to disk before it is put in place, so a power loss cannot leave a checkpoint
    folder whose files are empty."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as file:
                os.fsync(file.fileno())
        elif path.is_dir() and not path.is_symlink():
            _sync_folder(path)
    _sync_folder(folder)


def _put_in_place(staging: Path, folder: Path) -> None:
    """Make ``staging`` be ``folder``: a rename when there is none yet, else an atomic swap on Linux
    (elsewhere, or where the filesystem cannot swap: the old aside, the new in, for an instant no
    folder at all, never a mix). After a swap ``staging`` holds the previous checkpoint."""
    if not folder.exists():
        os.rename(staging, folder)
    elif not _exchange(staging, folder):
        aside = _sibling(folder, REPLACED)
        os.replace(folder, aside)
        os.rename(staging, folder)
        shutil.rmtree(aside, ignore_errors=True)
    _sync_folder(folder.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, f"cannot put the new checkpoint in place of {second}: {os.strerror(error)}")


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (where folders can be opened: not on Windows)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
