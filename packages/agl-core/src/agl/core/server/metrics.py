"""Prometheus metrics in a registry of the app's own (so several apps in one process don't
clash): requests by route and status, latency, spans received, and the store's counts."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl.core.store.base import StoreStatistics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agl_http_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "agl_http_request_duration_seconds", "Time to answer a request", ["method", "route"], registry=self.registry
        )
        self.spans = Counter("agl_spans_received", "Spans written, by path", ["path"], registry=self.registry)
        self.rollouts = Gauge("agl_store_rollouts", "Rollouts by status", ["status"], registry=self.registry)
        self.attempts = Gauge("agl_store_attempts", "Attempts by status", ["status"], registry=self.registry)
        self.stored_spans = Gauge("agl_store_spans", "Spans in the store", registry=self.registry)
        self._per_request: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def count_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """One request served; the labelled series are looked up once per label set, not per request."""
        series = self._per_request.get((method, route, status))
        if series is None:
            series = (self.requests.labels(method, route, status), self.latency.labels(method, route))
            self._per_request[method, route, status] = series
        series[0].inc()
        series[1].observe(seconds)

    def observe_store(self, stats: StoreStatistics) -> None:
        self.rollouts.clear()
        self.attempts.clear()
        for status, count in stats.rollouts_by_status.items():
            self.rollouts.labels(status).set(count)
        for status, count in stats.attempts_by_status.items():
            self.attempts.labels(status).set(count)
        self.stored_spans.set(stats.spans)


class MetricsMiddleware:
    """Counts every request under its route template (not its path, to bound label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            matched = scope.get("route")
            route = getattr(matched, "path_format", None) or getattr(matched, "path", "unmatched")  # without convertors
            self.metrics.count_request(scope["method"], route, str(status), time.perf_counter() - started)
