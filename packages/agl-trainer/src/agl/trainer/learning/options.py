"""Checks of the options the built-in trainers (`sft`, `grpo`) share, each error naming the
algorithm and the option, and where each one keeps its checkpoints. Plain Python: no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def positive_int(algorithm: str, option: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{algorithm} option {option} must be a positive integer, not {value!r}")


def non_negative_int(algorithm: str, option: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{algorithm} option {option} must be a non-negative integer, not {value!r}")


def positive_number(algorithm: str, option: str, value: Any) -> None:
    """Written ``not value > 0`` so NaN is refused too (``grad_clip=nan`` would make every weight NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{algorithm} option {option} must be a positive number, not {value!r}")


def non_negative_number(algorithm: str, option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{algorithm} option {option} must be a non-negative number, not {value!r}")


def check_model(algorithm: str, model: Any) -> str:
    """The ``model`` option (a model folder or ``.gguf`` file) as a string."""
    if not isinstance(model, str | Path) or not str(model):
        raise ValueError(f"{algorithm} option model must be a model folder or .gguf path, not {model!r}")
    return str(model)


def check_trainable(algorithm: str, top_layers: Any, lora_rank: Any) -> None:
    """``top_layers`` and ``lora_rank``: each a positive integer or None, not both set."""
    for option, value in (("top_layers", top_layers), ("lora_rank", lora_rank)):
        if value is not None:
            positive_int(algorithm, option, value)
    if top_layers is not None and lora_rank is not None:
        raise ValueError(f"{algorithm} options top_layers and lora_rank exclude each other")


def check_serving(algorithm: str, device: Any, model_server: Any, model_server_options: Any) -> dict[str, Any]:
    """``device``, ``model_server`` and ``model_server_options``; returns the options as a new dict."""
    if not isinstance(device, str) or not device:
        raise ValueError(f"{algorithm} option device must be a torch device name, not {device!r}")
    if model_server is not None and (not isinstance(model_server, str) or not model_server):
        raise ValueError(
            f"{algorithm} option model_server must be a registered model server's name, not {model_server!r}"
        )
    if model_server_options is not None and not isinstance(model_server_options, dict):
        raise ValueError(f"{algorithm} option model_server_options must be a mapping, not {model_server_options!r}")
    return dict(model_server_options or {})


def check_outputs(algorithm: str, seed: Any, checkpoint_dir: Any, resource: Any) -> None:
    """``seed`` an integer, ``checkpoint_dir`` None or a path, ``resource`` a name: checked when the
    trainer is built, since the first use of ``checkpoint_dir`` can come after the whole training."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"{algorithm} option seed must be an integer, not {seed!r}")
    if checkpoint_dir is not None and (not isinstance(checkpoint_dir, str | Path) or not str(checkpoint_dir)):
        raise ValueError(f"{algorithm} option checkpoint_dir must be a folder path, not {checkpoint_dir!r}")
    if not isinstance(resource, str) or not resource:
        raise ValueError(f"{algorithm} option resource must be a resource name, not {resource!r}")


def checkpoint_folder(checkpoint_dir: str | None, trainer: Any, default_name: str) -> Path | None:
    """``checkpoint_dir`` when given, else ``<trainer output dir>/<default_name>``, else None."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir)
    output = getattr(trainer, "output_dir", None)
    return Path(output) / default_name if output is not None else None
