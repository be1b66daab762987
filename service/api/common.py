"""Helpers shared by the API views: search errors, timed JSON responses, dispatching."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Response, g, jsonify

from core.dispatch import DispatchUnavailable
from service.errors import ApiError, ErrorCode
from service.metrics import add_timing
from service.searcher import (
    BadVector,
    IndexUnavailable,
    ItemNotFound,
    ModelUnavailable,
    NotEmbedded,
    SearchResult,
)


@contextmanager
def search_errors() -> Iterator[None]:
    """Map the searcher's errors to API errors."""
    try:
        yield
    except ItemNotFound as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from exc
    except NotEmbedded as exc:
        raise ApiError(409, ErrorCode.NOT_EMBEDDED, str(exc)) from exc
    except BadVector as exc:
        raise ApiError(400, ErrorCode.INVALID_PARAMETER, f"vector: {exc}",
                       details={"parameter": "vector"}) from exc
    except IndexUnavailable as exc:
        raise ApiError(503, ErrorCode.INDEX_UNAVAILABLE, str(exc), headers={"Retry-After": "5"}) from exc
    except ModelUnavailable as exc:
        raise ApiError(503, ErrorCode.MODEL_UNAVAILABLE, str(exc), headers={"Retry-After": "30"}) from exc


@contextmanager
def dispatch_errors(saved: str = "") -> Iterator[None]:
    """A broker that cannot be reached becomes a 503 saying what was (not) kept."""
    try:
        yield
    except DispatchUnavailable as exc:
        message = str(exc)
        if saved:
            message = f"{saved}; but {message}"
        raise ApiError(503, ErrorCode.BROKER_UNAVAILABLE, message, headers={"Retry-After": "10"},
                       details={"saved": bool(saved)}) from exc


def elapsed_ms() -> float:
    started = g.get("started")
    return (time.perf_counter() - started) * 1000 if started is not None else 0.0


def record_search_timings(result: SearchResult) -> None:
    for name, seconds in result.timings.items():
        add_timing(name, seconds)


def timed_json(body: dict[str, Any], status: int = 200) -> Response:
    """jsonify, timing the serialisation for Server-Timing (``ser``)."""
    t0 = time.perf_counter()
    response = jsonify(body)
    add_timing("ser", time.perf_counter() - t0)
    response.status_code = status
    return response
