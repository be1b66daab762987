"""After new vectors land: queue a rebuild when the fresh set has grown too big.

Fresh images are findable at once (the service searches them exactly), but an
exact search grows linearly with the fresh set, so past
``settings.fresh_rebuild_threshold`` a reindex is requested (joining one already
under way). With no index at all, the first embedding that completes requests the
first build: a catalog without an index cannot be searched.
"""

from __future__ import annotations

import logging

from core.db import session_scope
from core.dispatch import DispatchUnavailable
from core.embeddings_store import fresh_image_ids
from core.registry import active_index, active_model
from core.reindex_requests import submit_reindex
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def rebuild_reason(rt: Runtime) -> str | None:
    """Why a rebuild is due now, or None if it is not."""
    if active_index(rt.sessions) is None:
        return "first index" if active_model(rt.sessions) is not None else None
    with session_scope(rt.sessions) as s:
        fresh = len(fresh_image_ids(s))
    if fresh > rt.settings.fresh_rebuild_threshold:
        return f"fresh set of {fresh} images > {rt.settings.fresh_rebuild_threshold}"
    return None


def after_embedding(rt: Runtime) -> int | None:
    """Request a reindex if one is due; the id of the (joined or new) job, else None."""
    reason = rebuild_reason(rt)
    if reason is None:
        return None
    try:
        return submit_reindex(rt.settings, rt.sessions, rt.dispatcher, reason=reason).job_id
    except DispatchUnavailable as exc:
        # The vectors are stored and findable; the next embedding or the nightly run retries.
        log.warning("could not queue a reindex (%s): %s", reason, exc)
        return None
