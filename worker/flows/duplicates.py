"""SCAN_DUPLICATES: the near-duplicate scan of the active index as a job (core/duplicate_scans.py).

The body is :func:`core.duplicates.find_duplicates_with`, the same as the CLI's; its
stages become the job's phases and progress (signatures, candidates, verifying), and
its full report the job's result, which ``GET /api/v1/duplicates`` serves.
"""

from __future__ import annotations

from typing import Any

from core.db import Job, JobPhase
from core.duplicate_scans import ReportTooLarge, storable_report
from core.duplicates import NoActiveIndex, ScanStage, find_duplicates_with
from core.jobs import update_progress
from worker.flows.runner import run_job_flow
from worker.runtime import Runtime

_PHASES = {ScanStage.SIGNATURES: JobPhase.SIGNATURES, ScanStage.CANDIDATES: JobPhase.CANDIDATES,
           ScanStage.VERIFYING: JobPhase.VERIFYING}


def run_duplicate_scan(rt: Runtime, job_id: int, threshold: float | None = None, ratio: float | None = None,
                       min_similarity: float | None = None) -> dict[str, Any]:
    """Scan for ``job_id`` with these parameters (None: the settings' defaults); store the report."""

    def progress(stage: ScanStage, done: int, total: int) -> None:
        update_progress(rt.sessions, job_id, done, total, phase=_PHASES[stage])

    def body(_job: Job, _: None) -> dict[str, Any]:
        report = find_duplicates_with(rt.settings, rt.sessions, ratio=ratio, threshold=threshold,
                                      min_similarity=min_similarity, progress=progress)
        return storable_report(report)

    # an index retired between the POST and the run, or a bar so low that the report is too
    # large to store (core/duplicate_scans.py): the user's answer, not a bug
    return run_job_flow(rt.sessions, job_id, body, expected=(NoActiveIndex, ReportTooLarge))
