"""How a job is handed to whoever runs it, without the sender importing the runner.

The service and the CLI talk to a :class:`TaskDispatcher`. With a broker it is a
Celery client that sends tasks *by name* (``service``/``worker`` provide it); in the
embedded setup the top-level CLI wires in the worker's in-process dispatcher, so the
same task code runs without Redis.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.task_names import TaskName


class DispatchUnavailable(RuntimeError):
    """The broker cannot be reached; the caller should answer 503 and lose nothing."""


class TaskDispatcher(Protocol):
    def send(self, task: TaskName, **kwargs: Any) -> str:
        """Queue ``task`` with JSON-serialisable keyword arguments; return a task id."""
        ...
