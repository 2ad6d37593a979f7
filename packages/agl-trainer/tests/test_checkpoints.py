"""A checkpoint save is written whole before it replaces the previous one: a save that fails midway
(a crash, Ctrl-C, a full disk) leaves the previous checkpoint whole and loadable, never old and new
files mixed; a fresh folder is not left half-written; a folder's other files are kept and an earlier
save's weights are not; a folder that is a symlink is saved into, not replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from agl.trainer.learning.model import save_checkpoint
from agl.trainer.testing import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def load(folder: Path) -> tuple[torch.nn.Module, object]:
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def shift(model: torch.nn.Module, by: float) -> None:
    """Change every weight, so two saves are told apart."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(by)


def unserialisable(tokenizer: object) -> object:
    """A tokenizer whose save fails after the model's weights are written (a real failure: its
    config cannot be written as JSON), as a crash or a full disk midway would."""
    tokenizer.init_kwargs["broken"] = object()  # type: ignore[attr-defined]
    return tokenizer


def entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def test_a_save_failing_midway_leaves_the_previous_checkpoint_whole(tiny: Path, tmp_path: Path) -> None:
    model, tokenizer = load(tiny)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "checkpoint")
    before = weights(checkpoint)
    shift(model, 1.0)
    with pytest.raises(TypeError, match="JSON serializable"):
        save_checkpoint(model, unserialisable(AutoTokenizer.from_pretrained(tiny)), checkpoint)
    after = weights(checkpoint)
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    _, reloaded_tokenizer = load(checkpoint)  # the tokenizer's config is not half-written either
    assert reloaded_tokenizer("hello")["input_ids"] == tokenizer("hello")["input_ids"]
    assert entries(tmp_path) == ["checkpoint"] and not list(checkpoint.glob(".saving-*"))  # nothing left


def test_a_failed_first_save_leaves_no_folder_that_looks_like_a_checkpoint(tiny: Path, tmp_path: Path) -> None:
    model, _ = load(tiny)
    with pytest.raises(TypeError, match="JSON serializable"):
        save_checkpoint(model, unserialisable(AutoTokenizer.from_pretrained(tiny)), tmp_path / "checkpoint")
    assert entries(tmp_path) == []


class FailsAfterAnotherSave:
    """A tokenizer whose save fails, after another process finished a save into the same folder
    meanwhile (a relaunched job): a failed first save must not take that checkpoint with it."""

    def save_pretrained(self, staging: str) -> None:
        (Path(staging).parent / "model.safetensors").write_text("theirs")
        raise OSError("No space left on device")


def test_a_failed_first_save_removes_only_what_it_made(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(load(tiny)[0], FailsAfterAnotherSave(), tmp_path / "checkpoint")
    assert entries(tmp_path / "checkpoint") == ["model.safetensors"]


def test_a_save_removes_only_what_an_earlier_save_wrote(tiny: Path, tmp_path: Path) -> None:
    """A user's optimizer state and notes beside the weights stay; an earlier tokenizer's chat
    templates, which the new tokenizer does not write, go (they would be rendered)."""
    model, tokenizer = load(tiny)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "checkpoint")
    mine = ["optimizer.pt", "rng_state.pth", "tokenizer_notes.txt"]
    for name in mine:
        (checkpoint / name).write_text("mine")
    (checkpoint / "additional_chat_templates").mkdir()
    (checkpoint / "additional_chat_templates" / "tool_use.jinja").write_text("old")
    save_checkpoint(model, tokenizer, checkpoint)
    assert all((checkpoint / name).read_text() == "mine" for name in mine)
    assert not (checkpoint / "additional_chat_templates").exists()


def test_a_leftover_of_a_crashed_save_is_removed_by_the_next_save(tiny: Path, tmp_path: Path) -> None:
    model, tokenizer = load(tiny)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "checkpoint")
    leftover = checkpoint / ".saving-crashed"
    model.save_pretrained(leftover)  # a crashed save got this far: hidden, and not the checkpoint
    save_checkpoint(model, tokenizer, checkpoint)
    assert not leftover.exists()
    load(checkpoint)


def test_a_save_replaces_an_earlier_saves_shards_and_keeps_the_users_files(tiny: Path, tmp_path: Path) -> None:
    """Loaders read every ``*.safetensors`` file: a stale shard beside new weights is a silent mix.
    The user's own files (notes, a ``.git``) are theirs: kept."""
    model, tokenizer = load(tiny)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint, max_shard_size="50KB")
    assert len(list(checkpoint.glob("model-*.safetensors"))) > 1
    (checkpoint / "NOTES.md").write_text("mine")
    (checkpoint / ".git").mkdir()
    (checkpoint / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    shift(model, 1.0)
    save_checkpoint(model, tokenizer, checkpoint)
    assert not list(checkpoint.glob("model-*")) and not (checkpoint / "model.safetensors.index.json").exists()
    assert (checkpoint / "NOTES.md").read_text() == "mine"
    assert (checkpoint / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    saved = weights(checkpoint)
    assert all(torch.equal(saved[name], parameter) for name, parameter in model.state_dict().items() if name in saved)
    load(checkpoint)


def test_a_model_saved_into_its_own_folder_keeps_working(tiny: Path, tmp_path: Path) -> None:
    """``checkpoint_dir`` = the model's folder: the old files are unlinked, not overwritten, so the
    loaded model (maybe memory-mapped from them) still runs, and the folder holds the new weights."""
    own = tmp_path / "model"
    save_checkpoint(*load(tiny), own)
    model, tokenizer = load(own)
    shift(model, 0.5)
    save_checkpoint(model, tokenizer, own)
    ids = torch.tensor([[5, 9, 17, 33]])
    reloaded, _ = load(own)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert entries(tmp_path) == ["model"]


def test_a_checkpoint_folder_that_is_a_symlink_is_saved_into(tiny: Path, tmp_path: Path) -> None:
    """``latest -> step-1``: the save goes into the folder the link names, and the link stays."""
    model, tokenizer = load(tiny)
    (tmp_path / "step-1").mkdir()
    (tmp_path / "latest").symlink_to("step-1")
    save_checkpoint(model, tokenizer, tmp_path / "latest")
    assert (tmp_path / "latest").is_symlink() and (tmp_path / "step-1" / "config.json").exists()
    assert entries(tmp_path / "step-1") == entries(tmp_path / "latest")
    load(tmp_path / "latest")


def test_a_checkpoint_folder_that_is_a_file_is_refused(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_checkpoint(load(tiny)[0], None, tmp_path / "checkpoint")
