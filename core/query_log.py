"""The query log: a sample of similar-by-id requests, which a retrain's shadow evaluation replays.

Each logged row is the query item (external id), the request's ``k`` and the time. The
API samples requests (``query_log_sample_rate``) and writes after the response is sent
(service/api/items.py), one insert plus one indexed range delete that keeps at most
``query_log_max_rows`` rows: the primary key grows with time, so "the oldest" is "the
lowest ids". A write that fails is logged and dropped; it never fails a request.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.db import QueryLog, session_scope
from core.db.types import utcnow

log = logging.getLogger(__name__)


def sampled(rate: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether this request is logged: true with probability ``rate`` (0 never, 1 always)."""
    return rate > 0 and draw() < rate


def log_query(sessions: sessionmaker[Session], external_id: str, k: int, max_rows: int) -> bool:
    """Log one query and drop the rows beyond the newest ``max_rows``; False (and a warning) on failure.

    Never raises an ordinary error: the caller is a request that already has its answer.
    """
    try:
        with session_scope(sessions) as s:
            new_id = s.execute(insert(QueryLog).values(external_id=external_id, k=k, created_at=utcnow())
                               .returning(QueryLog.id)).scalar_one()
            if new_id > max_rows:
                s.execute(delete(QueryLog).where(QueryLog.id <= new_id - max_rows))
    except Exception:  # a full disk or a locked SQLite file must not turn into a failed search
        log.warning("could not log query %r", external_id, exc_info=True)
        return False
    return True


@dataclass(frozen=True)
class LoggedQueries:
    """The most recent logged queries, one per distinct item (newest first)."""

    rows: int
    """Rows read (at most the requested number)."""
    items: list[str]
    """Their distinct query items, most recently queried first."""


def recent_queries(session: Session, limit: int) -> LoggedQueries:
    """The ``limit`` most recent rows of the log and their distinct query items."""
    names = session.scalars(select(QueryLog.external_id).order_by(QueryLog.id.desc()).limit(limit)).all()
    return LoggedQueries(rows=len(names), items=list(dict.fromkeys(names)))
