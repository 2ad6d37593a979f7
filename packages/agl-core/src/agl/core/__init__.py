"""agl core: the data model, the stores and (soon) the tracing runtime.

from agl.core import open_store
store = open_store()            # $AGL_STORE, else sqlite:///.agl/store.db
"""

from agl.core.errors import (
    AglError,
    AttemptNotFound,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ResourcesNotFound,
    RolloutNotFound,
    StoreUnavailable,
    StoreUrlError,
)
from agl.core.store import LightningStore, Page, open_store
from agl.core.types import *  # noqa: F403
from agl.core.types import __all__ as _types
from agl.core.version import __version__

__all__ = [
    "AglError",
    "AttemptNotFound",
    "InvalidInput",
    "InvalidTransition",
    "LightningStore",
    "NotFound",
    "Page",
    "ResourcesNotFound",
    "RolloutNotFound",
    "StoreUnavailable",
    "StoreUrlError",
    "__version__",
    "open_store",
    *_types,
]
