"""The model being trained, served to the agents: engine in this process → OpenAI app → LLM proxy.

`ServedPolicy` loads the embedded transformers engine, serves it on a thread (the "transformers"
model server), starts the LLM proxy in front of it and hands out the proxy's `ProxyLLM` resource.
Agents then call the model through the proxy, which records every call's exact token ids and
logprobs into the store; the trainers read them back as triplets. Because the engine lives in this
process, a trainer can update ``policy.model`` in place under ``policy.exclusive()`` and the very
next request samples from the new weights (no checkpoint round trip). An engine in another process
(vLLM, say) would instead get a saved checkpoint through `ModelServer.load_weights`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from agl.core.store.base import LightningStore
from agl.core.types.resources import ProxyLLM


class ServedPolicy:
    """Start with `start` (returns the resource to publish); always `stop` (also on errors)."""

    def __init__(
        self,
        model: str | Path,
        store: LightningStore,
        *,
        seed: int | None = None,
        device: str = "cpu",
        sampling_parameters: dict[str, Any] | None = None,
        max_batch_size: int = 8,
    ) -> None:
        from agl.trainer.proxy import LlmProxy
        from agl.trainer.serving.embedded import EmbeddedModelServer
        from agl.trainer.serving.transformers_engine import TransformersEngine

        self.engine = TransformersEngine.load(model, seed=seed, device=device, max_batch_size=max_batch_size)
        self.server = EmbeddedModelServer(model, engine=self.engine)
        self._proxy_class = LlmProxy
        self.store = store
        self.sampling_parameters = dict(sampling_parameters or {})
        self.proxy: Any = None

    @property
    def model(self) -> torch.nn.Module:
        """The live module the engine samples from."""
        model: torch.nn.Module = self.engine.model
        return model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def pad_token_id(self) -> int:
        return int(self.engine.pad_token_id)

    def start(self) -> ProxyLLM:
        base_url = self.server.start()
        self.proxy = self._proxy_class(
            self.store, [base_url], model=self.engine.model_name, sampling_parameters=self.sampling_parameters
        )
        resource: ProxyLLM = self.proxy.start()
        return resource

    @contextmanager
    def exclusive(self) -> Iterator[torch.nn.Module]:
        """Hold the engine (no token is sampled meanwhile) while the weights change in place."""
        with self.engine.exclusive() as model:
            yield model

    def load_weights(self, folder: str | Path) -> None:
        """Serve a saved checkpoint (what an out-of-process engine would be given)."""
        self.server.load_weights(folder)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self.server.stop()  # also closes the engine
