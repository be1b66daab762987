"""Helpers of the reindex benches (bench_reindex.py, bench_store.py): one forced reindex, timed."""

from __future__ import annotations

import time

import redis
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import Embedding, JobStatus, session_scope
from core.reindex_requests import submit_reindex
from tests.worker.support import WorkerProcess, wait_for_job
from worker.celery_app import CeleryTaskSender


def timed_reindex(settings: Settings, sessions: sessionmaker[Session], sender: CeleryTaskSender,
                  workers: list[WorkerProcess], timeout: float = 7200) -> dict:
    """Every stored vector deleted, then a forced REINDEX on ``workers``, timed end to end.

    Redis is flushed first (leftover chunk messages of an earlier run would help this one);
    the workers are started before the clock and stopped after. Returns the wall time,
    the job's own stage timings (embed / build / verify / publish) and its self-recall.
    """
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    client.close()
    with session_scope(sessions) as s:
        s.execute(delete(Embedding))
    for w in workers:
        w.launch()  # all at once: each takes seconds to import torch
    try:
        for w in workers:
            w.wait_ready()
        started = time.perf_counter()
        request = submit_reindex(settings, sessions, sender, force=True, reason="bench")
        job = wait_for_job(sessions, request.job_id, timeout=timeout)
        wall = time.perf_counter() - started
    finally:
        for w in workers:
            w.stop()
    assert job.status is JobStatus.SUCCEEDED, job.error
    return {"wall": wall, **job.result["timings"], "recall": job.result["self_recall"]}
