from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db import JobKind, JobStatus
from core.jobs import (
    JobNotFound,
    create_job,
    fail_job,
    finish_job,
    get_job,
    job_to_dict,
    list_jobs,
    start_job,
    update_progress,
)


def test_job_lifecycle(sessions: sessionmaker[Session]) -> None:
    job_id = create_job(sessions, JobKind.REINDEX, {"force": True})
    assert get_job(sessions, job_id).status is JobStatus.QUEUED
    start_job(sessions, job_id, celery_task_id="abc")
    update_progress(sessions, job_id, 5, 10)
    job = get_job(sessions, job_id)
    assert (job.status, job.progress_done, job.progress_total, job.attempts) == (JobStatus.RUNNING, 5, 10, 1)
    finish_job(sessions, job_id, {"index": "v1"})
    data = job_to_dict(get_job(sessions, job_id))
    assert data["status"] == "succeeded" and data["progress"] == {"done": 10, "total": 10, "phase": None}
    assert data["result"] == {"index": "v1"} and data["finished_at"] is not None


def test_failed_job_and_listing(sessions: sessionmaker[Session]) -> None:
    a = create_job(sessions, JobKind.IMPORT)
    b = create_job(sessions, JobKind.TRAIN)
    fail_job(sessions, b, "boom")
    assert [j.id for j in list_jobs(sessions)] == [b, a]
    assert [j.id for j in list_jobs(sessions, status=JobStatus.FAILED)] == [b]
    assert [j.id for j in list_jobs(sessions, kind=JobKind.IMPORT)] == [a]
    assert get_job(sessions, b).error == "boom"
    with pytest.raises(JobNotFound):
        get_job(sessions, 999)


def test_a_failure_message_of_any_text_is_stored_and_ends_the_job(sessions: sessionmaker[Session]) -> None:
    """PostgreSQL refuses NUL and lone surrogates in text; a refused message would leave the job running."""
    job_id = create_job(sessions, JobKind.IMPORT)
    start_job(sessions, job_id)
    stored = fail_job(sessions, job_id, "cannot read caf\udce9.csv\x00: bad \ud800")
    assert stored == "cannot read caf\\xe9.csv\\x00: bad \\ud800"
    job = get_job(sessions, job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, stored)
