"""The embedded mode: a TaskDispatcher that runs the worker's task functions in-process.

With no broker configured (``make demo``), the CLI and the API hand their tasks
to this dispatcher instead of Redis. It behaves like one worker process with one
queue: tasks run one at a time, in the order they were sent, and a task sent
*by* a running task (EMBED_IMAGES sending its chunks) waits for its turn instead
of running nested. ``background=False`` (the CLI) runs the queue in the calling
thread before ``send`` returns; ``background=True`` (the API) runs it in one
daemon thread, so a request returns its job id at once.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import deque
from typing import Any

from core.config import Settings
from core.task_names import TaskName
from worker.handlers import run_task
from worker.runtime import Runtime

log = logging.getLogger(__name__)


class InProcessDispatcher:
    """Runs tasks with the same code as the Celery worker, without a broker."""

    def __init__(self, settings: Settings, *, background: bool = False) -> None:
        self.runtime = Runtime(settings, self)
        self.background = background
        self._queue: deque[tuple[str, TaskName, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._draining = False
        self.failures: list[tuple[TaskName, str]] = []
        """Tasks that raised (their job rows say why too); kept for the CLI and tests."""

    def send(self, task: TaskName, **kwargs: Any) -> str:
        """Queue ``task``; the kwargs must survive JSON, exactly as with a broker."""
        task = TaskName(task)
        kwargs = json.loads(json.dumps(kwargs))
        task_id = f"local-{uuid.uuid4()}"
        with self._lock:
            self._queue.append((task_id, task, kwargs))
            if self._draining:
                return task_id
            self._draining = True
        if self.background:
            threading.Thread(target=self._drain, name="lookalike-local-worker", daemon=True).start()
        else:
            self._drain()
        return task_id

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        return
                    task_id, task, kwargs = self._queue.popleft()
                try:
                    run_task(self.runtime, task, kwargs)
                except Exception as exc:  # the job row records it; one task must not stop the queue
                    log.exception("task %s (%s) failed", task.value, task_id)
                    self.failures.append((task, f"{type(exc).__name__}: {exc}"))
        finally:
            # also when a task raises BaseException (KeyboardInterrupt, a test's stand-in for a
            # killed worker): it propagates, but wait() and close() must not hang on the flag.
            # Tasks still queued stay queued; the next send() drains them.
            with self._lock:
                self._draining = False
                self._idle.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queue is empty; False if ``timeout`` passed first."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._draining, timeout)

    def close(self) -> None:
        self.wait()
        self.runtime.close()
