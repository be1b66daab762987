from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db import IndexStatus, IndexVersion, ModelStatus, session_scope
from core.registry import (
    RegistryError,
    activate_model,
    active_index,
    active_model,
    get_model,
    list_models,
    register_model,
)


def test_register_and_activate_exactly_one(sessions: sessionmaker[Session]) -> None:
    a = register_model(sessions, checkpoint_path=Path("a.pt"), spec={"backbone": "small_cnn"},
                       metrics={"map_at_r": 0.5})
    b = register_model(sessions, checkpoint_path=Path("b.pt"), spec={"backbone": "small_cnn"})
    assert a != b and active_model(sessions) is None
    activate_model(sessions, a)
    activate_model(sessions, b)
    assert active_model(sessions).version == b
    assert get_model(sessions, a).status is ModelStatus.RETIRED
    assert [m.version for m in list_models(sessions)] == [b, a]
    with pytest.raises(RegistryError, match="nope"):
        activate_model(sessions, "nope")


def test_active_index_carries_its_model(sessions: sessionmaker[Session]) -> None:
    version = register_model(sessions, checkpoint_path=Path("a.pt"), spec={})
    assert active_index(sessions) is None
    with session_scope(sessions) as s:
        model_id = get_model(sessions, version).id
        s.add(IndexVersion(version="i1", model_id=model_id, status=IndexStatus.ACTIVE))
    index = active_index(sessions)
    assert index.version == "i1" and index.model.version == version
