"""Pages: browse the catalog, an item with its look-alikes, search by photo, job status, near duplicates.

The pages call the same searcher and queries as the JSON API (no HTTP round trip)
and show the API's error messages. They are read-only, so they are available only
when reads are public; with ``LOOKALIKE_READS_PUBLIC=false`` they answer 401. The one
write, a merchandiser's feedback on the item page, is sent by the browser's script
(``static/feedback.js``) to ``POST /api/v1/feedback`` with the merchandiser's own key.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from core.config import MULTIPART_OVERHEAD
from core.db import Item, ItemImage, ItemStatus, JobKind, session_scope
from core.duplicate_scans import NoScanYet, active_version, latest_scan, scan_answer
from core.jobs import job_to_dict, list_jobs
from service.api.common import search_errors
from service.api.params import DB_INT_MAX
from service.api.serialize import item_json, match_json, media_url
from service.context import service_context
from service.errors import ApiError, ErrorCode
from service.filters import Filters
from service.redact import redactor
from service.uploads import allow_body, decode_upload, read_file

ui_blueprint = Blueprint("ui", __name__)

PAGE_SIZE = 24
DUPLICATE_GROUPS = 50
SIMILAR_K = 12


@ui_blueprint.before_request
def _reads_must_be_public() -> None:
    if not service_context().settings.reads_public:
        raise ApiError(401, ErrorCode.UNAUTHORIZED,
                       "the web UI is only available when reads are public (LOOKALIKE_READS_PUBLIC=true)")


@ui_blueprint.get("/")
def catalog() -> str:
    ctx = service_context()
    category = request.args.get("category") or None
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    page = min(page, DB_INT_MAX // PAGE_SIZE)  # a page past the end is empty; past this, SQL overflows
    with session_scope(ctx.sessions) as s:
        categories = s.execute(
            select(Item.category, func.count()).where(Item.status == ItemStatus.ACTIVE)
            .group_by(Item.category).order_by(Item.category)).all()
        conditions = [Item.status == ItemStatus.ACTIVE]
        if category is not None:
            conditions.append(Item.category == category)
        total = s.scalar(select(func.count()).select_from(Item).where(*conditions)) or 0
        items = [item_json(i) for i in s.scalars(
            select(Item).where(*conditions).order_by(Item.id).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
            .options(selectinload(Item.images)))]
    pages = max(1, -(-total // PAGE_SIZE))
    return render_template("catalog.html", categories=categories, category=category, items=items,
                           page=page, pages=pages, total=total)


@ui_blueprint.get("/items/<external_id>")
def item_page(external_id: str) -> tuple[str, int] | str:
    ctx = service_context()
    with session_scope(ctx.sessions) as s:
        found = s.scalars(select(Item).where(Item.external_id == external_id, Item.status == ItemStatus.ACTIVE)
                          .options(selectinload(Item.images))).one_or_none()
        item = item_json(found) if found is not None else None
    if item is None:
        return render_template("error.html", status=404, message=f"No item {external_id!r}."), 404
    results: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    problem = ""
    try:
        with search_errors():
            result = ctx.searcher.similar_to_item(external_id, k=SIMILAR_K, filters=Filters())
        results = [match_json(m) for m in result.matches]
        versions = {"model": result.model_version, "index": result.index_version}
    except ApiError as exc:
        problem = exc.message
    return render_template("item.html", item=item, results=results, versions=versions, problem=problem)


@ui_blueprint.route("/search", methods=["GET", "POST"])
def search_page() -> tuple[str, int] | str:
    ctx = service_context()
    if request.method == "GET":
        return render_template("search.html", results=None, problem="")
    try:
        allow_body(ctx.settings.max_image_bytes + MULTIPART_OVERHEAD)
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            raise ApiError(400, ErrorCode.BAD_REQUEST, "Choose a photo to upload first.")
        image = decode_upload(read_file(upload, ctx.settings.max_image_bytes),
                              max_pixels=ctx.settings.max_image_pixels, max_bytes=ctx.settings.max_image_bytes)
        with search_errors():
            result = ctx.searcher.search_image(image, k=SIMILAR_K, filters=Filters())
        ctx.metrics.queries.labels("image").inc()
    except ApiError as exc:
        return render_template("search.html", results=None, problem=exc.message), exc.status
    return render_template("search.html", results=[match_json(m) for m in result.matches], problem="",
                           versions={"model": result.model_version, "index": result.index_version})


@ui_blueprint.get("/jobs")
def jobs_page() -> str:
    ctx = service_context()
    jobs = redactor().json([job_to_dict(j) for j in list_jobs(ctx.sessions, limit=30)])
    reindexes = [j for j in jobs if j["kind"] == JobKind.REINDEX.value]
    state = ctx.searcher.holder.state
    serving = {"index": state.index_version, "model": state.model_version, "fresh": len(state.fresh)} if state else None
    return render_template("jobs.html", jobs=jobs, running=[j for j in reindexes if j["status"] in
                                                              ("queued", "running")],
                           serving=serving)


@ui_blueprint.get("/duplicates")
def duplicates_page() -> str:
    """The latest near-duplicate scan's groups to review, each item with the photo that matched,
    and (for a merchandiser with a write key, ``static/duplicates.js``) a button that starts a new scan."""
    ctx = service_context()
    try:
        job = latest_scan(ctx.sessions)
    except NoScanYet as exc:
        problem = str(exc) if active_version(ctx.sessions) is not None else "no index is published yet"
        return render_template("duplicates.html", report=None, groups=[], problem=problem)
    report = scan_answer(ctx.sessions, job, DUPLICATE_GROUPS)
    shown = report["groups"]
    image_ids = {i for g in shown for p in g["pairs"] for i in (p["image_a"], p["image_b"])}
    with session_scope(ctx.sessions) as s:
        rows = s.execute(select(ItemImage.id, ItemImage.media_key, Item.external_id, Item.title)
                         .join(Item, Item.id == ItemImage.item_id).where(ItemImage.id.in_(sorted(image_ids)))).all()
    photo = {r.external_id: {"external_id": r.external_id, "title": r.title, "image_url": media_url(r.media_key)}
             for r in sorted(rows, key=lambda r: r.id)}
    groups = [{"distance": g["pairs"][0]["distance"], "similarity": g["pairs"][0]["similarity"],
               "items": [photo[e] for e in g["items"] if e in photo]} for g in shown]
    return render_template("duplicates.html", report=report, groups=groups, problem="")
