"""Fixtures shared by the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from worker.local import InProcessDispatcher


@pytest.fixture
def worker(any_db_settings: Settings, sessions: sessionmaker[Session]) -> Iterator[InProcessDispatcher]:
    """The worker's handlers, in-process, on the migrated database ``sessions`` points at."""
    dispatcher = InProcessDispatcher(any_db_settings)
    yield dispatcher
    dispatcher.close()
