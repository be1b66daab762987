"""``GET /duplicates``: groups of items whose photos are near duplicates under the active index.

The scan is :func:`core.duplicates.find_duplicates`, the same as ``lookalike catalog
duplicates``: candidates from the active index and the photos' descriptors, verified
on the photos, the candidate cutoff calibrated on the catalog unless given (docs/ARCHITECTURE.md, "Near-duplicate
detection"). It reads the index directly, so it answers the published version even
before this process has swapped to it; 409 while nothing is published.
"""

from __future__ import annotations

from flask import Blueprint, Response

from core.duplicates import NoActiveIndex, find_duplicates_with, report_to_dict
from service.api.common import timed_json
from service.api.params import check_params, float_param, int_param
from service.auth import Access, requires
from service.context import service_context
from service.errors import ApiError, ErrorCode

bp = Blueprint("duplicates", __name__)

MAX_THRESHOLD = 1e6
MAX_RATIO = 100.0


@bp.get("/duplicates")
@requires(Access.READ)
def duplicates() -> Response:
    """Near-duplicate groups, largest first; ``threshold`` overrides the calibrated distance."""
    check_params(("threshold", "ratio", "min_similarity", "limit"))
    threshold = float_param("threshold", minimum=0.0, maximum=MAX_THRESHOLD)
    ratio = float_param("ratio", minimum=1e-6, maximum=MAX_RATIO)
    min_similarity = float_param("min_similarity", minimum=-1.0, maximum=1.0)
    limit = int_param("limit", 100, minimum=1, maximum=1000)
    ctx = service_context()
    try:
        report = find_duplicates_with(ctx.settings, ctx.sessions, ratio=ratio, threshold=threshold,
                                      min_similarity=min_similarity)
    except NoActiveIndex as exc:
        raise ApiError(409, ErrorCode.INDEX_UNAVAILABLE, str(exc)) from exc
    return timed_json(report_to_dict(report, limit))
