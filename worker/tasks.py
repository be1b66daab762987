"""Thin Celery wrappers: one task per :class:`TaskName`, each calling its handler.

The work lives in worker/flows (shared with the in-process mode); a task only adds
the queue and its time limits. Task names are the constants in core/task_names.py,
which is all the service knows about the worker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.task_names import TASK_QUEUES, TaskName
from worker.handlers import run_task
from worker.runtime import Runtime

HOUR = 3600
TASK_LIMITS: dict[TaskName, tuple[int, int]] = {
    TaskName.IMPORT_CATALOG: (2 * HOUR, 2 * HOUR + 300),
    TaskName.EMBED_IMAGES: (600, 900),
    TaskName.EMBED_CHUNK: (1200, 1500),
    TaskName.REINDEX: (6 * HOUR, 6 * HOUR + 600),
    TaskName.RETRAIN: (24 * HOUR, 24 * HOUR + 900),
    TaskName.RETIRE_OLD_INDEXES: (900, 1200),
    TaskName.SCHEDULED_REINDEX: (120, 300),
    TaskName.RECOVER_JOBS: (120, 300),
    TaskName.SCAN_DUPLICATES: (2 * HOUR, 2 * HOUR + 300),
}
"""(soft, hard) seconds per task. The soft limit raises inside the task, which marks
its job failed; the hard one kills the process. Generous on purpose: a limit is a
guard against a stuck task, not a performance target."""


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Register every task on ``app``, bound to this process's ``runtime``."""
    for name in TaskName:
        soft, hard = TASK_LIMITS[name]
        _register(app, runtime, name, soft, hard)


def _register(app: Celery, runtime: Runtime, name: TaskName, soft: int, hard: int) -> None:
    def run(**kwargs: Any) -> Any:
        return run_task(runtime, name, kwargs)

    run.__name__ = name.name.lower()
    run.__doc__ = f"Celery task {name.value}: see worker.handlers.HANDLERS."
    app.task(
        name=name.value, queue=TASK_QUEUES[name].value, soft_time_limit=soft, time_limit=hard,
        acks_late=True, reject_on_worker_lost=True, typing=False, shared=False,
    )(run)
