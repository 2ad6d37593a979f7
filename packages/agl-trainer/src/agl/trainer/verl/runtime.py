"""Importing verl itself, only where a GPU run needs it, with an error that says what to install.

The conversion, the options and the plugin's registration never import verl; a fit calls
`import_verl` first, so a missing verl is one clear error at the start of a fit, not an
ImportError from deep inside a worker.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install agl-trainer[verl]"
TESTED_VERSION = "0.9.1"
"""The verl release whose batch layout, estimators and loss modes the conversion was written against."""


class VerlMissing(ImportError):
    """verl is not importable in this environment."""


def import_verl() -> ModuleType:
    """The ``verl`` module, or `VerlMissing` naming the install command (verl runs on GPUs: it needs
    CUDA builds of torch and vLLM, and its base requires transformers<5.11)."""
    try:
        return importlib.import_module("verl")
    except ImportError as error:
        raise VerlMissing(
            f"the verl algorithm needs verl (written against {TESTED_VERSION}), which is not importable here "
            f"({error}); install it with `{INSTALL_HINT}` in a GPU environment"
        ) from error
