"""RETRAIN (placeholder until trainer/train.py lands)."""

from __future__ import annotations

from typing import Any

from worker.runtime import Runtime


def run_retrain(rt: Runtime, job_id: int | None = None, config: dict[str, Any] | None = None,
                reason: str = "requested") -> dict[str, Any]:
    raise NotImplementedError
