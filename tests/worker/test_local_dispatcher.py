"""The in-process dispatcher survives a task that raises BaseException (a killed worker's stand-in)."""

from __future__ import annotations

from typing import Any

import pytest

from core.task_names import TaskName
from tests.worker.conftest import Embedded
from worker import local
from worker.runtime import Runtime


def test_a_task_raising_base_exception_leaves_the_queue_usable(embedded: Embedded,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = local.run_task
    calls: list[TaskName] = []

    def interrupted_once(rt: Runtime, task: TaskName, kwargs: dict[str, Any]) -> Any:
        calls.append(task)
        if len(calls) == 1:
            raise KeyboardInterrupt  # what a retry test raises to stop a job mid-flight
        return real(rt, task, kwargs)

    monkeypatch.setattr(local, "run_task", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        embedded.dispatcher.send(TaskName.RETIRE_OLD_INDEXES)
    assert embedded.dispatcher.wait(timeout=5)  # before the fix: the flag stayed set and this hung
    embedded.dispatcher.send(TaskName.RETIRE_OLD_INDEXES)  # the next task runs, in this thread
    assert calls == [TaskName.RETIRE_OLD_INDEXES] * 2 and not embedded.dispatcher.failures
