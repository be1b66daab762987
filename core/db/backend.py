"""Which database a connection talks to: the one place that reads a SQLAlchemy dialect name.

Lookalike runs on SQLite (the embedded setup) and PostgreSQL (the full stack). Where they
differ — JSON functions, array parameters, advisory locks, ALTER TABLE, planner hints — the
code branches on :class:`Backend`, never on a dialect string.
"""

from __future__ import annotations

import enum

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session


class Backend(str, enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


def backend_of(bind: Engine | Connection | Session) -> Backend:
    """The database behind an engine, a connection or a session; anything else is an error."""
    name = (bind.get_bind() if isinstance(bind, Session) else bind).dialect.name
    try:
        return Backend(name)
    except ValueError:
        raise ValueError(f"unsupported database {name!r}: Lookalike runs on SQLite or PostgreSQL") from None
