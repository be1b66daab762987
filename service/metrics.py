"""Prometheus metrics and the ``Server-Timing`` header.

Each app gets its own registry (so tests can build many apps in one process). Under
gunicorn the config sets prometheus_client's multi-process directory before any
worker imports this module; then values live in per-process files and ``/metrics``
aggregates every worker (see ``service/gunicorn_conf.py``). Gauges that describe
the loaded index use ``livemax``: during a hot swap the old and new versions both
show 1 until every worker has switched.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_mode() -> bool:
    """True when prometheus_client was imported with a multi-process directory configured."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The service's metrics, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "lookalike_http_request_duration_seconds", "Time to answer a request, per endpoint.",
            ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queries = Counter(
            "lookalike_queries_total", "Similarity queries answered, by kind of query.",
            ["kind"], registry=r)
        self.active_index = Gauge(
            "lookalike_active_index_info", "1 for the index (and its model) this process serves.",
            ["index_version", "model_version"], multiprocess_mode="livemax", registry=r)
        self.index_images = Gauge(
            "lookalike_index_images", "Images in the loaded index.", multiprocess_mode="livemax", registry=r)
        self.fresh_set = Gauge(
            "lookalike_fresh_set_size", "Images embedded with the query model but not in the index yet.",
            multiprocess_mode="livemax", registry=r)
        self.swaps = Counter(
            "lookalike_index_swaps_total", "Index versions loaded by this process (hot swaps).", registry=r)
        self.swap_failures = Counter(
            "lookalike_index_swap_failures_total", "Index versions that failed to load.", registry=r)
        self._shown: tuple[str, str] | None = None

    def show_index(self, index_version: str, model_version: str, images: int) -> None:
        """Point the info gauge at the newly served pair (the old pair drops to 0)."""
        if self._shown is not None:
            self.active_index.labels(*self._shown).set(0)
        self.active_index.labels(index_version, model_version).set(1)
        self.index_images.set(images)
        self._shown = (index_version, model_version)

    def exposition(self) -> tuple[bytes, str]:
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def add_timing(name: str, seconds: float) -> None:
    """Record a phase of the current request for the Server-Timing header."""
    timings: dict[str, float] = g.setdefault("timings", {})
    timings[name] = timings.get(name, 0.0) + seconds


def init_metrics(app: Flask, metrics: Metrics) -> None:
    """Time every request; add ``Server-Timing`` (phases plus ``app`` = total inside Flask)."""

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("started")
        if started is None:
            return response
        elapsed = time.perf_counter() - started
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.request_seconds.labels(endpoint, request.method, str(response.status_code)).observe(elapsed)
        parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in g.get("timings", {}).items()]
        parts.append(f"app;dur={elapsed * 1000:.3f}")
        response.headers["Server-Timing"] = ", ".join(parts)
        return response


def timing_dict() -> dict[str, Any]:
    """The phases recorded so far, in milliseconds (for JSON bodies)."""
    return {name: round(seconds * 1000, 3) for name, seconds in g.get("timings", {}).items()}
