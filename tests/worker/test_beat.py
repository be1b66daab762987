"""The beat schedule comes from settings; bad cron values say which setting is wrong."""

from __future__ import annotations

import pytest

from core.config import Settings
from core.task_names import TaskName
from worker.beat import beat_schedule, parse_cron


def test_default_schedule_reindexes_nightly_and_retrains_weekly() -> None:
    schedule = beat_schedule(Settings())
    assert {e["task"] for e in schedule.values()} == {TaskName.SCHEDULED_REINDEX.value, TaskName.RETRAIN.value,
                                                      TaskName.RECOVER_JOBS.value}
    nightly = schedule["scheduled-reindex"]
    assert nightly["options"] == {"queue": "index"}
    assert schedule["scheduled-retrain"]["options"] == {"queue": "train"}
    cron = nightly["schedule"]
    assert cron.hour == {3} and cron.minute == {0} and len(cron.day_of_week) == 7
    weekly = schedule["scheduled-retrain"]["schedule"]
    assert (weekly.day_of_week, weekly.hour, weekly.minute) == ({0}, {4}, {0})  # Sundays 04:00
    assert schedule["scheduled-retrain"]["kwargs"] == {"reason": "scheduled"}


def test_an_empty_expression_disables_its_entry() -> None:
    assert list(beat_schedule(Settings(retrain_cron="", orphaned_job_seconds=0))) == ["scheduled-reindex"]
    assert beat_schedule(Settings(retrain_cron=" ", reindex_cron="", orphaned_job_seconds=0)) == {}


def test_lost_jobs_are_looked_for_twice_per_orphan_timeout() -> None:
    entry = beat_schedule(Settings(orphaned_job_seconds=90))["recover-orphaned-jobs"]
    assert entry["task"] == TaskName.RECOVER_JOBS.value
    assert entry["schedule"].total_seconds() == 45
    assert entry["options"] == {"queue": "embed", "expires": 90}


@pytest.mark.parametrize("expression", ["0 3 * *", "0 25 * * *", "x 3 * * *"])
def test_a_bad_expression_names_its_setting(expression: str) -> None:
    with pytest.raises(ValueError, match="LOOKALIKE_REINDEX_CRON"):
        beat_schedule(Settings(reindex_cron=expression))
    with pytest.raises(ValueError, match="cron"):
        parse_cron(expression, setting="cron")
