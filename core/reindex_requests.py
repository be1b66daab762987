"""Asking for a reindex: join the one already under way, or queue a new one.

Rebuilding the index twice at the same time only wastes an hour of CPU, so a
request first looks for an open REINDEX job (queued, or running with a recent
heartbeat) and returns *its* id. The look-and-create runs under a database-wide
mutex so that two API processes asking at the same instant still get one job.
The service, the CLI, beat and the embed flow all come through here; it needs only
core and a :class:`~core.dispatch.TaskDispatcher`, so the service can use it
without importing the worker.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import Job, JobKind, JobStatus, session_scope
from core.db.backend import Backend, backend_of
from core.db.types import utcnow
from core.dispatch import DispatchUnavailable, TaskDispatcher
from core.jobs import fail_job, set_task_id
from core.task_names import TaskName

log = logging.getLogger(__name__)

_ADVISORY_KEY = 0x100C_A11E
"""PostgreSQL advisory-lock key that serialises reindex requests."""


@dataclass(frozen=True)
class ReindexRequest:
    job_id: int
    joined: bool
    """True when an open job was found and returned instead of queueing another."""


def _serialize(s: Session) -> None:
    """Block concurrent requests until this transaction ends (one look-and-create at a time)."""
    if backend_of(s) is Backend.POSTGRESQL:
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
    else:
        # A write statement, even one that touches no row, takes SQLite's write lock
        # for the rest of the transaction; a second writer waits for our commit.
        s.execute(text("UPDATE jobs SET id = id WHERE 0"))


def open_reindex_job(s: Session, lost_after_seconds: float) -> Job | None:
    """The queued or running REINDEX job, if any; lost ones are marked failed on the way.

    A job is presumed lost when its row has not been touched for ``lost_after_seconds``
    (``orphaned_job_seconds``, the one notion of a dead job: a running job's heartbeat and a
    queued one's lock wait both touch it far more often); 0 never presumes a job lost.
    """
    candidates = s.scalars(
        select(Job).where(Job.kind == JobKind.REINDEX,
                          Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .order_by(Job.id)
    ).all()
    cutoff = utcnow() - dt.timedelta(seconds=lost_after_seconds) if lost_after_seconds > 0 else None
    for job in candidates:
        if cutoff is None or job.updated_at >= cutoff:
            return job
        s.execute(
            update(Job).where(Job.id == job.id).values(
                status=JobStatus.FAILED, finished_at=utcnow(),
                error=f"abandoned: no sign of life since {job.updated_at.isoformat()}",
            )
        )
    return None


def submit_reindex(
    settings: Settings,
    sessions: sessionmaker[Session],
    dispatcher: TaskDispatcher,
    *,
    force: bool = False,
    reason: str = "requested",
) -> ReindexRequest:
    """Join the open reindex job or create and send a new one.

    A broker that cannot be reached fails the new job (so it does not block later
    requests) and re-raises :class:`DispatchUnavailable` for the caller to report.
    """
    with session_scope(sessions) as s:
        _serialize(s)
        existing = open_reindex_job(s, settings.orphaned_job_seconds)
        if existing is not None:
            log.info("reindex requested (%s): joining job %d", reason, existing.id)
            return ReindexRequest(job_id=existing.id, joined=True)
        params: dict[str, Any] = {"force": force, "reason": reason}
        job = Job(kind=JobKind.REINDEX, status=JobStatus.QUEUED, params=params)
        s.add(job)
        s.flush()
        job_id = job.id
    try:
        task_id = dispatcher.send(TaskName.REINDEX, job_id=job_id, force=force)
    except DispatchUnavailable as exc:
        fail_job(sessions, job_id, f"could not queue the reindex: {exc}")
        raise
    if task_id:
        set_task_id(sessions, job_id, task_id)
    log.info("reindex requested (%s): queued job %d", reason, job_id)
    return ReindexRequest(job_id=job_id, joined=False)
