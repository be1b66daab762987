"""Asking for a reindex: one job at a time, joined by later requests; the in-process runner."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import Job, JobKind, JobStatus, session_scope
from core.db.types import utcnow
from core.dispatch import DispatchUnavailable
from core.jobs import finish_job, get_job, start_job
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from worker.local import InProcessDispatcher


class Recorder:
    """A dispatcher that only remembers what it was asked to send."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[TaskName, dict[str, Any]]] = []
        self.fail = fail
        self._lock = threading.Lock()

    def send(self, task: TaskName, **kwargs: Any) -> str:
        if self.fail:
            raise DispatchUnavailable("broker down")
        with self._lock:
            self.sent.append((task, kwargs))
            return f"t{len(self.sent)}"


def test_a_request_joins_the_open_job_until_it_ends(any_db_settings: Settings, sessions: sessionmaker[Session]) -> None:
    sender = Recorder()
    first = submit_reindex(any_db_settings, sessions, sender, force=True)
    assert not first.joined and sender.sent == [(TaskName.REINDEX, {"job_id": first.job_id, "force": True})]
    assert get_job(sessions, first.job_id).celery_task_id == "t1"
    queued = submit_reindex(any_db_settings, sessions, sender)
    start_job(sessions, first.job_id)
    running = submit_reindex(any_db_settings, sessions, sender)
    assert (queued.job_id, queued.joined, running.job_id, running.joined) == (first.job_id, True, first.job_id, True)
    assert len(sender.sent) == 1
    finish_job(sessions, first.job_id)
    after = submit_reindex(any_db_settings, sessions, sender)
    assert after.job_id != first.job_id and not after.joined and len(sender.sent) == 2


def test_concurrent_requests_create_one_job(any_db_settings: Settings, sessions: sessionmaker[Session]) -> None:
    sender = Recorder()
    barrier = threading.Barrier(6)
    ids: list[int] = []

    def ask() -> None:
        barrier.wait()
        ids.append(submit_reindex(any_db_settings, sessions, sender).job_id)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 6 and len(sender.sent) == 1


def test_a_job_without_a_sign_of_life_is_given_up(any_db_settings: Settings, sessions: sessionmaker[Session]) -> None:
    sender = Recorder()
    old = submit_reindex(any_db_settings, sessions, sender).job_id
    start_job(sessions, old)
    silent = dt.timedelta(seconds=any_db_settings.orphaned_job_seconds)  # the setting recovery uses too
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == old).values(updated_at=utcnow() - silent + dt.timedelta(seconds=5)))
    assert submit_reindex(any_db_settings, sessions, sender).job_id == old  # still alive: joined
    with session_scope(sessions) as s:
        s.execute(update(Job).where(Job.id == old).values(updated_at=utcnow() - silent - dt.timedelta(seconds=1)))
    never = any_db_settings.replace(orphaned_job_seconds=0)  # recovery off: nothing is presumed lost
    assert submit_reindex(never, sessions, sender).job_id == old
    new = submit_reindex(any_db_settings, sessions, sender)
    assert new.job_id != old and not new.joined
    abandoned = get_job(sessions, old)
    assert abandoned.status is JobStatus.FAILED and abandoned.error.startswith("abandoned: no sign of life")


def test_an_unreachable_broker_fails_the_new_job(any_db_settings: Settings, sessions: sessionmaker[Session]) -> None:
    with pytest.raises(DispatchUnavailable):
        submit_reindex(any_db_settings, sessions, Recorder(fail=True))
    with session_scope(sessions) as s:
        job = s.query(Job).filter(Job.kind == JobKind.REINDEX).one()
        assert job.status is JobStatus.FAILED and "broker down" in job.error
    assert not submit_reindex(any_db_settings, sessions, Recorder()).joined  # it blocks nothing


def test_the_in_process_runner_checks_kwargs_like_a_broker_and_can_run_in_the_background(
    any_db_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    runner = InProcessDispatcher(any_db_settings, background=True)
    with pytest.raises(TypeError, match="not JSON serializable"):
        runner.send(TaskName.REINDEX, job_id=object())
    job_id = submit_reindex(any_db_settings, sessions, runner).job_id
    assert runner.wait(timeout=60)
    job = get_job(sessions, job_id)
    assert job.status is JobStatus.FAILED and job.error.startswith("no model yet")
    runner.close()
