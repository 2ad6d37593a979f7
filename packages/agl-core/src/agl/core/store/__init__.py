"""Stores: where rollouts, attempts, spans, resources and workers live."""

from agl.core.store.base import UNSET, LightningStore, Page, StoreStatistics
from agl.core.store.memory import InMemoryLightningStore
from agl.core.store.sqlite import SqliteLightningStore
from agl.core.store.sync import SyncStore, open_store_sync
from agl.core.store.urls import DEFAULT_STORE_URL, default_store_url, open_store

__all__ = [
    "DEFAULT_STORE_URL",
    "UNSET",
    "InMemoryLightningStore",
    "LightningStore",
    "Page",
    "SqliteLightningStore",
    "StoreStatistics",
    "SyncStore",
    "default_store_url",
    "open_store",
    "open_store_sync",
]
