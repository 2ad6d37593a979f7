"""Sending a call to an engine: one pooled HTTP client, retries on transient failures, failover.

Transient means the engine did not answer the call: it could not be reached, dropped the
connection before replying, or answered 502/503/504 (a restarting or overloaded server). Those
are retried on the same engine with a short, bounded backoff, then the next engine is tried.
Anything the engine did answer (a 4xx, a 500, a slow reply) is final: a bad request stays bad, and
a retried generation would only repeat the cost.

The client is aiohttp's: in the proxy benchmark httpx's async client spent about three quarters
of the proxy's own time per call, aiohttp a fraction of that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from agl.trainer.proxy.routing import Upstreams

logger = logging.getLogger("agl.trainer.proxy")

TRANSIENT_STATUS = frozenset({502, 503, 504})
# The engine did not answer: refused, unreachable in time, or the connection dropped before a reply.
_NOT_ANSWERED = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
)
DEFAULT_TIMEOUT = 600.0
CONNECT_TIMEOUT = 5.0


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


class BrokenReply(Exception):
    """The engine's reply broke off (or stalled past the timeout) after it began."""


@dataclass
class Sent:
    """The engine's answer, its body not read yet: `read` or stream (`chunks`) it, then `close` it."""

    url: str
    response: aiohttp.ClientResponse
    upstreams: Upstreams
    closed: bool = False

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self.response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise BrokenReply(_describe(error)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; what arrived before it broke off comes out before `BrokenReply`."""
        try:
            async for data in self.response.content.iter_any():
                yield data
        except (aiohttp.ClientError, TimeoutError) as error:
            arrived = _unread(self.response.content)
            if arrived:
                yield arrived
            raise BrokenReply(_describe(error)) from None

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstreams.release(self.url)
            if self.response.content.is_eof():
                self.response.release()  # read to the end: the connection goes back to the pool
            else:
                self.response.close()  # abandoned midway: the connection cannot be reused


def new_session(timeout: float = DEFAULT_TIMEOUT) -> aiohttp.ClientSession:
    """The one pooled client of a proxy; make it on the loop that uses it. Generations can be long,
    so only connecting is quick to give up. The pool has no cap: each call holds one connection
    for its whole generation, and a cap would make the calls past it wait for a free connection
    (and fail as "not answered" once the connect timeout, which counts that wait, ran out) while
    the engine, which queues and batches calls itself, could have taken them."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=timeout),
        trust_env=False,  # engines are local or named explicitly: no proxy settings from the environment
        auto_decompress=True,
    )


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstreams: Upstreams,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        upstream_token: str | None = None,
    ) -> None:
        self.session = session
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
        sent_headers = {**self._headers, **(headers or {})}
        for url in candidates:
            failure = "not tried"
            for attempt in range(max(1, self.retry.tries_per_engine)):
                if attempt:
                    await asyncio.sleep(self.retry.delay(attempt))
                self.upstreams.acquire(url)
                try:
                    response = await self.session.request(method, url + path, data=content, headers=sent_headers)
                except BaseException as error:
                    self.upstreams.release(url)
                    if not isinstance(error, _NOT_ANSWERED):
                        if isinstance(error, aiohttp.ClientError | TimeoutError):
                            raise BrokenReply(_describe(error)) from None
                        raise
                    failure = f"{url}: {_describe(error)}"
                    logger.debug("engine did not answer, %s", failure)
                    continue
                if response.status in TRANSIENT_STATUS:
                    self.upstreams.release(url)
                    response.release()
                    failure = f"{url}: HTTP {response.status}"
                    logger.debug("engine answered %s", failure)
                    continue
                self.upstreams.answered(url)
                if rollout_id:
                    self.upstreams.stick(rollout_id, url)
                return Sent(url, response, self.upstreams)
            self.upstreams.failed(url)
            failures.append(failure)
        raise NoEngineAnswered("no engine answered: " + "; ".join(failures))


def _unread(content: aiohttp.StreamReader) -> bytes:
    """The bytes received but not read yet. aiohttp's reads raise a broken connection's error
    before they return what is buffered, so an engine's last chunks before it crashed were lost
    unless read in time; its buffer (whole chunks, as `iter_any` reads them) is the only way."""
    buffered = getattr(content, "_buffer", None)
    return b"".join(buffered) if buffered and all(isinstance(part, bytes) for part in buffered) else b""


def _describe(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
