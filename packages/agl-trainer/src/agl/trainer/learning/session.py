"""The model being trained, served to the agents through the LLM proxy, in one of two ways.

In process (the default): `ServedPolicy` loads the embedded transformers engine, serves it on a
thread (the "transformers" model server) and starts the LLM proxy in front of it. A trainer updates
``policy.model`` — the very module the engine samples from — in place under ``policy.exclusive()``,
so the next request already samples from the new weights, with no checkpoint round trip.

Through a model server (``model_server="vllm"``, or any name registered with
``agl_register_model_servers``): the server runs its own engine (another process, a GPU), and the
trainer trains a local copy loaded from the same path; new weights reach the server only as a saved
checkpoint passed to `ModelServer.load_weights` (`push`).

Either way agents call the model through the proxy, which records every call's exact token ids and
logprobs into the store; the trainers read them back as triplets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from agl.core.store.base import LightningStore
from agl.core.types.resources import ProxyLLM
from agl.trainer.algorithm import AlgorithmContext


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
        server_factory: Callable[..., Any] | None = None,
        server_options: dict[str, Any] | None = None,
    ) -> None:
        """``server_factory``: a registered model server's factory (serve out of process); None: in process."""
        from agl.trainer.proxy import LlmProxy

        self.store = store
        self.sampling_parameters = dict(sampling_parameters or {})
        self._proxy_class = LlmProxy
        self.proxy: Any = None
        self.engine: Any = None
        if server_factory is None:
            from agl.trainer.serving.embedded import EmbeddedModelServer
            from agl.trainer.serving.transformers_engine import TransformersEngine

            self.engine = TransformersEngine.load(model, seed=seed, device=device, max_batch_size=max_batch_size)
            self.server: Any = EmbeddedModelServer(model, engine=self.engine)
            self._local: Any = None
            self._tokenizer: Any = self.engine.tokenizer
        else:
            from agl.trainer.serving import checkpoints

            self.server = server_factory(str(model), **(server_options or {}))
            dtype = checkpoints.resolve_dtype(None, device)
            self._local, self._tokenizer = checkpoints.load_model_and_tokenizer(model, dtype)
            self._local = self._local.to(device).eval()

    @property
    def in_process(self) -> bool:
        """Whether training ``model`` changes what is served at once (else `push` a checkpoint)."""
        return self.engine is not None

    @property
    def model(self) -> torch.nn.Module:
        """The module to train: the engine's own in process, else the local copy."""
        model: torch.nn.Module = self.engine.model if self.engine is not None else self._local
        return model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        if self.engine is not None:
            return int(self.engine.pad_token_id)
        for candidate in (self._tokenizer.pad_token_id, self._tokenizer.eos_token_id):
            if isinstance(candidate, int):
                return candidate
        return 0

    def start(self) -> ProxyLLM:
        base_url = self.server.start()
        self.proxy = self._proxy_class(
            self.store, [base_url], model=self.server.model_name, sampling_parameters=self.sampling_parameters
        )
        resource: ProxyLLM = self.proxy.start()
        return resource

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[torch.nn.Module]:
        """Hold the in-process engine (no token is sampled meanwhile) while the weights change in place."""
        if self.engine is None:
            yield self.model
            return
        with self.engine.exclusive() as model:
            yield model

    def load_weights(self, folder: str | Path) -> None:
        """Serve a saved checkpoint, without a restart."""
        self.server.load_weights(folder)

    def push(self, folder: str | Path) -> None:
        """After an update: save the trained weights to ``folder`` and have the server load them
        (nothing to do in process, where the served module is the trained one)."""
        if self.in_process:
            return
        from agl.trainer.learning.model import save_checkpoint

        save_checkpoint(self.model, self.tokenizer, folder, durable=False)  # loaded, then deleted: no flush
        self.load_weights(folder)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self.server.stop()  # also closes the engine

    async def publish(self, context: AlgorithmContext, resource: str) -> str | None:
        """`start` the policy and publish it as ``resource`` next to the context's initial resources;
        returns the id of the published resources."""
        llm = await asyncio.to_thread(self.start)
        await context.publish_resources({**(context.initial_resources or {}), resource: llm})
        resources_id: str | None = context.resources_id
        return resources_id

    async def retire(self, context: AlgorithmContext, algorithm: str) -> None:
        """`stop`, and if the proxy was published, make the fit's initial resources the latest again
        (`AlgorithmContext.republish_initial_resources`). The trained model is a checkpoint on disk,
        not an endpoint an `LLM` resource could name, until someone serves it (``agl serve``)."""
        published = self.proxy is not None
        await asyncio.to_thread(self.stop)
        if published:
            await context.republish_initial_resources(f"{algorithm} stopped serving its model")


async def open_policy(
    context: AlgorithmContext,
    model: str,
    *,
    seed: int,
    device: str,
    temperature: float,
    max_tokens: int,
    model_server: str | None,
    model_server_options: dict[str, Any],
) -> ServedPolicy:
    """A trainer's `ServedPolicy` (loaded off the event loop), with the sampling parameters it publishes
    and the model server named on the trainer's plugins (None: in process). Not started yet."""
    return await asyncio.to_thread(
        ServedPolicy,
        model,
        context.store,
        seed=seed,
        device=device,
        sampling_parameters={"temperature": temperature, "max_tokens": max_tokens},
        server_factory=server_factory(context.trainer.plugins, model_server),
        server_options=model_server_options,
    )


def server_factory(plugins: Any, name: str | None) -> Callable[..., Any] | None:
    """The factory of the model server registered as ``name`` on ``plugins`` (None: serve in process)."""
    if name is None:
        return None
    from agl.trainer.plugins import model_servers

    available = model_servers(plugins)
    if name not in available:
        installed = ", ".join(sorted(available)) or "none"
        raise ValueError(f"no model server named {name!r} is installed (installed: {installed})")
    factory: Callable[..., Any] = available[name][0]
    return factory
