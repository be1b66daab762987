"""Queueing the embedding of images written through the API.

What is sent is the new images *plus* the item's active images that still lack a
vector for the query model, so retrying a PUT that got a 503 (broker down: the
item was saved, the embedding was not queued) queues them again: nothing is lost.
In the embedded setup the job runs in this process; the request waits for it (a
few seconds at most) and then refreshes the fresh set, so the item is findable
as soon as the response arrives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from core.db import JobKind, session_scope
from core.dispatch import DispatchUnavailable
from core.embeddings_store import missing_image_ids
from core.jobs import create_job, fail_job, get_job
from core.registry import active_index
from core.task_names import TaskName
from service.api.common import dispatch_errors
from service.context import ServiceContext

EMBEDDED_WAIT_SECONDS = 10.0


def images_to_embed(ctx: ServiceContext, new_ids: Sequence[int], active_ids: Sequence[int]) -> list[int]:
    ids = {int(i) for i in new_ids}
    row = active_index(ctx.sessions)
    if row is not None and active_ids:
        with session_scope(ctx.sessions) as s:
            ids.update(missing_image_ids(s, row.model_id, among=list(active_ids)))
    return sorted(ids)


def wait_for_job(ctx: ServiceContext, job_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_job(ctx.sessions, job_id).status.finished:
            return
        time.sleep(0.05)


def queue_embedding(ctx: ServiceContext, new_ids: Sequence[int], active_ids: Sequence[int], *,
                    saved: str) -> dict[str, Any]:
    """Send EMBED_IMAGES for what needs it; the JSON ``embedding`` part of the answer."""
    ids = images_to_embed(ctx, new_ids, active_ids)
    if not ids:
        return {"queued": 0, "job_id": None, "status": "up_to_date"}
    job_id = create_job(ctx.sessions, JobKind.EMBED, {"images": len(ids), "reason": "api upsert"})
    with dispatch_errors(saved=saved):
        try:
            ctx.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=ids, job_id=job_id)
        except DispatchUnavailable as exc:
            fail_job(ctx.sessions, job_id, f"could not be queued: {exc}")
            raise
    if ctx.settings.embedded:
        wait_for_job(ctx, job_id, EMBEDDED_WAIT_SECONDS)
        ctx.searcher.refresh_now()
    return {"queued": len(ids), "job_id": job_id, "status": get_job(ctx.sessions, job_id).status.value}
