"""Feedback endpoints: record judgements on (query, result) pairs, list them, export them as CSV.

``POST /feedback`` (write key) takes one judgement object or ``{"judgements": [...]}``
(at most :data:`MAX_BATCH`); the batch is all or nothing: an unknown field, value or
item, or a self-pair, refuses the whole request and stores none of it. Storage and
its rules are :mod:`core.feedback` (docs/ARCHITECTURE.md, "Feedback").

``GET /feedback`` lists them (filters, ``limit``, ``cursor``) as JSON;
``GET /feedback/export`` streams every matching one as CSV whose ``a,b,y`` columns
are the trainer's pairs format (trainer/data/tuples.py), so an export can be trained
on as it is (docs/DECISIONS.md, "Feedback export").
"""

from __future__ import annotations

from typing import Any, TypeVar

from flask import Blueprint, Response, request, stream_with_context

from core.catalog.rows import MAX_EXTERNAL_ID
from core.db import FeedbackJudgement, FeedbackSource, session_scope
from core.feedback import (
    CSV_COLUMNS,
    FeedbackError,
    FeedbackPage,
    Judgement,
    SelfPair,
    UnknownItem,
    feedback_csv,
    list_feedback,
    record_feedback,
)
from service.api.common import timed_json
from service.api.params import check_params, int_param
from service.auth import Access, requires
from service.context import service_context
from service.errors import ApiError, ErrorCode, bad_param
from service.uploads import BodyKind, body_kind, json_object

bp = Blueprint("feedback", __name__)

MAX_BATCH = 1000
"""Judgements per request: a batch is one transaction, so this bounds its size (and the body's)."""
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR = 10**18 - 1
"""Cursors are row ids; the query string takes integers of up to 18 digits (service/api/params.py)."""
FIELDS = ("query", "result", "judgement", "source", "weight")
REQUIRED = ("query", "result", "judgement", "source")
E = TypeVar("E", FeedbackJudgement, FeedbackSource)


@bp.post("/feedback")
@requires(Access.WRITE)
def post_feedback() -> Response:
    """Record one judgement, or a batch of them; answers with what is stored, in the order sent."""
    ctx = service_context()
    check_params(())
    body_kind(BodyKind.JSON)
    body = json_object()
    if "judgements" in body:
        unknown = sorted(set(body) - {"judgements"})
        if unknown:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"unknown field {unknown[0]!r}: a batch is {{\"judgements\": [...]}} alone")
        raw = body["judgements"]
        if not isinstance(raw, list) or not raw:
            raise bad_param("judgements", "must be a non-empty list of judgement objects")
        if len(raw) > MAX_BATCH:
            raise bad_param("judgements", f"at most {MAX_BATCH} per request, got {len(raw)}; send several batches")
        judgements = [_judgement(item, f"judgements[{i}]") for i, item in enumerate(raw)]
    else:
        judgements = [_judgement(body, "")]
    try:
        with session_scope(ctx.sessions) as s:
            stored = record_feedback(s, judgements)
    except UnknownItem as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"{exc}; nothing was stored",
                       details={"external_id": exc.external_id}) from exc
    except SelfPair as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"{exc}; nothing was stored",
                       details={"external_id": exc.external_id}) from exc
    return timed_json({"judgements": [r.to_dict() for r in stored], "count": len(stored)})


