"""Request bodies: size caps, content-type checks, uploaded images and JSON objects.

The app-wide cap (``MAX_CONTENT_LENGTH``) is sized for JSON bodies; an endpoint that
takes files raises it for its own request only, before touching the body, so the
cap is enforced while reading (a lying or missing ``Content-Length`` does not get
around it). Every uploaded image then goes through ``core.media.decode_image``:
type sniffing from the bytes (the declared content type is ignored), the
decompression-bomb guard, and a full decode that catches truncation.

A streamed body (chunked, no ``Content-Length``) is capped by :class:`CappedInput`,
which answers 413 once the body proves longer than the cap; Werkzeug's own stream
would silently cut it at the cap (a 50 MB JSON body then read as 1 MB of broken
JSON, a 400). Every JSON document the service reads, body or multipart field, goes
through :func:`parse_json`, which also refuses documents nested deeper than
:data:`MAX_JSON_DEPTH` (a 100,000-deep ``[[[...]]]`` would otherwise end in a
``RecursionError``, here or in any code that walks the value later).
"""

from __future__ import annotations

import enum
import io
import json
from typing import Any, BinaryIO

from flask import Request, request
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_input_stream

from core.media import MediaError, MediaErrorReason, decode_image
from service.errors import ApiError, ErrorCode

JSON_BODY_LIMIT = 1024 * 1024
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in any JSON document the service reads."""


class CappedInput(io.RawIOBase):
    """A streamed request body that raises 413 as soon as it holds more than ``limit`` bytes.

    It reads at most ``limit + 1`` bytes from the server's stream, so a body of exactly
    ``limit`` bytes is accepted and one byte more is refused, without reading the rest.
    """

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        super().__init__()
        self._stream = stream
        self._limit = limit
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._limit + 1 - self._pos)
        if wanted <= 0:
            raise RequestEntityTooLarge()
        try:
            data = self._stream.read(wanted)
        except (OSError, ValueError) as exc:  # the server's stream broke: as Werkzeug does, a 400
            raise ClientDisconnected() from exc
        if not data:
            return 0
        self._pos += len(data)
        if self._pos > self._limit:
            raise RequestEntityTooLarge()
        view[: len(data)] = data
        return len(data)


class ServiceRequest(Request):
    """Flask's request, with the body cap enforced on streamed (chunked) bodies too."""

    @cached_property
    def stream(self) -> BinaryIO:  # type: ignore[override]
        """The body stream; a terminated stream without ``Content-Length`` gets :class:`CappedInput`.

        Werkzeug wraps such a stream in a ``LimitedStream`` whose ``read()`` returns the
        first ``max_content_length`` bytes and stops without an error; the cap must
        instead refuse the request (413), as it does when ``Content-Length`` is given.
        """
        limit = self.max_content_length
        if self.content_length is None and limit is not None and "wsgi.input_terminated" in self.environ:
            return io.BufferedReader(CappedInput(self.environ["wsgi.input"], limit))  # type: ignore[return-value]
        return get_input_stream(self.environ, max_content_length=limit)  # type: ignore[return-value]


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


def _nested_too_deep(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than ``limit`` levels (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(raw: str | bytes, what: str, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> Any:
    """Parse one JSON document the client sent (``what`` names it in errors): 400 if it is not JSON
    or nests arrays/objects deeper than :data:`MAX_JSON_DEPTH` levels.

    The one place the service parses client JSON, so every endpoint and multipart field
    refuses the same documents with the same message (``code`` is the error code).
    """
    try:
        data = json.loads(raw)
    except RecursionError:  # the parser's own recursion guard, long before MAX_JSON_DEPTH matters
        data, deep = None, True
    except ValueError as exc:  # includes UnicodeDecodeError and the int-digits limit
        raise ApiError(400, code, f"{what} is not valid JSON: {exc}") from exc
    else:
        deep = isinstance(data, (dict, list)) and _nested_too_deep(data, MAX_JSON_DEPTH)
    if deep:
        raise ApiError(400, code, f"{what} is nested too deeply: at most {MAX_JSON_DEPTH} levels "
                       "of arrays and objects are accepted")
    return data


def json_object(*, required: bool = True) -> dict[str, Any]:
    """The JSON body as an object; 400 if it is malformed, nested too deeply or not an object."""
    raw = request.get_data(cache=True)
    if not required and not raw.strip():
        return {}
    data = parse_json(raw, "the body")
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
