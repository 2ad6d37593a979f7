"""Which engine serves which rollout: a rollout's first call goes to the least busy engine, and its
later calls stay there, so the engine's prefix cache holds the rollout's growing conversation. An
engine that did not answer is tried after the others for a while (`DOWN_FOR`): an engine that is
down runs no calls and serves no rollouts, so by load alone it would be every new rollout's first
choice, each paying its retries (seconds per rollout when its host is unreachable).

Shared between the proxy's event loop and the trainer's thread (which swaps engines), so every
change happens under one lock; the work under it is a few dictionary operations.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

REMEMBERED_ROLLOUTS = 100_000
"""Rollouts whose engine is remembered; the least recently used is forgotten beyond that."""
DOWN_FOR = 10.0
"""Seconds an engine that did not answer is ranked after the others (still tried if they fail)."""


class Upstreams:
    """The engines' base URLs (``http://host:port/v1``), their load, and the sticky assignments."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        remembered: int = REMEMBERED_ROLLOUTS,
        down_for: float = DOWN_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._remembered = remembered
        self._down_for, self._clock = down_for, clock
        self._down_until: dict[str, float] = {}
        self._urls: tuple[str, ...] = ()
        self._in_flight: Counter[str] = Counter()
        self._assigned: Counter[str] = Counter()  # rollouts stuck to each engine
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self.set(urls)

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    def set(self, urls: Sequence[str]) -> None:
        """Serve from these engines from now on. Rollouts stuck to an engine that is gone are
        reassigned at their next call; calls already running finish where they are."""
        cleaned = tuple(dict.fromkeys(url.rstrip("/") for url in urls))
        with self._lock:
            self._urls = cleaned
            kept = set(cleaned)
            for rollout_id in [r for r, url in self._sticky.items() if url not in kept]:
                self._assigned[self._sticky.pop(rollout_id)] -= 1
            self._assigned = +self._assigned
            self._down_until = {url: until for url, until in self._down_until.items() if url in kept}

    def candidates(self, rollout_id: str) -> list[str]:
        """Engines to try in order: the rollout's own first, then the others, least busy first
        (fewest calls running, then fewest rollouts assigned, then the order given); engines that
        lately did not answer come last, the rollout's own included."""
        with self._lock:
            urls = self._urls
            now = self._clock()
            down = {url for url, until in self._down_until.items() if until > now}
            order = sorted(
                range(len(urls)),
                key=lambda i: (urls[i] in down, self._in_flight[urls[i]], self._assigned[urls[i]], i),
            )
            ranked = [urls[i] for i in order]
            own = self._sticky.get(rollout_id)
            if own is not None and own not in down:
                self._sticky.move_to_end(rollout_id)
                ranked.remove(own)
                ranked.insert(0, own)
            return ranked

    def stick(self, rollout_id: str, url: str) -> None:
        """``url`` answered for ``rollout_id``: keep sending the rollout there."""
        with self._lock:
            if url not in self._urls:
                return
            previous = self._sticky.get(rollout_id)
            if previous == url:
                return
            if previous is not None:
                self._assigned[previous] -= 1
            self._sticky[rollout_id] = url
            self._sticky.move_to_end(rollout_id)
            self._assigned[url] += 1
            while len(self._sticky) > self._remembered:
                _, forgotten = self._sticky.popitem(last=False)
                self._assigned[forgotten] -= 1

    def failed(self, url: str) -> None:
        """``url`` did not answer, retries included: rank it last for `DOWN_FOR` seconds."""
        with self._lock:
            if url in self._urls:
                self._down_until[url] = self._clock() + self._down_for

    def answered(self, url: str) -> None:
        """``url`` answered: it is up again."""
        with self._lock:
            self._down_until.pop(url, None)

    def engine_of(self, rollout_id: str) -> str | None:
        with self._lock:
            return self._sticky.get(rollout_id)

    def acquire(self, url: str) -> None:
        """A call starts on ``url`` (for the least-busy ranking); `release` when it is over."""
        with self._lock:
            self._in_flight[url] += 1

    def release(self, url: str) -> None:
        with self._lock:
            self._in_flight[url] -= 1
            if self._in_flight[url] <= 0:
                del self._in_flight[url]