def _judgement(raw: Any, where: str) -> Judgement:
    """A judgement object, checked field by field; 400 naming the field (``where`` locates it in a batch)."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise bad_param(where or "body", f"must be a judgement object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"unknown field {prefix}{unknown[0]!r}: allowed are {', '.join(FIELDS)}",
                       details={"parameter": f"{prefix}{unknown[0]}"})
    for name in REQUIRED:
        if name not in raw:
            raise bad_param(prefix + name, "is required")
    ids = {}
    for name in ("query", "result"):
        value = raw[name]
        if not isinstance(value, str) or not value or len(value) > MAX_EXTERNAL_ID:
            raise bad_param(prefix + name, f"must be an item's external id (1 to {MAX_EXTERNAL_ID} characters)")
        ids[name] = value
    if ids["query"] != ids["result"]:  # a self-pair is a 400 whatever the id
        for value in ids.values():
            if "\x00" in value:  # no item has one (PostgreSQL refuses NUL in text): unknown, before SQL
                raise ApiError(404, ErrorCode.NOT_FOUND,
                               f"no active item with external id {value[:80]!r}; nothing was stored",
                               details={"external_id": value})
    judgement = _enum_value(FeedbackJudgement, raw["judgement"], prefix + "judgement")
    source = _enum_value(FeedbackSource, raw["source"], prefix + "source")
    weight = raw.get("weight", 1.0)
    refused = bad_param(prefix + "weight", f"must be a finite number > 0, got {weight!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise refused
    try:  # the value rule (finite, > 0) is the Judgement's own, for the API and the CLI alike
        return Judgement(ids["query"], ids["result"], judgement, source, float(weight))
    except FeedbackError as exc:
        raise refused from exc


def _enum_value(cls: type[E], raw: Any, name: str) -> E:
    allowed = ", ".join(m.value for m in cls)
    if not isinstance(raw, str):
        raise bad_param(name, f"must be one of {allowed}")
    try:
        return cls(raw)
    except ValueError:
        raise bad_param(name, f"unknown value {raw[:80]!r}: must be one of {allowed}") from None


def _filters() -> dict[str, Any]:
    """The list/export filters from the query string: ``query`` (external id), ``source``, ``judgement``."""
    out: dict[str, Any] = {}
    for name in ("query", "source", "judgement"):
        values = request.args.getlist(name)
        if not values:
            continue
        if len(values) > 1:
            raise bad_param(name, "give it once")
        out[name] = values[0]
    if "source" in out:
        out["source"] = _enum_value(FeedbackSource, out["source"], "source")
    if "judgement" in out:
        out["judgement"] = _enum_value(FeedbackJudgement, out["judgement"], "judgement")
    if "query" in out and not 0 < len(out["query"]) <= MAX_EXTERNAL_ID:
        raise bad_param("query", f"must be an item's external id (1 to {MAX_EXTERNAL_ID} characters)")
    return out


def _matches_nothing(filters: dict[str, Any]) -> bool:
    """A ``query`` no item can have (NUL; PostgreSQL refuses it in text): the answer is empty, without SQL."""
    return "\x00" in filters.get("query", "")


@bp.get("/feedback")
@requires(Access.READ)
def get_feedback() -> Response:
    """Stored judgements, oldest first; ``next_cursor`` fetches the next page (null on the last)."""
    ctx = service_context()
    check_params(("query", "source", "judgement", "limit", "cursor"))
    filters = _filters()
    limit = int_param("limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    cursor = int_param("cursor", 0, minimum=0, maximum=MAX_CURSOR)
    if _matches_nothing(filters):
        page = FeedbackPage(records=[], next_cursor=None)
    else:
        with session_scope(ctx.sessions) as s:
            page = list_feedback(s, limit=limit, cursor=cursor or None, **filters)
    return timed_json({"judgements": [r.to_dict() for r in page.records], "count": len(page.records),
                       "limit": limit, "next_cursor": page.next_cursor})


@bp.get("/feedback/export")
@requires(Access.READ)
def export_feedback() -> Response:
    """Every matching judgement as CSV (``a,b,y,...``), oldest first, streamed in chunks."""
    ctx = service_context()
    check_params(("query", "source", "judgement"))
    filters = _filters()
    lines = iter([",".join(CSV_COLUMNS) + "\n"]) if _matches_nothing(filters) else feedback_csv(ctx.sessions, **filters)
    return Response(stream_with_context(lines), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="feedback.csv"'})


