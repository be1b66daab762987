"""backend_of: the one reader of a dialect name."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, create_mock_engine
from sqlalchemy.orm import Session, sessionmaker

from core.db.backend import Backend, backend_of


def test_engines_connections_and_sessions_name_their_backend(sessions: sessionmaker[Session]) -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        assert backend_of(engine) is backend_of(conn) is Backend.SQLITE
    with sessions() as s:  # the test database: SQLite or PostgreSQL
        assert backend_of(s) in (Backend.SQLITE, Backend.POSTGRESQL)
        assert backend_of(s).value == s.get_bind().dialect.name


def test_another_database_is_refused_by_name() -> None:
    mysql = create_mock_engine("mysql://", executor=lambda *a, **k: None)
    with pytest.raises(ValueError, match="unsupported database 'mysql': Lookalike runs on SQLite or PostgreSQL"):
        backend_of(mysql)
