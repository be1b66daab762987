"""The Celery beat schedule, from settings.

``LOOKALIKE_REINDEX_CRON`` (default ``0 3 * * *``, nightly at 03:00) sends
SCHEDULED_REINDEX, which requests a reindex only if the catalog changed since the
active index was built (or the active model has no index yet).
``LOOKALIKE_RETRAIN_CRON`` (default ``0 4 * * 0``, Sundays at 04:00) sends
RETRAIN, which trains, evaluates and promotes only a better model. Both are
standard five-field cron expressions in the worker's time zone (UTC); an empty
value disables the entry.
Every ``LOOKALIKE_ORPHANED_JOB_SECONDS / 2`` it sends RECOVER_JOBS, which sends
again the jobs whose worker died under them (worker/flows/recovery.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from core.config import Settings
from core.task_names import TASK_QUEUES, TaskName

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


def parse_cron(expression: str, *, setting: str) -> crontab:
    """A ``crontab`` from "m h dom mon dow"; a malformed value names its setting."""
    parts = expression.split()
    if len(parts) != len(CRON_FIELDS):
        raise ValueError(f"{setting}={expression!r}: expected 5 cron fields "
                         "'minute hour day-of-month month day-of-week', e.g. '0 3 * * *'")
    try:
        schedule = crontab(**dict(zip(CRON_FIELDS, parts, strict=True)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{setting}={expression!r}: {exc}") from exc
    return schedule


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for these settings."""
    entries = {
        "scheduled-reindex": (settings.reindex_cron, "LOOKALIKE_REINDEX_CRON", TaskName.SCHEDULED_REINDEX),
        "scheduled-retrain": (settings.retrain_cron, "LOOKALIKE_RETRAIN_CRON", TaskName.RETRAIN),
    }
    schedule: dict[str, dict[str, Any]] = {}
    for name, (expression, setting, task) in entries.items():
        if not expression.strip():
            continue
        schedule[name] = {
            "task": task.value,
            "schedule": parse_cron(expression, setting=setting),
            "kwargs": {"reason": "scheduled"} if task is TaskName.RETRAIN else {},
            "options": {"queue": TASK_QUEUES[task].value},
        }
    if settings.orphaned_job_seconds > 0:
        # Twice per timeout: a lost job waits at most 1.5 timeouts to be sent again.
        schedule["recover-orphaned-jobs"] = {
            "task": TaskName.RECOVER_JOBS.value,
            "schedule": timedelta(seconds=settings.orphaned_job_seconds / 2),
            "kwargs": {},
            "options": {"queue": TASK_QUEUES[TaskName.RECOVER_JOBS].value, "expires": settings.orphaned_job_seconds},
        }
    return schedule
