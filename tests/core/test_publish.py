"""core/publish.py on SQLite and PostgreSQL: keep-N retention counts recency of service, so a
version that was rolled back to survives the next publish; republish refuses what it cannot serve."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import IndexStatus, IndexVersion, ModelVersion, session_scope
from core.publish import IndexNotFound, IndexNotPublishable, Refusal, publish_index, republish_index
from core.registry import active_index


def _statuses(sessions: sessionmaker[Session]) -> dict[str, IndexStatus]:
    with session_scope(sessions) as s:
        return {v: st for v, st in s.execute(select(IndexVersion.version, IndexVersion.status))}


def _built(sessions: sessionmaker[Session], *versions: str) -> None:
    """READY rows of one model, built in the order given (publish itself reads no files)."""
    with session_scope(sessions) as s:
        model = s.scalar(select(ModelVersion).where(ModelVersion.version == "m-1"))
        if model is None:
            model = ModelVersion(version="m-1", spec={}, checkpoint_path="/nowhere")
            s.add(model)
            s.flush()
        for version in versions:
            s.add(IndexVersion(version=version, model_id=model.id, status=IndexStatus.READY))
            s.flush()


def test_the_version_rolled_back_to_outlives_the_builds_it_replaced(any_db_settings: Settings,
                                                                     sessions: sessionmaker[Session]) -> None:
    settings = any_db_settings.replace(keep_index_versions=3)
    _built(sessions, "i-a", "i-b", "i-c")
    for version in ("i-a", "i-b", "i-c"):
        publish_index(settings, sessions, version)
    publish_index(settings, sessions, "i-a")  # i-b and i-c were bad: back to i-a
    assert _statuses(sessions) == {"i-a": IndexStatus.ACTIVE, "i-b": IndexStatus.READY, "i-c": IndexStatus.READY}
    _built(sessions, "i-d")
    publish_index(settings, sessions, "i-d")
    # by build order i-a (the oldest build) would go; by service it is the last good one and stays
    assert _statuses(sessions) == {"i-a": IndexStatus.READY, "i-b": IndexStatus.RETIRED,
                                   "i-c": IndexStatus.READY, "i-d": IndexStatus.ACTIVE}
    with pytest.raises(IndexNotPublishable, match="i-b is retired") as refused:
        publish_index(settings, sessions, "i-b")
    assert refused.value.reason is Refusal.NOT_READY
    assert active_index(sessions).version == "i-d"


def test_republish_checks_before_it_publishes(any_db_settings: Settings, sessions: sessionmaker[Session]) -> None:
    _built(sessions, "i-a", "i-b")
    publish_index(any_db_settings, sessions, "i-b")
    with pytest.raises(IndexNotFound, match="'i-zz' does not exist"):
        republish_index(any_db_settings, sessions, "i-zz")
    with pytest.raises(IndexNotPublishable, match="index i-a cannot be published: index directory not found") as no:
        republish_index(any_db_settings, sessions, "i-a")  # a row whose directory was never written
    assert no.value.reason is Refusal.FILES_MISSING and no.value.version == "i-a"
    assert active_index(sessions).version == "i-b"
