"""The LLM proxy: agents call ``/rollout/{rid}/attempt/{aid}/v1/...``, the proxy forwards to an
OpenAI-compatible engine (sticky per rollout, retried, failed over), asks it for token ids and
logprobs, and records each call as one canonical LLM-call span in the store, so training data
carries the engine's exact ids whatever the agent's code and tracing (needs the ``train`` extra).

    proxy = LlmProxy(store, ["http://127.0.0.1:8000/v1"])
    llm = proxy.start()            # a ProxyLLM resource; each attempt's agent gets its own base URL
    ...
    proxy.set_upstreams([...])     # new engines, e.g. after a weight update
    proxy.stop()

Modules: `routing` (which engine serves a rollout), `shape` (what is asked of the engine and given
back), `forward` (the HTTP client, retries, failover), `spans` (the span of one call), `app` (the
routes), `server` (`LlmProxy`, uvicorn on a thread).
"""

from agl.trainer.proxy.app import create_proxy_app
from agl.trainer.proxy.forward import NoEngineAnswered, RetryPolicy
from agl.trainer.proxy.routing import Upstreams
from agl.trainer.proxy.server import LlmProxy

__all__ = ["LlmProxy", "NoEngineAnswered", "RetryPolicy", "Upstreams", "create_proxy_app"]
