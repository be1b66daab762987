"""Near-duplicate scans as jobs: the latest succeeded scan is what the API and the UI serve.

A scan of the whole catalog takes minutes (11 at 70k images on 2 cores,
docs/BENCHMARKS.md), far past a request's timeout, so it runs as a DUPLICATES job
(``POST /api/v1/duplicates/scans``, worker/flows/duplicates.py) or in the CLI
(``lookalike catalog duplicates --save``), and its report is stored as that job's
result: the full groups, never truncated (docs/DECISIONS.md, "Near-duplicate scans as
jobs"). ``GET /api/v1/duplicates`` and the UI page read the newest succeeded one and
say which index version it scanned and whether that is still the active one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import Job, JobKind, JobStatus, session_scope
from core.duplicates import DuplicateReport, report_to_dict
from core.jobs import create_job, finish_job, list_jobs, start_job
from core.registry import active_index_row

HOW_TO_SCAN = ("start one with POST /api/v1/duplicates/scans (a write key), the button on the /duplicates page, "
               "or `lookalike catalog duplicates --save`")


MAX_STORED_PAIRS = 100_000
"""Most verified pairs a stored scan may hold (~10 MB of JSON in the job row). At the default bar
a 70k catalog has under 2,000 (docs/BENCHMARKS.md); only a bar of about -1 (the embedding alone:
1.96M pairs at 70k) passes it, and such a scan is refused rather than stored truncated."""


class NoScanYet(LookupError):
    """No near-duplicate scan has succeeded yet."""


class ReportTooLarge(ValueError):
    """A report with more pairs than :data:`MAX_STORED_PAIRS`: not stored (it would not be served whole)."""


def storable_report(report: DuplicateReport) -> dict[str, Any]:
    """The report's JSON form, to be a job's result; raises :class:`ReportTooLarge`."""
    pairs = sum(len(g.pairs) for g in report.groups)
    if pairs > MAX_STORED_PAIRS:
        raise ReportTooLarge(
            f"the scan verified {pairs} pairs, more than the {MAX_STORED_PAIRS} a stored scan holds: "
            "raise min_similarity (the embedding alone, -1, joins nearly everything) or lower threshold; "
            "`lookalike catalog duplicates --json` prints any size")
    return report_to_dict(report)


def save_scan(sessions: sessionmaker[Session], report: DuplicateReport, params: dict[str, Any]) -> int:
    """Record a scan run outside the worker (the CLI) as a succeeded DUPLICATES job; returns its id.

    Raises :class:`ReportTooLarge` (nothing recorded) for a report too large to store."""
    result = storable_report(report)
    job_id = create_job(sessions, JobKind.DUPLICATES, {**params, "reason": "cli"})
    start_job(sessions, job_id)
    finish_job(sessions, job_id, result)
    return job_id


def latest_scan(sessions: sessionmaker[Session]) -> Job:
    """The newest succeeded scan; raises :class:`NoScanYet`."""
    found = list_jobs(sessions, kind=JobKind.DUPLICATES, status=JobStatus.SUCCEEDED, limit=1)
    if not found:
        raise NoScanYet(f"no near-duplicate scan has run yet: {HOW_TO_SCAN}")
    return found[0]


def active_version(sessions: sessionmaker[Session]) -> str | None:
    with session_scope(sessions) as s:
        row = active_index_row(s)
        return row.version if row is not None else None


def scan_answer(sessions: sessionmaker[Session], job: Job, limit: int | None = None) -> dict[str, Any]:
    """The stored report with its first ``limit`` groups, and ``scan``: which job, when, and how fresh."""
    report = dict(job.result)
    if limit is not None:
        report["groups"] = report["groups"][:limit]
    active = active_version(sessions)
    report["scan"] = {
        "job_id": job.id,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "index_version": report["index_version"], "active_index_version": active,
        "stale": report["index_version"] != active,
    }
    return report
