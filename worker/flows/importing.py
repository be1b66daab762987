"""IMPORT_CATALOG: read a CSV / JSONL / folder into the catalog, then queue the embedding.

The upsert is idempotent (rows are keyed by external id, images by content), so a
redelivered import changes nothing the second time. What it queues for embedding
is the new images *plus* any active image the query model still lacks: a retry
whose first attempt died after the upsert then still embeds what that attempt
added (on the retry those images are no longer "new").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.catalog.imports import import_catalog
from core.catalog.rows import CatalogFormatError, ImportReport
from core.db import Job, session_scope
from core.embeddings_store import missing_image_ids
from core.jobs import update_progress
from core.media import MediaStore
from core.task_names import TaskName
from core.text import safe_text
from worker.flows.model_choice import NoActiveModel, target_models
from worker.flows.runner import run_job_flow
from worker.runtime import Runtime

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 200
"""Row errors kept in the job result; the count is always complete."""


def report_to_dict(report: ImportReport) -> dict[str, Any]:
    return {
        "created": report.created, "updated": report.updated, "unchanged": report.unchanged,
        "deleted": report.deleted, "rejected": len(report.errors),
        "errors": [str(e) for e in report.errors[:MAX_REPORTED_ERRORS]],
        "warnings": [safe_text(w) for w in report.warnings], "new_images": len(report.new_image_ids),
        "seconds": round(report.seconds, 3),
    }


def run_import(rt: Runtime, job_id: int, path: str, format: str | None = None,
               delete_missing: bool = False) -> dict[str, Any]:
    """Import ``path`` for ``job_id`` and send EMBED_IMAGES for what needs vectors.

    Bad rows are reported in the result, never a reason to fail. A source that cannot
    be read at all fails the job with the reason; any other exception from the import
    fails it too and is raised (a bug, to be logged as one): worker/flows/runner.py.
    :func:`~core.jobs.fail_job` stores the messages as safe text: they may quote arbitrary bytes.
    """
    def body(_job: Job, _: None) -> dict[str, Any]:
        return _import(rt, job_id, path, format, delete_missing)

    return run_job_flow(rt.sessions, job_id, body, expected=(CatalogFormatError,))  # an unknown format is one too


def _import(rt: Runtime, job_id: int, path: str, format: str | None, delete_missing: bool) -> dict[str, Any]:
    rows_done = 0

    def progress(rows: int) -> None:  # called with the rows just processed
        nonlocal rows_done
        rows_done += rows
        update_progress(rt.sessions, job_id, rows_done)

    # The importer syncs the media store once per chunk before committing its rows,
    # so per-file fsyncs (the store's default) would only slow the import down.
    store = MediaStore.from_settings(rt.settings, fsync=False)
    report = import_catalog(Path(path), sessions=rt.sessions, store=store, fmt=format or None,
                            delete_missing=delete_missing, progress=progress,
                            import_roots=rt.settings.import_roots)
    result = report_to_dict(report)
    to_embed = set(report.new_image_ids)
    try:
        query_model = target_models(rt.sessions)[0]
        with session_scope(rt.sessions) as s:
            to_embed.update(missing_image_ids(s, query_model.id))
    except NoActiveModel:
        log.warning("imported, but there is no model to embed with yet: %s", NoActiveModel())
        to_embed.clear()
        result["embedding"] = str(NoActiveModel())
    if to_embed:
        # Sent before the job is marked done: a worker killed in between redoes the
        # (idempotent) import and sends it again, rather than never sending it.
        rt.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=sorted(to_embed))
    result["queued_for_embedding"] = len(to_embed)
    return result
