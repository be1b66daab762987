"""Small job-row updates the flows share (core/jobs.py has the life cycle)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, session_scope
from core.db.types import utcnow


def merge_result(sessions: sessionmaker[Session], job_id: int, **values: Any) -> dict[str, Any]:
    """Add keys to a job's result (what a retry reads to skip finished steps)."""
    with session_scope(sessions) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        job.result = {**job.result, **values}
        return dict(job.result)


def touch_job(sessions: sessionmaker[Session], job_id: int) -> None:
    """A sign of life: keeps later reindex requests joining this job rather than giving up on it."""
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow()))
