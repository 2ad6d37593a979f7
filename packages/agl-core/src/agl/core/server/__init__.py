"""The store server: the whole `LightningStore` protocol over HTTP, plus OTLP/HTTP trace ingest.

    agl store serve --store sqlite:///.agl/store.db --port 4747 --token …

Needs the ``server`` extra (FastAPI, uvicorn, the OTLP protobuf classes, the Prometheus client).
"""

from agl.core.server.app import create_app
from agl.core.server.run import serve
from agl.core.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
