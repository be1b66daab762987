"""Keep-N retention (core/publish.py retire_beyond_keep), the one rule publish and retire share."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import IndexStatus, IndexVersion, ModelVersion, session_scope
from core.publish import retire_beyond_keep

STATUSES = [IndexStatus.RETIRED, IndexStatus.READY, IndexStatus.FAILED, IndexStatus.READY, IndexStatus.READY,
            IndexStatus.ACTIVE, IndexStatus.READY, IndexStatus.BUILDING]
"""i-0 (oldest) .. i-7 (newest): four READY versions, one ACTIVE, others that retention leaves alone."""


def _statuses(sessions: sessionmaker[Session], keep: int) -> tuple[list[str], list[IndexStatus]]:
    with session_scope(sessions) as s:
        model = ModelVersion(version="m-1", spec={}, checkpoint_path="/nowhere")
        s.add(model)
        s.flush()
        s.add_all(IndexVersion(version=f"i-{n}", model_id=model.id, status=status) for n, status in enumerate(STATUSES))
        s.flush()
        retired = retire_beyond_keep(s, keep)
    with session_scope(sessions) as s:
        return retired, list(s.scalars(select(IndexVersion.status).order_by(IndexVersion.id)))


@pytest.mark.parametrize(("keep", "kept_ready"),
                         [(3, ["i-6", "i-4"]), (1, []), (0, []), (9, ["i-6", "i-4", "i-3", "i-1"])])
def test_the_newest_keep_minus_one_ready_versions_stay(sessions: sessionmaker[Session], keep: int,
                                                       kept_ready: list[str]) -> None:
    retired, statuses = _statuses(sessions, keep)
    ready = [f"i-{n}" for n, status in enumerate(STATUSES) if status is IndexStatus.READY]
    assert retired == [v for v in reversed(ready) if v not in kept_ready]  # newest first, as returned
    expected = [IndexStatus.RETIRED if f"i-{n}" in retired else status for n, status in enumerate(STATUSES)]
    assert statuses == expected
