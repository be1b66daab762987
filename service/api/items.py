"""Catalog items: list, get, upsert (PUT with metadata and images), delete, similar items, media."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request, send_file
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from core.catalog import ImageRef, RowError, get_item, import_rows
from core.catalog.queries import DeleteOutcome, delete_item
from core.catalog.rows import MAX_EXTERNAL_ID, MAX_IMAGES_PER_ITEM
from core.catalog.validate import make_row
from core.config import MAX_UPLOAD_IMAGES, MULTIPART_OVERHEAD
from core.db import Item, ItemStatus, session_scope
from core.db.backend import backend_of
from core.media import MediaError, is_media_key
from core.query_log import log_query, sampled
from service.api.common import (
    elapsed_ms,
    record_search_timings,
    search_errors,
    timed_json,
)
from service.api.embedding import queue_embedding
from service.api.params import (
    bool_param,
    check_params,
    k_param,
    page_params,
    query_filters,
)
from service.api.serialize import item_json, results_json
from service.auth import Access, requires
from service.context import service_context
from service.errors import ApiError, ErrorCode, not_found
from service.filters import FILTER_KEYS
from service.uploads import (
    BodyKind,
    allow_body,
    body_kind,
    json_object,
    media_error,
    parse_json,
    read_file,
)

bp = Blueprint("items", __name__)

METADATA_KEYS = ("title", "category", "group", "attributes")
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


@bp.get("/items")
@requires(Access.READ)
def list_items() -> Response:
    check_params(("limit", "offset", *FILTER_KEYS))
    limit, offset = page_params()
    filters = query_filters()
    ctx = service_context()
    with session_scope(ctx.sessions) as s:
        conditions = [Item.status == ItemStatus.ACTIVE, *filters.clauses(backend_of(s))]
        total = s.scalar(select(func.count()).select_from(Item).where(*conditions)) or 0
        items = s.scalars(select(Item).where(*conditions).order_by(Item.id).limit(limit).offset(offset)
                          .options(selectinload(Item.images))).all()
        body = {"items": [item_json(i) for i in items], "total": total, "limit": limit, "offset": offset,
                "filters": filters.to_dict()}
    return timed_json(body)


@bp.get("/items/<external_id>")
@requires(Access.READ)
def get_one(external_id: str) -> Response:
    check_params(())
    ctx = service_context()
    with session_scope(ctx.sessions) as s:
        item = get_item(s, _known_id(external_id), include_deleted=False)
        if item is None:
            raise not_found(f"no active item with external id {external_id!r}")
        return timed_json(item_json(item))


@bp.get("/items/<external_id>/similar")
@requires(Access.READ)
def similar(external_id: str) -> Response:
    ctx = service_context()
    check_params(("k", "exclude_group", *FILTER_KEYS))
    k = k_param(ctx.settings.max_k)
    filters = query_filters()
    exclude_group = bool_param("exclude_group")
    with search_errors():
        result = ctx.searcher.similar_to_item(_known_id(external_id), k=k, filters=filters, exclude_group=exclude_group)
    ctx.metrics.queries.labels("item").inc()
    record_search_timings(result)
    query = {"external_id": external_id, "exclude_group": exclude_group, "filters": filters.to_dict()}
    response = timed_json(results_json(result, k=k, query=query, took_ms=elapsed_ms()))
    settings = ctx.settings
    if sampled(settings.query_log_sample_rate):
        # after the response is sent: the client never waits for the log, and a failed write is only logged
        response.call_on_close(lambda: log_query(ctx.sessions, external_id, k, settings.query_log_max_rows))
    return response


@bp.put("/items/<external_id>")
@requires(Access.WRITE)
def put_item(external_id: str) -> Response:
    """Create or replace an item. Multipart: ``metadata`` (JSON) + ``image`` files, which
    replace the item's images. JSON: metadata only; the item's current images are kept."""
    ctx = service_context()
    check_params(())
    _writable_id(external_id)
    kind = body_kind(BodyKind.MULTIPART, BodyKind.JSON)
    max_bytes = ctx.settings.max_image_bytes
    if kind is BodyKind.MULTIPART:
        allow_body(MAX_UPLOAD_IMAGES * max_bytes + MULTIPART_OVERHEAD)
        metadata = _metadata_field(request.form.get("metadata"))
        refs = _uploaded_images(max_bytes)
    else:
        metadata = json_object()
        refs = None
    metadata = _check_metadata(metadata, external_id)
    if refs is None:
        refs = _current_images(external_id)
    row = make_row(1, {"external_id": external_id, **metadata}, base_dir=Path("."), image_refs=refs)
    if isinstance(row, RowError):
        raise ApiError(400, ErrorCode.BAD_REQUEST, row.reason)
    if row.external_id != external_id:  # the catalog rules changed it: the URL would not name the item
        raise _id_changed(external_id, row.external_id)
    report = import_rows([row], sessions=ctx.sessions, store=ctx.media)
    if report.errors:
        raise ApiError(400, ErrorCode.BAD_REQUEST, report.errors[0].reason)
    created = report.created == 1
    with session_scope(ctx.sessions) as s:
        item = get_item(s, external_id, include_deleted=False)
        if item is None:  # deleted by a concurrent request between the write and this read
            raise ApiError(409, ErrorCode.CONFLICT,
                           f"item {external_id!r} was deleted by another request while this one saved it")
        body = item_json(item)
        active_ids = [img["id"] for img in body["images"]]
    body["embedding"] = queue_embedding(ctx, report.new_image_ids, active_ids,
                                        saved=f"item {external_id!r} was saved")
    return timed_json(body, 201 if created else 200)


@bp.delete("/items/<external_id>")
@requires(Access.WRITE)
def delete_one(external_id: str) -> Response:
    check_params(())
    ctx = service_context()
    with session_scope(ctx.sessions) as s:
        outcome = delete_item(s, _known_id(external_id))
    if outcome is DeleteOutcome.NOT_FOUND:
        raise not_found(f"no item with external id {external_id!r}")
    return Response(status=204)


@bp.get("/media/<key>")
@requires(Access.READ)
def media(key: str) -> Response:
    """Stored image bytes by content key: immutable, so cached for a year."""
    check_params(())
    if not is_media_key(key):
        raise not_found(f"no image with key {key!r} (keys are 64 lower-case hex characters)")
    ctx = service_context()
    try:
        path = ctx.media.local_file(key)  # with an object store: downloaded into this host's cache once
    except MediaError:
        raise not_found(f"no image with key {key}") from None
    with open(path, "rb") as fh:
        head = fh.read(16)
    response = send_file(path, mimetype=_sniff(head), conditional=True, etag=key, max_age=31536000)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _sniff(head: bytes) -> str:
    for magic, mimetype in _MAGIC:
        if head.startswith(magic):
            return mimetype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _metadata_field(raw: str | None) -> dict[str, Any]:
    """The multipart ``metadata`` field as an object (absent or blank: none)."""
    if raw is None or not raw.strip():
        return {}
    data = parse_json(raw, "metadata")
    if not isinstance(data, dict):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "metadata must be a JSON object")
    return data


def _known_id(external_id: str) -> str:
    """404 at once for ids no item can have (too long, NUL): they never reach SQL."""
    if len(external_id) > 255 or "\x00" in external_id:
        raise not_found(f"no item with external id {external_id[:80]!r}")
    return external_id


def _writable_id(external_id: str) -> None:
    """400 before anything is read or written for an id the catalog rules would store changed.

    Catalog imports (``core.catalog.validate``) strip surrounding whitespace from ids, so
    ``PUT /items/%20id%20`` would save item ``id`` under a URL that does not name it. The
    API refuses such ids instead of renaming the resource the client addressed.
    """
    stripped = external_id.strip()
    if stripped != external_id:
        raise _id_changed(external_id, stripped)
    if len(external_id) > MAX_EXTERNAL_ID:  # before the body is read: no item can have this id
        raise ApiError(400, ErrorCode.INVALID_PARAMETER,
                       f"external_id: {len(external_id)} characters, more than the {MAX_EXTERNAL_ID} allowed",
                       details={"parameter": "external_id"})


def _id_changed(external_id: str, stored: str) -> ApiError:
    """The 400 for an id the catalog rules would store as ``stored`` instead."""
    return ApiError(400, ErrorCode.INVALID_PARAMETER,
                    f"external_id: {external_id[:80]!r} would be stored as {stored[:80]!r} (catalog ids "
                    "lose surrounding whitespace, as in imports); send the id as it is stored",
                    details={"parameter": "external_id"})


def _check_metadata(metadata: dict[str, Any], external_id: str) -> dict[str, Any]:
    given = metadata.pop("external_id", external_id)
    if given != external_id:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"external_id in the body ({given!r}) differs from the one in the URL ({external_id!r})")
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"unknown metadata field {unknown[0]!r}: allowed are {', '.join(METADATA_KEYS)}")
    if "title" in metadata and not isinstance(metadata["title"], str):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "title must be a string")
    for name in ("category", "group"):
        if name in metadata and not isinstance(metadata[name], (str, type(None))):
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"{name} must be a string or null")
    if "attributes" in metadata and not isinstance(metadata["attributes"], dict):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "attributes must be a JSON object")
    return metadata


def _uploaded_images(max_bytes: int) -> list[ImageRef]:
    files = request.files.getlist("image")
    if not files:
        raise ApiError(400, ErrorCode.BAD_REQUEST, "send at least one image in the multipart field 'image'")
    if len(files) > min(MAX_UPLOAD_IMAGES, MAX_IMAGES_PER_ITEM):
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"at most {MAX_UPLOAD_IMAGES} images per request")
    store = service_context().media
    refs = []
    for storage in files:
        data = read_file(storage, max_bytes)
        try:
            store.describe(data)  # validate first, for a precise status (413 vs 400)
        except MediaError as exc:
            raise media_error(exc) from exc
        refs.append(ImageRef(uri=f"upload:{storage.filename or 'image'}"[:2000], data=data))
    return refs


def _current_images(external_id: str) -> list[ImageRef]:
    """The item's active images as references, so a metadata-only PUT keeps them."""
    ctx = service_context()
    with session_scope(ctx.sessions) as s:
        item = get_item(s, external_id, include_deleted=True)
        images = [] if item is None else [img for img in item.images if img.status.value == "active"]
        images.sort(key=lambda img: (img.position, img.id))
        keys = [(img.source_uri, img.media_key) for img in images]
    if not keys:
        raise ApiError(409, ErrorCode.CONFLICT,
                       f"item {external_id!r} has no images yet: send multipart/form-data with "
                       "'metadata' and at least one 'image' file")
    return [ImageRef(uri=uri or f"media:{key}", data=ctx.media.read_bytes(key)) for uri, key in keys]


