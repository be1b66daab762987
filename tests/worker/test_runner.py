"""The job-flow runner (worker/flows/runner.py): one life cycle for import, reindex and retrain."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobKind, JobStatus, session_scope
from core.jobs import create_job, get_job
from worker.flows.failures import FlowError
from worker.flows.runner import MAX_ATTEMPTS, run_job_flow
from worker.lock import LockBusy


class Calls:
    """A body that records what it saw and does what it is told."""

    def __init__(self, sessions: sessionmaker[Session], outcome: dict[str, Any] | Exception) -> None:
        self.sessions, self.outcome, self.seen = sessions, outcome, []

    def __call__(self, job: Job, guarded: object) -> dict[str, Any]:
        now = get_job(self.sessions, job.id)
        self.seen.append((job.result, guarded, now.status, now.attempts))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _job(sessions: sessionmaker[Session], *, attempts: int = 0, result: dict[str, Any] | None = None,
         status: JobStatus = JobStatus.QUEUED) -> int:
    job_id = create_job(sessions, JobKind.REINDEX)
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        job.attempts, job.result, job.status = attempts, result or {}, status
    return job_id


def test_a_body_runs_once_as_a_started_attempt_and_its_result_finishes_the_job(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions, attempts=1, result={"step": "done before"})
    body = Calls(sessions, {"answer": 42})
    assert run_job_flow(sessions, job_id, body) == {"answer": 42}
    assert body.seen == [({"step": "done before"}, None, JobStatus.RUNNING, 2)]
    job = get_job(sessions, job_id)
    assert (job.status, job.result, job.error, job.attempts) == (JobStatus.SUCCEEDED, {"answer": 42}, "", 2)
    # A redelivered message for the finished job returns its result and runs nothing.
    assert run_job_flow(sessions, job_id, body) == {"answer": 42}
    assert len(body.seen) == 1 and get_job(sessions, job_id).attempts == 2


def test_a_job_that_used_up_its_attempts_fails_without_running(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions, attempts=MAX_ATTEMPTS, status=JobStatus.RUNNING, result={"kept": True})
    body = Calls(sessions, {})
    error = f"gave up after {MAX_ATTEMPTS} attempts (the worker died each time)"
    assert run_job_flow(sessions, job_id, body) == {"error": error}
    job = get_job(sessions, job_id)
    assert (body.seen, job.status, job.error, job.result) == ([], JobStatus.FAILED, error, {"kept": True})


@pytest.mark.parametrize("exc", [FlowError("no model yet"), LockBusy("no model yet"), KeyError("no model yet")])
def test_an_expected_error_fails_the_job_with_its_message(sessions: sessionmaker[Session], exc: Exception) -> None:
    job_id = _job(sessions)
    # KeyError stands for a flow's own expected error (import names CatalogFormatError).
    assert run_job_flow(sessions, job_id, Calls(sessions, exc), expected=(KeyError,)) == {"error": str(exc)}
    job = get_job(sessions, job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, str(exc))


def test_any_other_error_fails_the_job_with_its_type_and_is_raised(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions)
    with pytest.raises(ZeroDivisionError):
        run_job_flow(sessions, job_id, Calls(sessions, ZeroDivisionError("range() arg 3 must not be zero")))
    job = get_job(sessions, job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, "ZeroDivisionError: range() arg 3 must not be zero")


def test_an_error_quoting_undecodable_bytes_is_stored_as_safe_text(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions)
    bad = b"row \xff\x00".decode("utf-8", "surrogateescape")
    assert run_job_flow(sessions, job_id, Calls(sessions, FlowError(bad))) == {"error": "row \\xff\\x00"}
    assert get_job(sessions, job_id).error == "row \\xff\\x00"


def test_the_job_starts_only_inside_its_guard(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions)
    states = []

    @contextmanager
    def guard() -> Iterator[str]:
        states.append(get_job(sessions, job_id).status)  # waiting for the guard: still queued
        yield "held"
        states.append(get_job(sessions, job_id).status)

    body = Calls(sessions, {"ok": True})
    assert run_job_flow(sessions, job_id, body, guard=guard) == {"ok": True}
    assert states == [JobStatus.QUEUED, JobStatus.RUNNING] and body.seen[0][1] == "held"


def test_a_guard_that_cannot_be_had_fails_the_job_unstarted(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions)

    @contextmanager
    def busy() -> Iterator[None]:
        raise LockBusy("another reindex holds the lock")
        yield

    body = Calls(sessions, {})
    assert run_job_flow(sessions, job_id, body, guard=busy) == {"error": "another reindex holds the lock"}
    job = get_job(sessions, job_id)
    assert (body.seen, job.status, job.attempts) == ([], JobStatus.FAILED, 0)
