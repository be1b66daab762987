"""Reindex: embed what is missing -> build a new version -> verify -> publish -> retire.

Runs under the reindex lock, owned by the job, so one build runs at a time and a
retry of the same job (its worker was SIGKILLed) takes the lock straight back. The
served index changes only in publish's single transaction; a build that dies
before it leaves the active index untouched, a BUILDING row that the next run
marks FAILED, and at most a hidden temp directory that retire cleans up.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import IndexVersion, Item, ItemImage, Job, JobPhase, ModelVersion, session_scope
from core.embeddings_store import snapshot_vectors
from core.index.manifest import IDS_FILE
from core.jobs import update_progress
from core.publish import publish_index
from core.registry import active_index
from worker.flows.catchup import embed_missing
from worker.flows.failures import FlowError
from worker.flows.index_build import build_version, fail_interrupted_builds, retire_unpublished_builds
from worker.flows.jobstate import touch_job
from worker.flows.model_choice import reindex_model
from worker.flows.retire import retire_old_indexes
from worker.flows.runner import run_job_flow
from worker.lock import HeldLock, holding, reindex_lock
from worker.runtime import Runtime

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 120.0


class ReindexError(FlowError):
    pass


def run_reindex(rt: Runtime, job_id: int, force: bool = False, model_version: str | None = None) -> dict[str, Any]:
    """REINDEX: the whole flow for one job; safe to run again for the same job (worker/flows/runner.py)."""
    def guard() -> AbstractContextManager[HeldLock]:  # the job starts only once the lock is held
        return holding(reindex_lock(rt.settings, owner=f"job-{job_id}"), wait_seconds=LOCK_WAIT_SECONDS,
                       on_beat=lambda: touch_job(rt.sessions, job_id))

    def body(_job: Job, held: HeldLock) -> dict[str, Any]:
        return reindex_locked(rt, job_id, force=force, model_version=model_version, lock_lost=lambda: held.lost)

    return run_job_flow(rt.sessions, job_id, body, guard=guard)


def reindex_locked(rt: Runtime, job_id: int | None, *, force: bool, model_version: str | None,
                   lock_lost: Any = lambda: False) -> dict[str, Any]:
    """The steps, for a caller that holds the reindex lock (REINDEX, or RETRAIN's promotion)."""
    settings, sessions = rt.settings, rt.sessions
    model = reindex_model(sessions, model_version)
    fail_interrupted_builds(sessions)
    retire_unpublished_builds(sessions)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    def enter(phase: JobPhase, done: int = 0, total: int | None = 1) -> None:
        if job_id is not None:
            update_progress(sessions, job_id, done, total, phase=phase)

    enter(JobPhase.EMBEDDING, 0, None)
    progress = (lambda done, total: update_progress(sessions, job_id, done, total)) if job_id else None
    catchup = embed_missing(rt, model, progress)
    with session_scope(sessions) as s:
        snapshot = snapshot_vectors(s, model.id)
    timings["embed"] = time.perf_counter() - started
    result: dict[str, Any] = {"model_version": model.version, "embedded": catchup.embedded_here,
                              "missing": catchup.missing, "unembeddable": len(catchup.failed)}
    if not len(snapshot.image_ids):
        raise ReindexError("nothing to index: no active image has a vector for model "
                           f"{model.version} (import a catalog first)")
    current = active_index(sessions)
    if not force and current is not None and _up_to_date(current, model, snapshot):
        log.info("index %s is up to date; nothing to build", current.version)
        return {**result, "skipped": "up to date", "index_version": current.version}

    enter(JobPhase.BUILDING)  # one Annoy build call: 0 of 1, then the next phase
    built = build_version(settings, sessions, model, snapshot,
                          on_verify=lambda: enter(JobPhase.VERIFYING))
    timings["build"], timings["verify"] = built.build_seconds, built.verify_seconds
    if lock_lost():
        raise ReindexError(f"lost the reindex lock while building {built.version}; not publishing it")
    enter(JobPhase.PUBLISHING)
    started = time.perf_counter()
    publish_index(settings, sessions, built.version)
    timings["publish"] = time.perf_counter() - started
    retire_old_indexes(settings, sessions)
    return {**result, "index_version": built.version, "image_count": built.image_count,
            "item_count": built.item_count, "self_recall": built.self_recall,
            "timings": {k: round(v, 3) for k, v in timings.items()}}


def _up_to_date(current: IndexVersion, model: ModelVersion, snapshot: Any) -> bool:
    """The active index holds exactly these images' current vectors of this model."""
    if current.model_id != model.id:
        return False
    try:
        indexed = np.load(f"{current.path}/{IDS_FILE}")
    except OSError:
        return False
    newest = current.max_embedding_created_at
    return (np.array_equal(np.sort(indexed), snapshot.image_ids)
            and (snapshot.max_created_at is None or newest is None or snapshot.max_created_at <= newest))


def catalog_changed_since_active(sessions: sessionmaker[Session]) -> bool:
    """Whether items or images changed after the active index was built (or there is none)."""
    current = active_index(sessions)
    if current is None:
        return True
    with session_scope(sessions) as s:
        newest = max(
            (t for t in (s.scalar(select(Item.updated_at).order_by(Item.updated_at.desc()).limit(1)),
                         s.scalar(select(ItemImage.updated_at).order_by(ItemImage.updated_at.desc()).limit(1)))
             if t is not None),
            default=None,
        )
    return newest is not None and newest > current.created_at
