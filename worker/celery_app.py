"""The Celery app: Redis broker and result backend, settings fit for long ML tasks.

Why each setting:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  only when its task ends, and a worker process that dies (SIGKILL, OOM) puts it
  back on the queue, so a killed reindex is retried, not lost. Every task is
  idempotent (the flows check their job's state first), which is what makes
  redelivery safe; a job that killed its worker ``MAX_ATTEMPTS`` times is failed.
- ``worker_prefetch_multiplier=1``: a process reserves one message at a time, so a
  long task never sits on messages another process could run.
- Redis ``visibility_timeout`` longer than the longest hard time limit: Redis would
  otherwise hand a still-running retrain to a second worker.
- Soft and hard time limits per task: the soft one raises inside the task (its
  job is marked failed, the lock released), the hard one kills a stuck process.
- Three queues (embed, index, train): run a dedicated ``-Q train`` worker and a
  training run can never starve embedding.
- ``worker_max_memory_per_child``: a process that grew past the limit is replaced
  after its task (PyTorch and glibc keep freed memory).
- Nothing touches torch or SQL in the parent: the runtime is lazy and is reset in
  each child after the fork, so CUDA is first initialised inside a child.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from celery import Celery
from celery.local import Proxy
from celery.signals import worker_process_init
from kombu import Queue as KombuQueue
from kombu.exceptions import OperationalError

from core.config import Settings
from core.dispatch import DispatchUnavailable
from core.task_names import TASK_QUEUES, Queue, TaskName
from worker.beat import beat_schedule
from worker.runtime import Runtime
from worker.tasks import TASK_LIMITS, register_tasks

log = logging.getLogger(__name__)

VISIBILITY_TIMEOUT_SECONDS = max(hard for _, hard in TASK_LIMITS.values()) + 3600
MAX_MEMORY_PER_CHILD_KIB = 6 * 1024 * 1024
"""Replace a worker process after a task that left it above 6 GiB resident."""


class CeleryTaskSender:
    """TaskDispatcher for code running inside the worker: send by name to the task's queue."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, task: TaskName, **kwargs: Any) -> str:
        task = TaskName(task)
        try:
            result = self.app.send_task(
                task.value, kwargs=kwargs, queue=TASK_QUEUES[task].value,
                retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )
        except OperationalError as exc:
            raise DispatchUnavailable(f"cannot reach the broker to send {task.value}: {exc}") from exc
        return result.id


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend or settings.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 24 * 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_memory_per_child": MAX_MEMORY_PER_CHILD_KIB,
        "task_queues": [KombuQueue(q.value) for q in Queue],
        "task_default_queue": Queue.EMBED.value,
        "task_routes": {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.home.resolve() / "celerybeat-schedule"),
        "timezone": "UTC",
    }


def make_celery(settings: Settings) -> Celery:
    """The worker's Celery app with its tasks registered (nothing is connected yet)."""
    if settings.embedded:
        raise ValueError("no broker configured: set LOOKALIKE_BROKER_URL (e.g. redis://127.0.0.1:6379/0) "
                         "to run a Celery worker; without it tasks run in-process")
    app = Celery("lookalike", set_as_current=False)
    app.conf.update(celery_config(settings))
    runtime = Runtime(settings, CeleryTaskSender(app))
    app.lookalike_runtime = runtime  # type: ignore[attr-defined]
    register_tasks(app, runtime)
    _RUNTIMES.add(runtime)
    # One receiver per process, whatever the number of apps built (dispatch_uid): connecting a
    # closure per call would pile up receivers that keep every app's runtime alive.
    worker_process_init.connect(_reset_runtimes_after_fork, weak=False, dispatch_uid=_AFTER_FORK_UID)
    return app


_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()
"""The runtimes of the apps this process built (held by their apps, not by this set)."""
_AFTER_FORK_UID = "lookalike.worker.reset_runtimes_after_fork"


def _reset_runtimes_after_fork(**_: Any) -> None:
    """In a freshly forked worker child: every runtime forgets its parent's connections."""
    for runtime in list(_RUNTIMES):
        runtime.after_fork()


app = Proxy(lambda: make_celery(Settings.from_env()))
"""For ``celery -A worker.celery_app:app ...``: built from the environment on first use."""
