"""Task name -> the function that does the work, shared by Celery and the in-process mode.

Each handler takes the process's :class:`Runtime` and the task's JSON keyword
arguments (the contract in core/task_names.py and docs). Celery tasks (worker/tasks.py)
and the embedded dispatcher (worker/local.py) both call :func:`run_task`, so the
two setups run exactly the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core.artifacts import ArtifactError, open_store
from core.db import JobKind
from core.import_uploads import prune_uploads
from core.jobs import create_job, fail_job
from core.registry import active_index
from core.reindex_requests import submit_reindex
from core.task_names import TaskName
from worker.flows.duplicates import run_duplicate_scan
from worker.flows.embed import embed_chunk, embed_images
from worker.flows.importing import run_import
from worker.flows.model_choice import NoActiveModel, reindex_model
from worker.flows.recovery import (
    RESUMABLE_TASKS,
    UnstorableArguments,
    heartbeat,
    record_task,
    recover_orphaned_jobs,
)
from worker.flows.reindex import catalog_changed_since_active, run_reindex
from worker.flows.retire import retire_old_indexes
from worker.flows.retrain import run_retrain
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def scheduled_reindex(rt: Runtime) -> dict[str, Any]:
    """SCHEDULED_REINDEX (beat): request a reindex only if something changed."""
    try:
        model = reindex_model(rt.sessions)
    except NoActiveModel as exc:
        return {"skipped": str(exc)}
    index = active_index(rt.sessions)
    if index is not None and index.model_id == model.id and not catalog_changed_since_active(rt.sessions):
        return {"skipped": "catalog unchanged since the active index"}
    job_id = submit_reindex(rt.settings, rt.sessions, rt.dispatcher, reason="scheduled").job_id
    return {"job_id": job_id}


def retire(rt: Runtime) -> dict[str, Any]:
    """RETIRE_OLD_INDEXES."""
    return retire_old_indexes(rt.settings, rt.sessions)


def recover_jobs(rt: Runtime) -> dict[str, Any]:
    """RECOVER_JOBS (beat): send again the jobs whose worker died under them, and delete the
    import uploads no job will read again (core/import_uploads.py; normally the import's
    worker already did, unless the store was down then)."""
    result = recover_orphaned_jobs(rt.sessions, rt.dispatcher, rt.settings.orphaned_job_seconds)
    try:
        result["import_uploads_deleted"] = len(prune_uploads(open_store(rt.settings), rt.sessions))
    except ArtifactError as exc:  # the store is down: the next sweep tries again
        log.warning("import uploads not pruned: %s", exc)
    return result


HANDLERS: dict[TaskName, Callable[..., Any]] = {
    TaskName.IMPORT_CATALOG: run_import,
    TaskName.EMBED_IMAGES: embed_images,
    TaskName.EMBED_CHUNK: embed_chunk,
    TaskName.REINDEX: run_reindex,
    TaskName.RETRAIN: run_retrain,
    TaskName.RETIRE_OLD_INDEXES: retire,
    TaskName.SCHEDULED_REINDEX: scheduled_reindex,
    TaskName.RECOVER_JOBS: recover_jobs,
    TaskName.SCAN_DUPLICATES: run_duplicate_scan,
}


def run_task(rt: Runtime, task: TaskName, kwargs: dict[str, Any]) -> Any:
    """Run ``task`` with ``kwargs`` in this process."""
    try:
        handler = HANDLERS[TaskName(task)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown task {task!r}; known: {[t.value for t in TaskName]}") from None
    task = TaskName(task)
    job_id = kwargs.get("job_id")
    if task is TaskName.RETRAIN and job_id is None:
        # Beat sends the weekly retrain without a job: give it one here, so that it is
        # tracked and, like any job, sent again if its worker dies.
        job_id = create_job(rt.sessions, JobKind.RETRAIN, {"reason": kwargs.get("reason", "scheduled"),
                                                          "overrides": list(kwargs.get("overrides") or [])})
        kwargs = {**kwargs, "job_id": job_id}
    if task not in RESUMABLE_TASKS or job_id is None:
        return handler(rt, **kwargs)
    # A job its worker may die under: say how to run it again, and keep it visibly alive.
    try:
        record_task(rt.sessions, job_id, task, kwargs)
    except UnstorableArguments as exc:
        # Nothing could run such a job again, and leaving it queued would be for ever: it ends
        # here, failed with the reason (docs/DECISIONS.md, "Media store and catalog import").
        message = fail_job(rt.sessions, job_id, str(exc))
        return {"error": message}
    with heartbeat(rt.sessions, job_id, rt.settings.job_heartbeat_seconds):
        return handler(rt, **kwargs)
