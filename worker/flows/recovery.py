"""Jobs that outlive their worker: a heartbeat while they run, and a sweep that sends them again.

Celery's ``acks_late`` + ``reject_on_worker_lost`` already return a message when a
worker's *child* dies (OOM, SIGKILL) and the parent lives on. When the whole worker
goes (the machine, the container, ``kill -9`` of the group) nobody is left to
return it: with Redis the unacknowledged message comes back only after the
visibility timeout, which has to be longer than the longest task (hours). So a job
that matters keeps its own proof of life: while its task runs, a thread touches the
job row every ``job_heartbeat_seconds``, and the task's name and arguments are
stored with the job. Beat sends RECOVER_JOBS regularly; a RUNNING job silent for
``orphaned_job_seconds`` is set back to QUEUED and its task sent again. The flows
are idempotent per job (a finished job is not run twice, a reindex retry takes its
own lock back), so the late redelivery of the original message is harmless.

Only tasks that own their job are resumable this way (import, reindex, retrain);
a lost embedding chunk is caught up by the next reindex, which embeds whatever is
missing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobStatus, session_scope
from core.db.types import utcnow
from core.dispatch import DispatchUnavailable, TaskDispatcher
from core.task_names import TaskName
from core.text import encodes_as_utf8, safe_text
from worker.flows.jobstate import TaskRecord, touch_job

log = logging.getLogger(__name__)

RESUMABLE_TASKS = frozenset({TaskName.IMPORT_CATALOG, TaskName.REINDEX, TaskName.RETRAIN, TaskName.SCAN_DUPLICATES})


class UnstorableArguments(ValueError):
    """A task's arguments hold text that a job row cannot store, so the job cannot be recorded."""


def record_task(sessions: sessionmaker[Session], job_id: int, task: TaskName, kwargs: dict[str, Any]) -> None:
    """Store how to run ``job_id`` again (the task's name and JSON arguments).

    Raises :class:`UnstorableArguments`, writing nothing, when an argument holds a lone
    surrogate (a file name with undecodable bytes, read with ``surrogateescape``) or NUL:
    PostgreSQL's JSONB refuses both, SQLite would store them, so the check is made here
    for every backend alike.
    """
    problem = _unstorable(kwargs, "")
    if problem is not None:
        raise UnstorableArguments(f"the {task.value} task cannot be recorded: {problem}")
    with session_scope(sessions) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        job.params = TaskRecord(task, kwargs).into(job.params)


def _unstorable(value: Any, name: str) -> str | None:
    """What in ``value`` (a JSON-like argument) a database cannot store, or None."""
    if isinstance(value, str):
        if encodes_as_utf8(value) and "\x00" not in value:
            return None
        return f"argument {name or 'value'} '{safe_text(value, limit=200)}' is not UTF-8 text without NUL"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        label = f"{name}.{key}" if name else str(key)
        problem = _unstorable(key, label) if isinstance(key, str) else None
        problem = problem or _unstorable(item, label)
        if problem is not None:
            return problem
    return None


@contextmanager
def heartbeat(sessions: sessionmaker[Session], job_id: int, every_seconds: float) -> Iterator[None]:
    """Touch the job every ``every_seconds`` while the block runs (a daemon thread)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_seconds):
            try:
                touch_job(sessions, job_id)
            except Exception:  # a database blip must not kill the job; the next beat retries
                log.warning("heartbeat of job %d failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def recover_orphaned_jobs(sessions: sessionmaker[Session], dispatcher: TaskDispatcher,
                          orphaned_after_seconds: float) -> dict[str, Any]:
    """Send again every RUNNING job whose heartbeat is older than ``orphaned_after_seconds``."""
    if orphaned_after_seconds <= 0:
        return {"skipped": "LOOKALIKE_ORPHANED_JOB_SECONDS is 0"}
    cutoff = utcnow() - timedelta(seconds=orphaned_after_seconds)
    with session_scope(sessions) as s:
        silent = s.execute(
            select(Job.id, Job.updated_at, Job.params)
            .where(Job.status == JobStatus.RUNNING, Job.updated_at < cutoff).order_by(Job.id)
        ).all()
    resent: list[int] = []
    for job_id, seen, params in silent:
        task = TaskRecord.read(params)
        if task is None:
            continue
        # Compare-and-set on updated_at: of two sweeps at once, one wins and sends.
        with session_scope(sessions) as s:
            claimed = s.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.updated_at == seen)
                .values(status=JobStatus.QUEUED, updated_at=utcnow(),
                        error=f"worker lost (no heartbeat since {seen.isoformat(timespec='seconds')}); sent again")
            ).rowcount
        if not claimed:
            continue
        try:
            dispatcher.send(task.name, **task.kwargs)
        except DispatchUnavailable:
            # Back to RUNNING with the old heartbeat: the next sweep tries again.
            with session_scope(sessions) as s:
                s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING, updated_at=seen))
            raise
        log.warning("job %d lost its worker (silent since %s): sent %s again", job_id, seen, task.name.value)
        resent.append(job_id)
    return {"resent": resent}
