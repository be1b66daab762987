"""One error shape for the whole JSON API: ``{"error": {"code", "message", ...}}``.

Views raise :class:`ApiError` (or let a known library error through); the handlers
registered by :func:`register_error_handlers` turn *every* failure under the API
prefix — including Flask's own 404/405/413 and unexpected exceptions — into that
shape with the right status, so a client never has to parse an HTML error page.
The UI keeps small HTML error pages.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from flask import Flask, Response, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from core.artifacts import StoreUnavailable

log = logging.getLogger(__name__)

API_PREFIX = "/api/"


class ErrorCode(str, enum.Enum):
    """Machine-readable error codes (the ``error.code`` field), documented in the OpenAPI file."""

    BAD_REQUEST = "bad_request"
    INVALID_PARAMETER = "invalid_parameter"
    INVALID_FILTER = "invalid_filter"
    INVALID_IMAGE = "invalid_image"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    NOT_EMBEDDED = "not_embedded"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    URL_FETCH_DISABLED = "url_fetch_disabled"
    URL_FETCH_REFUSED = "url_fetch_refused"
    URL_FETCH_FAILED = "url_fetch_failed"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INDEX_UNAVAILABLE = "index_unavailable"
    MODEL_UNAVAILABLE = "model_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL = "internal"


_DEFAULT_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


class ApiError(Exception):
    """An error answer: HTTP status, stable code, a message that says what is wrong."""

    def __init__(self, status: int, code: ErrorCode, message: str, *,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def bad_param(name: str, message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_PARAMETER, f"{name}: {message}", details={"parameter": name})


def not_found(message: str) -> ApiError:
    return ApiError(404, ErrorCode.NOT_FOUND, message)


def error_body(code: ErrorCode | str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": getattr(code, "value", code), "message": message}
    if details:
        body["details"] = details
    request_id = g.get("request_id")
    if request_id:
        body["request_id"] = request_id
    return {"error": body}


def error_response(status: int, code: ErrorCode | str, message: str, *,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _is_api_request() -> bool:
    """API and ops paths get JSON errors; everything else is the UI."""
    path = request.path
    return path.startswith(API_PREFIX) or path.rstrip("/") == API_PREFIX.rstrip("/") or path in OPS_PATHS


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that give the API JSON errors and the UI HTML ones."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        if not _is_api_request():
            return _html(exc.status, exc.message)
        return error_response(exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = _http_message(exc)
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        if not _is_api_request():
            return _html(status, message, headers)
        return error_response(status, _DEFAULT_CODES.get(status, ErrorCode.BAD_REQUEST
                                                         if status < 500 else ErrorCode.INTERNAL),
                              message, headers=headers)

    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(exc: StoreUnavailable) -> Response:
        # The store's URL and the cause go to the log, not to the client (no infrastructure details).
        log.warning("artifact store unavailable on %s %s: %s", request.method, request.path, exc)
        message = ("the artifact store cannot be reached: nothing of this request was committed "
                   "(what this host has cached is still served); retry later")
        if not _is_api_request():
            return _html(503, message)
        return error_response(503, ErrorCode.STORE_UNAVAILABLE, message, headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "internal error; the request id identifies it in the server log"
        if not _is_api_request():
            return _html(500, message)
        return error_response(500, ErrorCode.INTERNAL, message)


def _http_message(exc: HTTPException) -> str:
    if exc.code == 404:
        return f"no such resource: {request.path}"
    if exc.code == 405:
        return f"method {request.method} is not allowed on {request.path}"
    if exc.code == 413:
        return "request body is larger than the upload limit"
    return exc.description or exc.name


def _html(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = Response(render_template("error.html", status=status, message=message), status=status,
                        mimetype="text/html")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
