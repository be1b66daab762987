"""IMPORT_CATALOG: read a CSV / JSONL / folder into the catalog, then queue the embedding.

The source is a path on this host, or (from ``POST /api/v1/imports``) an upload in the
artifact store, fetched through this host's cache and checked (core/import_uploads.py);
an uploaded zip is unpacked here first (core/catalog/archives.py).

The upsert is idempotent (rows are keyed by external id, images by content), so a
redelivered import changes nothing the second time. What it queues for embedding
is the new images *plus* any active image the query model still lacks: a retry
whose first attempt died after the upsert then still embeds what that attempt
added (on the retry those images are no longer "new").
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from core.artifacts import ArtifactNotFound, StoreUnavailable, open_cache
from core.catalog.archives import ARCHIVE_FORMAT, extract_archive
from core.catalog.imports import import_catalog
from core.catalog.rows import CatalogFormatError, ImportReport
from core.db import Job, session_scope
from core.embeddings_store import missing_image_ids
from core.import_uploads import ImportUpload, UploadCorrupt, delete_upload, fetched_upload
from core.jobs import JobNotFound, get_job, update_progress
from core.media import MediaStore
from core.task_names import TaskName
from core.text import safe_text
from worker.flows.failures import FlowError
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


def run_import(rt: Runtime, job_id: int, path: str | None = None, format: str | None = None,
               delete_missing: bool = False, upload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Import ``upload`` (a catalog file in the artifact store, core/import_uploads.py) or
    ``path`` (a file on this host) for ``job_id``, and send EMBED_IMAGES for what needs vectors.

    Bad rows are reported in the result, never a reason to fail. A source that cannot
    be read at all fails the job with the reason, and so does an upload that cannot be
    fetched (the store down: nothing is imported, the file stays in the store) or whose
    bytes are not the ones uploaded. Any other exception from the import fails it too
    and is raised (a bug, to be logged as one): worker/flows/runner.py.
    :func:`~core.jobs.fail_job` stores the messages as safe text: they may quote arbitrary bytes.
    Once the job has finished, its upload is deleted (retention, core/import_uploads.py).
    """
    stored = ImportUpload.from_dict(upload) if upload is not None else None
    if stored is None and path is None:
        raise ValueError("an import needs an upload or a path")

    def body(_job: Job, _: None) -> dict[str, Any]:
        if stored is None:
            return _import(rt, job_id, Path(str(path)), format, delete_missing, uploaded=False)
        with _fetched(rt, stored) as local:
            if format != ARCHIVE_FORMAT:
                return _import(rt, job_id, local, format, delete_missing, uploaded=True)
            # A zip carries its images: unpacked here, its folder is the catalog's own (core/catalog/archives.py).
            with tempfile.TemporaryDirectory(dir=rt.settings.resolved_cache_dir, prefix=".archive-") as unpacked:
                catalog, fmt = extract_archive(local, Path(unpacked))
                return _import(rt, job_id, catalog, fmt.value, delete_missing, uploaded=False)

    try:
        return run_job_flow(rt.sessions, job_id, body, expected=(CatalogFormatError,))  # an unknown format too
    finally:
        if stored is not None:
            _delete_if_finished(rt, job_id, stored)


def _delete_if_finished(rt: Runtime, job_id: int, upload: ImportUpload) -> None:
    """Retention: delete the upload once its job is settled, never before (a run that died
    before that is run again and reads it). Whatever fails here, beat's sweep repeats it."""
    try:
        finished = get_job(rt.sessions, job_id).status.finished
    except (SQLAlchemyError, JobNotFound) as exc:  # must not hide what the flow raised
        log.warning("import upload %s kept for now: job %d unreadable: %s", upload.key, job_id, exc)
        return
    if finished:
        delete_upload(open_cache(rt.settings), upload)


@contextmanager
def _fetched(rt: Runtime, upload: ImportUpload) -> Iterator[Path]:
    """The upload on this host, through its cache; failing to get it is the job's error."""
    with ExitStack() as stack:
        try:
            local = stack.enter_context(fetched_upload(open_cache(rt.settings), upload))
        except StoreUnavailable as exc:
            log.warning("import upload %s not fetched: %s", upload.key, exc)  # the store's address: the log only
            raise FlowError("the artifact store cannot be reached, so the uploaded catalog file could not be "
                            "fetched: nothing was imported; upload the file again once the store is back") from exc
        except ArtifactNotFound as exc:
            raise FlowError(f"the uploaded catalog file {upload.key} is no longer in the artifact store: "
                            "nothing was imported; upload the file again") from exc
        except UploadCorrupt as exc:
            raise FlowError(f"the uploaded catalog file is damaged in the store ({exc}): nothing was imported") \
                from exc
        log.info("fetched import upload %s (%d bytes, sha256 checked) to %s", upload.key, upload.size, local)
        yield local


def _import(rt: Runtime, job_id: int, path: Path, format: str | None, delete_missing: bool, *,
            uploaded: bool) -> dict[str, Any]:
    rows_done = 0

    def progress(rows: int) -> None:  # called with the rows just processed
        nonlocal rows_done
        rows_done += rows
        update_progress(rt.sessions, job_id, rows_done)

    # The importer syncs the media store once per chunk before committing its rows,
    # so per-file fsyncs (the store's default) would only slow the import down.
    store = MediaStore.from_settings(rt.settings, fsync=False)
    report = import_catalog(path, sessions=rt.sessions, store=store, fmt=format or None,
                            delete_missing=delete_missing, progress=progress,
                            import_roots=rt.settings.import_roots, uploaded=uploaded)
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
