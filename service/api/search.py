"""POST /search: by uploaded image (multipart), by vector or by image URL (JSON)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, request
from PIL import Image

from core.config import MULTIPART_OVERHEAD
from service.api.common import elapsed_ms, record_search_timings, search_errors, timed_json
from service.api.params import DEFAULT_K, check_params, int_value
from service.api.serialize import results_json
from service.auth import Access, requires
from service.context import ServiceContext, service_context
from service.errors import ApiError, ErrorCode
from service.filters import Filters, parse_json_filters
from service.metrics import add_timing
from service.searcher import SearchResult
from service.uploads import (
    BodyKind,
    allow_body,
    body_kind,
    decode_upload,
    json_object,
    parse_json,
    read_file,
    uploaded_file,
)
from service.urlfetch import UrlFetchError

bp = Blueprint("search", __name__)

JSON_KEYS = ("vector", "image_url", "k", "filters")
FORM_KEYS = ("k", "filters")


@bp.post("/search")
@requires(Access.READ)
def search() -> Response:
    ctx = service_context()
    check_params(())
    kind = body_kind(BodyKind.MULTIPART, BodyKind.JSON)
    if kind is BodyKind.MULTIPART:
        allow_body(ctx.settings.max_image_bytes + MULTIPART_OVERHEAD)
        unknown = sorted(str(k) for k in set(request.form) - set(FORM_KEYS))
        if unknown:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown form field {unknown[0]!r}: allowed are "
                           "image (file), k, filters")
        k = int_value("k", request.form.get("k"), DEFAULT_K, minimum=1, maximum=ctx.settings.max_k,
                      from_text=True)
        filters = parse_json_filters(_json_field(request.form.get("filters"), "filters"))
        data = read_file(uploaded_file("image"), ctx.settings.max_image_bytes)
        result, query = _by_image(ctx, data, k, filters), "image"
    else:
        body = json_object()
        unknown = sorted(set(body) - set(JSON_KEYS))
        if unknown:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"unknown field {unknown[0]!r}: allowed are {', '.join(JSON_KEYS)}")
        k = int_value("k", body["k"], DEFAULT_K, minimum=1, maximum=ctx.settings.max_k) if "k" in body else DEFAULT_K
        filters = parse_json_filters(body["filters"]) if "filters" in body else Filters()
        has_vector, has_url = "vector" in body, "image_url" in body
        if has_vector == has_url:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "send exactly one of 'vector' or 'image_url' "
                           "(or upload an image as multipart/form-data)")
        if has_vector:
            vector = body["vector"]
            if not isinstance(vector, list) or not vector or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) for v in vector):
                raise ApiError(400, ErrorCode.INVALID_PARAMETER, "vector: must be a non-empty list of numbers",
                               details={"parameter": "vector"})
            with search_errors():
                result = ctx.searcher.search_vector(body["vector"], k=k, filters=filters)
            query = "vector"
        else:
            data = _fetch(ctx, body["image_url"])
            result, query = _by_image(ctx, data, k, filters), "url"
    ctx.metrics.queries.labels(query).inc()
    record_search_timings(result)
    echo: dict[str, Any] = {"kind": query, "filters": filters.to_dict()}
    return timed_json(results_json(result, k=k, query=echo, took_ms=elapsed_ms()))


def _json_field(raw: str | None, name: str) -> Any:
    """A JSON form field (``filters``); absent or blank is None, bad JSON an invalid_filter 400."""
    if raw is None or not raw.strip():
        return None
    return parse_json(raw, name, code=ErrorCode.INVALID_FILTER)


def _by_image(ctx: ServiceContext, data: bytes, k: int, filters: Filters) -> SearchResult:
    t0 = time.perf_counter()
    image: Image.Image = decode_upload(data, max_pixels=ctx.settings.max_image_pixels,
                                       max_bytes=ctx.settings.max_image_bytes)
    add_timing("decode", time.perf_counter() - t0)
    with search_errors():
        return ctx.searcher.search_image(image, k=k, filters=filters)


def _fetch(ctx: ServiceContext, url: Any) -> bytes:
    if ctx.url_fetcher is None:
        raise ApiError(403, ErrorCode.URL_FETCH_DISABLED,
                       "searching by image URL is disabled on this server (LOOKALIKE_URL_FETCH_ENABLED); "
                       "upload the image instead")
    if not isinstance(url, str) or len(url) > 2000:
        raise ApiError(400, ErrorCode.INVALID_PARAMETER, "image_url: must be a URL string (at most 2000 characters)",
                       details={"parameter": "image_url"})
    t0 = time.perf_counter()
    try:
        data = ctx.url_fetcher.fetch(url)
    except UrlFetchError as exc:
        if exc.refused:
            raise ApiError(403, ErrorCode.URL_FETCH_REFUSED, str(exc)) from exc
        raise ApiError(502, ErrorCode.URL_FETCH_FAILED, str(exc)) from exc
    finally:
        add_timing("fetch", time.perf_counter() - t0)
    return data
