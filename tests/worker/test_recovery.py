"""A job whose whole worker died is sent again once its heartbeat is old, and completes."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from core.artifacts import open_store
from core.catalog.sample import Split
from core.db import Job, JobKind, JobPhase, JobStatus, session_scope
from core.db.types import utcnow
from core.import_uploads import UPLOADS_PREFIX, save_upload
from core.jobs import create_job, finish_job, get_job, start_job
from core.registry import active_index
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from tests.worker.conftest import CeleryStack, Embedded
from tests.worker.support import (
    TINY_TRAINING,
    import_fmnist,
    register_tiny_model,
    wait_for_job,
    wait_until,
)
from worker.flows.jobstate import TaskRecord
from worker.flows.recovery import recover_orphaned_jobs


def _age(embedded: Embedded, job_id: int, seconds: float) -> None:
    with session_scope(embedded.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - dt.timedelta(seconds=seconds)))


def test_a_silent_running_job_is_sent_again_and_others_are_left_alone(embedded: Embedded) -> None:
    register_tiny_model(embedded.settings, embedded.sessions)
    import_fmnist(embedded.settings, embedded.sessions, 40)
    # A reindex that "was running" on a worker that vanished: RUNNING, task recorded, silent for 10 min.
    lost = create_job(embedded.sessions, JobKind.REINDEX, {"force": True})
    with session_scope(embedded.sessions) as s:
        job = s.get(Job, lost)
        job.params = TaskRecord(TaskName.REINDEX, {"job_id": lost, "force": True}).into(job.params)
    start_job(embedded.sessions, lost)
    _age(embedded, lost, 600)
    # Silent but with nothing recorded to send, and running with a fresh heartbeat: untouched.
    unknown = create_job(embedded.sessions, JobKind.TRAIN, {})
    start_job(embedded.sessions, unknown)
    _age(embedded, unknown, 600)
    alive = create_job(embedded.sessions, JobKind.IMPORT,
                       TaskRecord(TaskName.IMPORT_CATALOG, {"job_id": 0, "path": "/nowhere"}).into({}))
    start_job(embedded.sessions, alive)

    result = recover_orphaned_jobs(embedded.sessions, embedded.dispatcher, orphaned_after_seconds=120)

    assert result == {"resent": [lost]}
    job = get_job(embedded.sessions, lost)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    assert active_index(embedded.sessions).image_count == 40
    assert get_job(embedded.sessions, unknown).status is JobStatus.RUNNING
    assert get_job(embedded.sessions, alive).status is JobStatus.RUNNING
    # Nothing is silent any more: a second sweep sends nothing.
    assert recover_orphaned_jobs(embedded.sessions, embedded.dispatcher, 120) == {"resent": []}


def test_a_running_task_records_itself_and_keeps_its_job_alive(embedded: Embedded) -> None:
    settings = embedded.settings
    register_tiny_model(settings, embedded.sessions)
    import_fmnist(settings, embedded.sessions, 30)
    request = submit_reindex(settings, embedded.sessions, embedded.dispatcher, force=True)
    job = get_job(embedded.sessions, request.job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert TaskRecord.read(job.params) == TaskRecord(TaskName.REINDEX, {"job_id": request.job_id, "force": True})


ORPHAN_SETTINGS = {"job_heartbeat_seconds": 0.5, "orphaned_job_seconds": 3.0}


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("celery_stack", [ORPHAN_SETTINGS], indirect=True)
def test_a_reindex_whose_whole_worker_was_killed_completes_after_a_restart(celery_stack: CeleryStack) -> None:
    stack = celery_stack
    register_tiny_model(stack.settings, stack.sessions)
    # 64 px vectors for 900 new images: seconds of work, time to kill it half way.
    import_fmnist(stack.settings, stack.sessions, 900, split=Split.TEST)
    request = submit_reindex(stack.settings, stack.sessions, stack.dispatcher, force=True)
    wait_until(lambda: (j := get_job(stack.sessions, request.job_id)).status is JobStatus.RUNNING
               and j.phase is JobPhase.EMBEDDING and j.progress_done > 0, 60, 0.01, "reindex half way")
    stack.worker.stop()  # SIGKILL to the worker's whole process group: no one is left to requeue
    assert get_job(stack.sessions, request.job_id).status is JobStatus.RUNNING

    stack.worker.start()
    wait_until(lambda: get_job(stack.sessions, request.job_id).updated_at
               < utcnow() - dt.timedelta(seconds=ORPHAN_SETTINGS["orphaned_job_seconds"]), 30, 0.2, "silence")
    stack.dispatcher.send(TaskName.RECOVER_JOBS)  # what beat sends every 1.5 s with these settings

    job = wait_for_job(stack.sessions, request.job_id, timeout=120)
    assert job.status is JobStatus.SUCCEEDED, f"{job.error}\n{stack.worker.log()[-3000:]}"
    assert job.attempts == 2
    assert active_index(stack.sessions).image_count == 900


def test_the_scheduled_retrain_gets_a_job_and_records_itself(embedded: Embedded) -> None:
    settings = embedded.settings
    register_tiny_model(settings, embedded.sessions)
    import_fmnist(settings, embedded.sessions, 60)
    overrides = TINY_TRAINING
    embedded.dispatcher.send(TaskName.RETRAIN, reason="scheduled", overrides=overrides)  # as beat sends it
    with session_scope(embedded.sessions) as s:
        job = s.scalars(select(Job).where(Job.kind == JobKind.RETRAIN)).one()
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.params["reason"] == "scheduled"
    assert TaskRecord.read(job.params) == TaskRecord(
        TaskName.RETRAIN, {"reason": "scheduled", "overrides": overrides, "job_id": job.id})


def test_the_sweep_deletes_the_uploads_of_finished_imports(embedded: Embedded, tmp_path) -> None:
    """RECOVER_JOBS also prunes import uploads (core/import_uploads.py): those whose delete met a dead store."""
    store = open_store(embedded.settings)
    source = tmp_path / "c.csv"
    source.write_bytes(b"external_id,images\nx,/nowhere.png\n")
    done, waiting = (save_upload(store, source, "csv") for _ in range(2))
    for upload, finished in ((done, True), (waiting, False)):
        job = create_job(embedded.sessions, JobKind.IMPORT, {"upload": upload.to_dict()})
        if finished:
            finish_job(embedded.sessions, job, {})
    embedded.dispatcher.send(TaskName.RECOVER_JOBS)
    assert list(store.list_keys(UPLOADS_PREFIX)) == [waiting.key]  # the queued job's upload stays
