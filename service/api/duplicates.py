"""Near-duplicate groups: ``POST /duplicates/scans`` starts a scan job, ``GET /duplicates`` serves the latest.

The scan (:func:`core.duplicates.find_duplicates_with`, the same as ``lookalike catalog
duplicates``) reads the whole index and the photos' signatures: minutes on a real
catalog, far past a request's timeout, so it is a DUPLICATES job run by the worker
(worker/flows/duplicates.py) and ``GET`` answers from the newest succeeded scan,
saying which index version it scanned and whether that is still the active one
(core/duplicate_scans.py; docs/ARCHITECTURE.md, "Near-duplicate detection").
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, Response

from core.db import JobKind
from core.duplicate_scans import NoScanYet, active_version, latest_scan, scan_answer
from core.jobs import create_job
from core.task_names import TaskName
from service.api.common import timed_json
from service.api.job_requests import accepted_job, only_keys, optional_json, send_job
from service.api.params import check_params, int_param
from service.auth import Access, requires
from service.context import service_context
from service.errors import ApiError, ErrorCode, bad_param

bp = Blueprint("duplicates", __name__)

MAX_THRESHOLD = 1e6
MAX_RATIO = 100.0
SCAN_FIELDS: dict[str, tuple[float, float]] = {
    "threshold": (0.0, MAX_THRESHOLD), "ratio": (1e-6, MAX_RATIO), "min_similarity": (-1.0, 1.0)}
"""The scan's optional parameters and their inclusive bounds (what ``GET`` took as query parameters before)."""


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_param(name, f"must be a finite number, got {value!r:.40}")
    low, high = SCAN_FIELDS[name]
    if not low <= value <= high:
        raise bad_param(name, f"must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


@bp.post("/duplicates/scans")
@requires(Access.WRITE)
def start_scan() -> Response:
    """Queue a near-duplicate scan of the active index; 202 with its job, 409 while nothing is published."""
    ctx = service_context()
    check_params(())
    body = optional_json()
    only_keys(body, tuple(SCAN_FIELDS))
    params = {name: _number(body, name) for name in SCAN_FIELDS}
    if active_version(ctx.sessions) is None:
        raise ApiError(409, ErrorCode.INDEX_UNAVAILABLE, "no index is published yet: run `lookalike reindex`")
    job_id = create_job(ctx.sessions, JobKind.DUPLICATES, {**params, "reason": "api"})
    send_job(ctx, job_id, TaskName.SCAN_DUPLICATES, **params)
    return accepted_job(job_id)


@bp.get("/duplicates")
@requires(Access.READ)
def duplicates() -> Response:
    """The latest scan's groups, largest first (the first ``limit``), and which scan that was."""
    check_params(("limit",))
    limit = int_param("limit", 100, minimum=1, maximum=1000)
    ctx = service_context()
    try:
        job = latest_scan(ctx.sessions)
    except NoScanYet as exc:
        if active_version(ctx.sessions) is None:
            raise ApiError(409, ErrorCode.INDEX_UNAVAILABLE,
                           "no index is published yet: run `lookalike reindex`, then start a near-duplicate scan") \
                from exc
        raise ApiError(404, ErrorCode.NOT_FOUND, str(exc)) from exc
    return timed_json(scan_answer(ctx.sessions, job, limit))
