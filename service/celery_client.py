"""Sending jobs to the Celery workers by task name, without importing worker code.

The Celery client is made on first use (not at import, not in ``create_app``) and
shared by the threads of the process. A broker that cannot be reached within a
couple of seconds becomes :class:`core.dispatch.DispatchUnavailable`, which the API
turns into a 503; the caller decides what was already saved.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import celery
from kombu.exceptions import KombuError, OperationalError

from core.config import Settings
from core.dispatch import DispatchUnavailable
from core.task_names import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5}


class CeleryDispatcher:
    """A :class:`core.dispatch.TaskDispatcher` that publishes to the broker."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 2.0) -> None:
        if not settings.broker_url:
            raise ValueError("CeleryDispatcher needs settings.broker_url (embedded mode uses the in-process one)")
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._app: celery.Celery | None = None
        self._lock = threading.Lock()

    def _client(self) -> celery.Celery:
        with self._lock:
            if self._app is None:
                s = self._settings
                # No result backend: job state lives in SQL, and a backend client
                # would retry its own connection for many seconds on every send.
                app = celery.Celery("lookalike-service", broker=s.broker_url, backend=None)
                app.conf.update(
                    broker_connection_timeout=self._connect_timeout,
                    broker_connection_retry_on_startup=False,
                    broker_transport_options={"socket_connect_timeout": self._connect_timeout,
                                              "socket_timeout": self._connect_timeout,
                                              "max_retries": 1},
                    redis_socket_connect_timeout=self._connect_timeout,
                    task_serializer="json",
                    accept_content=["json"],
                )
                self._app = app
            return self._app

    def send(self, task: TaskName, **kwargs: Any) -> str:
        """Queue ``task`` on its queue; DispatchUnavailable if the broker is unreachable."""
        task = TaskName(task)
        try:
            result = self._client().send_task(
                task.value, kwargs=kwargs, queue=TASK_QUEUES[task].value,
                retry=True, retry_policy=_PUBLISH_RETRY,
            )
        except (OperationalError, KombuError, OSError, ConnectionError) as exc:
            log.warning("could not send %s: %s", task.value, exc)
            raise DispatchUnavailable(
                f"the job queue (broker) is unreachable, so {task.name.lower()} could not be queued: {exc}"
            ) from exc
        return str(result.id)

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None
