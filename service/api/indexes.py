"""Index endpoints: list the versions, publish one again (a rollback).

``POST /indexes/{version}/publish`` runs :func:`core.publish.republish_index`, the
same checks and publish as ``lookalike indexes rollback``: 404 for an unknown
version, 409 (``details.reason``) for one that cannot be served (not ready, files
missing or corrupt, model checkpoint gone). On success every API process swaps on
the notification (or its next poll); this one swaps before answering, so
``served_here`` says whether it could load the version (docs/OPERATIONS.md,
"Upgrades and rollbacks").
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from core.db import IndexVersion
from core.publish import IndexNotFound, IndexNotPublishable, republish_index
from core.registry import get_index, index_to_dict, list_indexes
from service.api.common import timed_json
from service.api.params import check_params, int_param
from service.auth import Access, requires
from service.context import ServiceContext, service_context
from service.errors import ApiError, ErrorCode, not_found
from service.redact import redactor
from service.uploads import BodyKind, body_kind, json_object

bp = Blueprint("indexes", __name__)


def _served(ctx: ServiceContext) -> str | None:
    state = ctx.searcher.holder.state
    return state.index_version if state is not None else None


def _row(index: IndexVersion, serving: str | None) -> dict[str, Any]:
    """An index's JSON, its path redacted for the caller (docs/OPERATIONS.md, "Server paths in answers")."""
    return redactor().json({**index_to_dict(index), "served_here": index.version == serving})


@bp.get("/indexes")
@requires(Access.READ)
def indexes() -> Response:
    """Index versions, newest first; ``status: active`` is the published one."""
    check_params(("limit",))
    limit = int_param("limit", 50, minimum=1, maximum=500)
    ctx = service_context()
    serving = _served(ctx)
    return timed_json({"indexes": [_row(i, serving) for i in list_indexes(ctx.sessions, limit)]})


@bp.post("/indexes/<version>/publish")
@requires(Access.WRITE)
def publish(version: str) -> Response:
    """Serve index ``version`` again, with its model, after checking its files."""
    ctx = service_context()
    check_params(())
    if body_kind(BodyKind.JSON, BodyKind.EMPTY) is BodyKind.JSON and (body := json_object()):
        raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown field {sorted(body)[0]!r}: this takes no fields")
    if "\x00" in version:  # PostgreSQL refuses NUL in text; no version can contain one
        raise not_found(f"index version {version[:80]!r} does not exist")
    try:
        republish_index(ctx.settings, ctx.sessions, version)
    except IndexNotFound as exc:
        raise not_found(str(exc)) from exc
    except IndexNotPublishable as exc:
        raise ApiError(409, ErrorCode.CONFLICT, str(exc),
                       details={"reason": exc.reason.value, "version": exc.version}) from exc
    ctx.searcher.refresh_now()
    published = get_index(ctx.sessions, version)
    if published is None:  # index rows are never deleted; this would be a bug
        raise not_found(f"index version {version!r} does not exist")
    return timed_json({"index": _row(published, _served(ctx))})
