"""Request bodies: size caps, content-type checks, uploaded images and JSON objects.

The app-wide cap (``MAX_CONTENT_LENGTH``) is sized for JSON bodies; an endpoint that
takes files raises it for its own request only, before touching the body, so the
cap is enforced while reading (a lying or missing ``Content-Length`` does not get
around it). Every uploaded image then goes through ``core.media.decode_image``:
type sniffing from the bytes (the declared content type is ignored), the
decompression-bomb guard, and a full decode that catches truncation.
"""

from __future__ import annotations

import enum
from typing import Any

from flask import request
from PIL import Image
from werkzeug.datastructures import FileStorage

from core.media import MediaError, MediaErrorReason, decode_image
from service.errors import ApiError, ErrorCode

JSON_BODY_LIMIT = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and small text fields next to an image."""


class BodyKind(str, enum.Enum):
    JSON = "json"
    MULTIPART = "multipart"
    EMPTY = "empty"


def allow_body(max_bytes: int) -> None:
    """Raise the body cap for this request (call before reading the body)."""
    request.max_content_length = max_bytes
    request.max_form_memory_size = min(max_bytes, JSON_BODY_LIMIT)


def body_kind(*accepted: BodyKind) -> BodyKind:
    """Which kind of body was sent; 415 naming the accepted types if it is none of them."""
    mimetype = request.mimetype
    has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"
    if not has_body and not mimetype and BodyKind.EMPTY in accepted:
        return BodyKind.EMPTY
    if mimetype == "application/json" and BodyKind.JSON in accepted:
        return BodyKind.JSON
    if mimetype == "multipart/form-data" and BodyKind.MULTIPART in accepted:
        return BodyKind.MULTIPART
    if not has_body and BodyKind.EMPTY in accepted:
        return BodyKind.EMPTY
    names = {BodyKind.JSON: "application/json", BodyKind.MULTIPART: "multipart/form-data",
             BodyKind.EMPTY: "no body"}
    raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                   f"content type {mimetype or 'none'!r} is not accepted here; send "
                   + " or ".join(names[a] for a in accepted))


def json_object(*, required: bool = True) -> dict[str, Any]:
    """The JSON body as an object; 400 if it is malformed or not an object."""
    data = request.get_json(silent=True)
    if data is None:
        if not required and not request.get_data(cache=True).strip():
            return {}
        raise ApiError(400, ErrorCode.BAD_REQUEST, "the body is not valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"the JSON body must be an object, got {type(data).__name__}")
    return data


def uploaded_file(field: str) -> FileStorage:
    files = request.files.getlist(field)
    if not files:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"missing file field {field!r} in the multipart body")
    if len(files) > 1:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"send exactly one file in field {field!r}")
    return files[0]


def read_file(storage: FileStorage, max_bytes: int) -> bytes:
    """The file's bytes; 413 past ``max_bytes`` (read one byte more to know)."""
    data = storage.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE,
                       f"file {storage.filename or ''!r} is larger than {max_bytes:,} bytes")
    return data


def media_error(exc: MediaError) -> ApiError:
    """An image refused by core.media as an API error (413 for size, else 400)."""
    if exc.reason is MediaErrorReason.TOO_LARGE:
        return ApiError(413, ErrorCode.PAYLOAD_TOO_LARGE, str(exc), details={"reason": exc.reason.value})
    return ApiError(400, ErrorCode.INVALID_IMAGE, str(exc), details={"reason": exc.reason.value})


def decode_upload(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    try:
        return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except MediaError as exc:
        raise media_error(exc) from exc
