"""The query log keeps the newest rows up to its bound, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools

from sqlalchemy import Engine, select

from core.db import QueryLog, make_session_factory, session_scope
from core.query_log import log_query, recent_queries, sampled


def test_the_log_is_bounded_by_deleting_the_oldest(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    for n in range(12):
        assert log_query(sessions, f"sku-{n % 4}", 5 + n, max_rows=5)
    with session_scope(sessions) as s:
        rows = s.execute(select(QueryLog.external_id, QueryLog.k).order_by(QueryLog.id)).all()
        assert [tuple(r) for r in rows] == [(f"sku-{n % 4}", 5 + n) for n in range(7, 12)]
        recent = recent_queries(s, 3)
    assert recent.rows == 3 and recent.items == ["sku-3", "sku-2", "sku-1"]  # newest first


def test_a_failed_write_is_reported_not_raised(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE query_log")
    assert log_query(sessions, "sku-1", 10, max_rows=5) is False


def test_sampling_draws_against_the_rate() -> None:
    draws = itertools.cycle([0.0, 0.25, 0.5, 0.75])
    assert [sampled(0.5, lambda: next(draws)) for _ in range(8)] == [True, True, False, False] * 2
    assert not any(sampled(0.0, lambda: 0.0) for _ in range(3))
    assert all(sampled(1.0, lambda: 0.999) for _ in range(3))
