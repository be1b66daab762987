"""The jobs table: every long operation, its progress and its outcome.

Each function runs in its own short transaction (it takes a session *factory*), so
progress written by a worker is visible to the API at once and a crash mid-job
never holds a lock on the row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobKind, JobPhase, JobStatus, session_scope
from core.db.types import utcnow
from core.text import safe_text


class JobNotFound(LookupError):
    pass


def create_job(sessions: sessionmaker[Session], kind: JobKind, params: dict[str, Any] | None = None) -> int:
    """Record a queued job and return its id."""
    with session_scope(sessions) as s:
        job = Job(kind=kind, params=params or {}, status=JobStatus.QUEUED)
        s.add(job)
        s.flush()
        return job.id


def _load(s: Session, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} does not exist")
    return job


def start_job(sessions: sessionmaker[Session], job_id: int, *, celery_task_id: str | None = None) -> None:
    """Mark a job running; a retry after a killed worker starts it again and counts the attempt."""
    with session_scope(sessions) as s:
        job = _load(s, job_id)
        job.status = JobStatus.RUNNING
        job.started_at = utcnow()
        job.finished_at = None
        job.error = ""
        job.attempts += 1
        job.phase = JobPhase.NONE
        if celery_task_id:
            job.celery_task_id = celery_task_id


def set_task_id(sessions: sessionmaker[Session], job_id: int, celery_task_id: str) -> None:
    with session_scope(sessions) as s:
        _load(s, job_id).celery_task_id = celery_task_id


def update_progress(sessions: sessionmaker[Session], job_id: int, done: int, total: int | None = None,
                    *, phase: JobPhase | None = None) -> None:
    """Record ``done`` (of ``total``) within the job's current phase, entering ``phase`` if given."""
    with session_scope(sessions) as s:
        job = _load(s, job_id)
        job.progress_done = done
        if total is not None:
            job.progress_total = total
        if phase is not None:
            job.phase = phase


def finish_job(sessions: sessionmaker[Session], job_id: int, result: dict[str, Any] | None = None) -> None:
    with session_scope(sessions) as s:
        job = _load(s, job_id)
        job.status = JobStatus.SUCCEEDED
        job.result = result or {}
        job.finished_at = utcnow()
        if job.progress_total and job.progress_done < job.progress_total:
            job.progress_done = job.progress_total


def fail_job(sessions: sessionmaker[Session], job_id: int, error: str, *,
             result: dict[str, Any] | None = None) -> str:
    """Mark the job failed with ``error``, stored as safe text; returns the text stored.

    Messages quote their input (file names, headers), which may be any bytes; one the
    database refused would leave the job running for ever, so it is made safe here, for
    every caller (core/text.py).
    """
    message = safe_text(error)
    with session_scope(sessions) as s:
        job = _load(s, job_id)
        job.status = JobStatus.FAILED
        job.error = message
        if result is not None:
            job.result = result
        job.finished_at = utcnow()
    return message


def get_job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with session_scope(sessions) as s:
        return _load(s, job_id)


def list_jobs(
    sessions: sessionmaker[Session],
    *,
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Job]:
    with session_scope(sessions) as s:
        query = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if status is not None:
            query = query.where(Job.status == status)
        return list(s.scalars(query))


def job_to_dict(job: Job) -> dict[str, Any]:
    """The JSON shape of a job, shared by the API and the CLI."""
    return {
        "id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "progress": {"done": job.progress_done, "total": job.progress_total, "phase": job.phase.value or None},
        "celery_task_id": job.celery_task_id,
        "params": job.params,
        "result": job.result,
        "error": job.error or None,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
