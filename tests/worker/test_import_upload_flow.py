"""IMPORT_CATALOG of an upload (core/import_uploads.py) in the embedded setup: checked, then deleted."""

from __future__ import annotations

from pathlib import Path

from core.artifacts import open_store
from core.db import JobKind, JobStatus
from core.import_uploads import UPLOADS_PREFIX, save_upload
from core.jobs import create_job, get_job
from core.task_names import TaskName
from tests.service.support import png_bytes
from tests.worker.conftest import Embedded
from worker.local import InProcessDispatcher


def _import(embedded: Embedded, tmp_path: Path, *, tamper: bool = False, remove: bool = False) -> int:
    root = tmp_path / "images"  # the import root of the worker (embedded: this process)
    root.mkdir(exist_ok=True)
    photo = root / "p.png"
    photo.write_bytes(png_bytes(77))
    source = tmp_path / "catalog.jsonl"
    source.write_text(f'{{"external_id": "j-1", "title": "J", "images": ["{photo}"]}}\n')
    store = open_store(embedded.settings)
    upload = save_upload(store, source, "jsonl")
    file = store.local_path(upload.key)
    assert file is not None
    if tamper:
        file.write_text(file.read_text().replace('"J"', '"K"'))
    if remove:
        file.unlink()
    job = create_job(embedded.sessions, JobKind.IMPORT, {"upload": upload.to_dict(), "format": "jsonl"})
    worker = InProcessDispatcher(embedded.settings.replace(import_roots=(root,)))
    try:
        worker.send(TaskName.IMPORT_CATALOG, job_id=job, upload=upload.to_dict(), format="jsonl")
        assert worker.failures == []  # expected errors only, no traceback
    finally:
        worker.close()
    assert list(store.list_keys(UPLOADS_PREFIX)) == []  # settled, so deleted: whatever the outcome
    return job


def test_an_uploaded_jsonl_is_imported_and_then_deleted(embedded: Embedded, tmp_path: Path) -> None:
    job = get_job(embedded.sessions, _import(embedded, tmp_path))
    assert job.status is JobStatus.SUCCEEDED and job.result["created"] == 1, (job.error, job.result)


def test_an_upload_whose_bytes_changed_or_vanished_fails_its_job_and_imports_nothing(
        embedded: Embedded, tmp_path: Path) -> None:
    damaged = get_job(embedded.sessions, _import(embedded, tmp_path, tamper=True))
    assert damaged.status is JobStatus.FAILED
    assert damaged.error.startswith("the uploaded catalog file is damaged in the store"), damaged.error
    gone = get_job(embedded.sessions, _import(embedded, tmp_path, remove=True))
    assert gone.status is JobStatus.FAILED and "is no longer in the artifact store" in gone.error, gone.error
