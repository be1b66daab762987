"""The life cycle of a job-owning flow, written once: the flows keep only their bodies.

IMPORT_CATALOG, REINDEX and RETRAIN each own a job row, and the same job may be run
more than once: Celery redelivers the message of a worker child that died, and
RECOVER_JOBS sends again a job whose whole worker went (worker/flows/recovery.py;
docs/OPERATIONS.md, "What happens when something fails"). :func:`run_job_flow` makes every run of a job do the
same thing, in this order:

1. **Already finished** (succeeded or failed): return its result, run nothing.
2. **Too many attempts**: a job started :data:`MAX_ATTEMPTS` times already killed its
   worker each time; it is failed with that reason instead of being run again.
3. **Guard, then start**: enter the flow's guard if it has one (REINDEX: the reindex
   lock), then mark the job running, which counts the attempt. A job waiting for its
   guard stays queued; a guard that cannot be had (``LockBusy``) fails the job.
4. **Body**: the flow's own steps; it returns the job's result.
5. **Error ladder**: an *expected* error (:class:`~worker.flows.failures.FlowError`, a busy
   lock, a registry miss, or one the flow names) is an answer for the user: the job
   fails with its message and the run returns ``{"error": message}``. Any other
   exception is a bug: the job fails with its type and message, and it is raised again
   so that Celery (or the in-process dispatcher) logs the traceback.
6. **Finish**: the job succeeds with the body's result.

A failed job keeps the result its body saved on the way (jobstate.save_state), so a
retrain that failed after training still shows its metrics. Error messages are stored
as :func:`~core.text.safe_text`: they may quote arbitrary input, and a message
the database refused would leave the job running for ever.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from core.db import Job
from core.jobs import fail_job, finish_job, get_job, start_job
from core.registry import RegistryError
from core.text import safe_text
from worker.flows.failures import FlowError
from worker.lock import LockBusy

MAX_ATTEMPTS = 3
"""A job whose worker died this many times is failed rather than retried again."""

EXPECTED_ERRORS: tuple[type[Exception], ...] = (FlowError, LockBusy, RegistryError)
"""Failures every flow records as its job's error without a traceback (worker/flows/failures.py)."""

Guarded = TypeVar("Guarded")

Body = Callable[[Job, Guarded], dict[str, Any]]
"""A flow's steps: called with the job row as read before this attempt (its ``result`` is
what earlier attempts saved) and what the guard yielded (None without a guard)."""


def run_job_flow(
    sessions: sessionmaker[Session],
    job_id: int,
    body: Body[Guarded],
    *,
    guard: Callable[[], AbstractContextManager[Guarded]] = nullcontext,  # type: ignore[assignment]
    expected: tuple[type[Exception], ...] = (),
) -> dict[str, Any]:
    """Run ``body`` as job ``job_id``'s attempt, with the life cycle in the module docstring.

    ``guard`` makes the context entered before the job starts and held until the body
    returns; ``expected`` adds the flow's own expected errors to :data:`EXPECTED_ERRORS`.
    Returns the job's result, or ``{"error": message}`` when it failed as expected.
    """
    job = get_job(sessions, job_id)
    if job.status.finished:
        return job.result  # a redelivered message for a job already settled
    if job.attempts >= MAX_ATTEMPTS:
        error = f"gave up after {job.attempts} attempts (the worker died each time)"
        fail_job(sessions, job_id, error)
        return {"error": error}
    try:
        with guard() as guarded:
            start_job(sessions, job_id)
            result = body(job, guarded)
    except (*EXPECTED_ERRORS, *expected) as exc:
        message = safe_text(exc)
        fail_job(sessions, job_id, message)
        return {"error": message}
    except Exception as exc:
        fail_job(sessions, job_id, safe_text(f"{type(exc).__name__}: {exc}"))
        raise
    finish_job(sessions, job_id, result)
    return result
