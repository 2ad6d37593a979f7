"""Sending a call to an engine: one pooled HTTP client, retries on transient failures, failover.

Transient means the engine did not answer the call: it could not be reached, dropped the
connection before replying, or answered 502/503/504 (a restarting or overloaded server). Those
are retried on the same engine with a short, bounded backoff, then the next engine is tried.
Anything the engine did answer (a 4xx, a 500, a slow reply) is final: a bad request stays bad, and
a retried generation would only repeat the cost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from agl.trainer.proxy.routing import Upstreams

logger = logging.getLogger("agl.trainer.proxy")

TRANSIENT_STATUS = frozenset({502, 503, 504})
_NOT_ANSWERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)


@dataclass(frozen=True)
class RetryPolicy:
    """Tries per engine and the pauses between them (doubling from ``first_delay`` up to ``max_delay``)."""

    tries_per_engine: int = 3
    first_delay: float = 0.05
    max_delay: float = 0.5

    def delay(self, retry: int) -> float:
        return min(self.first_delay * 2 ** (retry - 1), self.max_delay)


DEFAULT_RETRY = RetryPolicy()


class NoEngineAnswered(Exception):
    """Every engine failed transiently; the message says how, one line."""


@dataclass
class Sent:
    """The engine's answer, its body not read yet: read or stream it, then `close` it."""

    url: str
    response: httpx.Response
    upstreams: Upstreams
    closed: bool = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstreams.release(self.url)
            await self.response.aclose()


def new_client(timeout: httpx.Timeout | float | None = None) -> httpx.AsyncClient:
    """The one pooled client of a proxy. Generations can be long, so only connecting is quick to give up."""
    return httpx.AsyncClient(
        timeout=timeout if timeout is not None else httpx.Timeout(600.0, connect=5.0),
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        trust_env=False,  # engines are local or named explicitly: no proxy settings from the environment
    )


class Forwarder:
    def __init__(
        self,
        client: httpx.AsyncClient,
        upstreams: Upstreams,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        upstream_token: str | None = None,
    ) -> None:
        self.client = client
        self.upstreams = upstreams
        self.retry = retry
        self._headers = {"content-type": "application/json"}
        if upstream_token:
            self._headers["authorization"] = f"Bearer {upstream_token}"

    async def send(
        self,
        rollout_id: str,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Sent:
        """Send to the rollout's engine (retrying, then failing over); the engine that answered
        becomes the rollout's. Raises `NoEngineAnswered` when none did."""
        failures: list[str] = []
        candidates = self.upstreams.candidates(rollout_id)
        if not candidates:
            raise NoEngineAnswered("no engine is configured")
        for url in candidates:
            failure = "not tried"
            for attempt in range(max(1, self.retry.tries_per_engine)):
                if attempt:
                    await asyncio.sleep(self.retry.delay(attempt))
                request = self.client.build_request(
                    method, url + path, content=content, headers={**self._headers, **(headers or {})}
                )
                self.upstreams.acquire(url)
                try:
                    response = await self.client.send(request, stream=True)
                except BaseException as error:
                    self.upstreams.release(url)
                    if not isinstance(error, _NOT_ANSWERED):
                        raise
                    failure = f"{url}: {type(error).__name__}: {error}".replace("\n", " ")
                    logger.debug("engine did not answer, %s", failure)
                    continue
                if response.status_code in TRANSIENT_STATUS:
                    self.upstreams.release(url)
                    await response.aclose()
                    failure = f"{url}: HTTP {response.status_code}"
                    logger.debug("engine answered %s", failure)
                    continue
                self.upstreams.stick(rollout_id, url)
                return Sent(url, response, self.upstreams)
            failures.append(failure)
        raise NoEngineAnswered("no engine answered: " + "; ".join(failures))
