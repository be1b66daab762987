"""SCAN_DUPLICATES: the near-duplicate scan as a job, in-process (SQLite and PostgreSQL) and on a real
Celery worker; its full report is the job's result, and the latest scan is what gets served."""

from __future__ import annotations

import pytest

from core import duplicate_scans
from core.db import JobKind, JobPhase, JobStatus
from core.duplicate_scans import latest_scan, scan_answer
from core.duplicates import find_duplicates_with, report_to_dict
from core.jobs import create_job, get_job
from core.registry import active_index
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from tests.worker.conftest import CeleryStack, Embedded
from tests.worker.support import import_fmnist, register_tiny_model, wait_for_job, wait_until

N_ITEMS = 40


def _indexed(env: Embedded | CeleryStack, n: int) -> None:
    register_tiny_model(env.settings, env.sessions)
    env.dispatcher.send(TaskName.EMBED_IMAGES, image_ids=import_fmnist(env.settings, env.sessions, n))


def _scan(env: Embedded | CeleryStack, **params: float | None) -> int:
    job_id = create_job(env.sessions, JobKind.DUPLICATES, dict(params))
    env.dispatcher.send(TaskName.SCAN_DUPLICATES, job_id=job_id, **params)
    return job_id


def test_a_scan_job_stores_the_full_report_and_is_served(embedded: Embedded) -> None:
    env = embedded
    _indexed(env, N_ITEMS)
    job = get_job(env.sessions, _scan(env, min_similarity=-1.0))  # every candidate: some groups for sure
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.phase is JobPhase.VERIFYING and job.progress_done == job.progress_total
    expected = report_to_dict(find_duplicates_with(env.settings, env.sessions, min_similarity=-1.0))
    assert job.result["groups"] and job.result == {**expected, "signatures_computed": N_ITEMS}
    assert job.result["images"] == N_ITEMS
    served = scan_answer(env.sessions, latest_scan(env.sessions), limit=1)
    assert len(served["groups"]) == 1 and served["group_count"] == len(expected["groups"])
    assert served["scan"]["job_id"] == job.id and not served["scan"]["stale"]

    # a redelivered message for the settled job runs nothing and returns its result
    env.dispatcher.send(TaskName.SCAN_DUPLICATES, job_id=job.id)
    assert get_job(env.sessions, job.id).attempts == 1 and not env.dispatcher.failures

    # a newer index: the old scan is still served, flagged stale
    scanned = job.result["index_version"]
    submit_reindex(env.settings, env.sessions, env.dispatcher, force=True)
    assert active_index(env.sessions).version != scanned
    stale = scan_answer(env.sessions, latest_scan(env.sessions))
    assert stale["scan"]["stale"] and stale["scan"]["index_version"] == scanned


def test_a_scan_without_an_index_fails_with_the_reason(embedded: Embedded) -> None:
    job = get_job(embedded.sessions, _scan(embedded))
    assert job.status is JobStatus.FAILED and "no index is published" in job.error


def test_a_report_too_large_to_store_fails_the_job_saying_so(embedded: Embedded,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _indexed(embedded, N_ITEMS)
    pairs = sum(len(g.pairs) for g in find_duplicates_with(embedded.settings, embedded.sessions,
                                                           min_similarity=-1.0).groups)
    monkeypatch.setattr(duplicate_scans, "MAX_STORED_PAIRS", pairs - 1)  # the bound, just below this report
    job = get_job(embedded.sessions, _scan(embedded, min_similarity=-1.0))
    assert job.status is JobStatus.FAILED
    assert f"verified {pairs} pairs" in job.error and "raise min_similarity" in job.error
    with pytest.raises(duplicate_scans.NoScanYet):
        latest_scan(embedded.sessions)
    job = get_job(embedded.sessions, _scan(embedded))  # at the default bar it fits
    assert job.status is JobStatus.SUCCEEDED and latest_scan(embedded.sessions).id == job.id


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_a_scan_on_a_celery_worker(celery_stack: CeleryStack) -> None:
    stack = celery_stack
    _indexed(stack, N_ITEMS)
    wait_until(lambda: active_index(stack.sessions), 90, what="first index")
    job = wait_for_job(stack.sessions, _scan(stack, threshold=0.0), timeout=90)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.result["groups"] == [] and job.result["threshold"] == 0 and not job.result["calibrated"]
    assert latest_scan(stack.sessions).id == job.id and job.attempts == 1
