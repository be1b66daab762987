"""Operations endpoints at the root: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from core.db import Item, ItemStatus
from service.context import service_context
from service.redact import redactor

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and answering (no dependency is checked)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when the database answers and an index is loaded (or the catalog is empty)."""
    ctx = service_context()
    checks: dict[str, Any] = {}
    ready = True
    catalog_empty = False
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            catalog_empty = conn.execute(
                select(Item.id).where(Item.status == ItemStatus.ACTIVE).limit(1)).first() is None
        checks["database"] = {"ok": True}
    except SQLAlchemyError as exc:
        ready = False
        checks["database"] = {"ok": False, "error": str(exc).splitlines()[0]}
    state = None
    try:
        state = ctx.searcher.current()
    except SQLAlchemyError as exc:  # the first load needs the database too
        checks["database"] = {"ok": False, "error": str(exc).splitlines()[0]}
        ready = False
    index_ok = state is not None or (catalog_empty and checks["database"]["ok"])
    checks["index"] = {
        "ok": index_ok,
        "version": state.index_version if state else None,
        "model_version": state.model_version if state else None,
        "fresh": len(state.fresh) if state else 0,
        "catalog_empty": catalog_empty,
        "error": ctx.searcher.holder.last_error or None,
    }
    ready = ready and index_ok
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": redactor().json(checks)})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = service_context().metrics.exposition()
    return Response(body, content_type=content_type)
