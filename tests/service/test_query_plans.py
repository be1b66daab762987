"""SQLite query plans of the per-request and per-poll queries: no plan may read a whole table.

SQLite has no statistics here, and SQLAlchemy silently drops table hints on it, so
a plan that scans a million rows instead of looking up thirty still returns the
right rows — only slowly. These tests read the plan itself (EXPLAIN QUERY PLAN).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event

from core.embeddings_store import FreshBasis, read_fresh
from core.feedback import dissimilar_results
from core.index import Metric, VectorIndex, build_index
from service.filters import Filters
from service.searcher.live import _LOOKUP
from service.searcher.metadata import Exclusions, fetch_metadata


def plan_of(engine: Engine, run: Callable[[], Any]) -> list[str]:
    """The plan steps of the one statement ``run`` executes (run for real, then explained)."""
    seen: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    assert len(seen) == 1, seen
    statement, parameters = seen[0]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return [row[3] for row in rows]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[VectorIndex]:
    vectors = np.eye(4, dtype=np.float32)
    build_index(tmp_path / "idx", np.arange(1, 5), vectors, index_version="i1", model_version="m1",
                metric=Metric.EUCLIDEAN, n_trees=2)
    with VectorIndex.load(tmp_path / "idx") as loaded:
        yield loaded


def test_fresh_poll_reads_only_new_embeddings_through_created_at(sqlite_engine: Engine, index: VectorIndex) -> None:
    newest = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    basis = FreshBasis(model_id=1, dim=4, newest_in_index=newest, index=index)
    with sqlite_engine.connect() as conn:
        plan = plan_of(sqlite_engine, lambda: read_fresh(conn, basis))
    assert plan[0].startswith("SEARCH embeddings USING INDEX ix_embeddings_created_at (created_at>?)"), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


@pytest.mark.parametrize("filters, exclusions", [
    (Filters(), Exclusions(item_id=7)),
    (Filters(categories=("shoes", "hats")), Exclusions(item_id=7)),
    (Filters(groups=("g1",)), Exclusions(item_id=7, group_key="g2")),
    (Filters(attributes=(("color", ("red",)),)), Exclusions()),
    (Filters(), Exclusions(item_id=7, item_ids=(4, 9))),  # results marked dissimilar (feedback)
])
def test_metadata_fetch_is_driven_by_the_candidate_ids(sqlite_engine: Engine, filters: Filters,
                                                       exclusions: Exclusions) -> None:
    with sqlite_engine.connect() as conn:
        plan = plan_of(sqlite_engine, lambda: fetch_metadata(conn, [3, 1, 2], filters=filters, exclusions=exclusions))
    # image rows by id (straight from the list), then each one's item by primary key
    assert plan[0].startswith("SEARCH item_images USING") and "rowid=?" in plan[0], plan
    assert "SEARCH items USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert not any(step.startswith("SCAN") and "VIRTUAL TABLE" not in step for step in plan), plan


def test_feedback_marks_of_a_query_item_are_read_through_the_unique_index(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        plan = plan_of(sqlite_engine, lambda: dissimilar_results(conn, [7]))
    # SQLite names the unique constraint's index sqlite_autoindex_feedback_1
    (step,) = plan
    assert step.startswith("SEARCH feedback USING INDEX ") and step.endswith(" (query_item_id=?)"), plan


def test_the_table_paths_one_query_probes_through_indexes(sqlite_engine: Engine) -> None:
    """Item lookup, marks and the live set's four probes: index searches only (migration 0004)."""
    with sqlite_engine.connect() as conn:
        sql, order, base, processors = _LOOKUP._compile(conn)
        since = processors["since"](dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        params = {**base, "external_id": "x", "since": since}
        assert order is not None
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql,
                                                         tuple(params[n] for n in order)).all()]
    assert not any(step.startswith("SCAN") for step in plan), plan
    assert sum("USING COVERING INDEX ix_items_updated_at" in step for step in plan) == 2, plan
    assert sum("USING COVERING INDEX ix_item_images_updated_at" in step for step in plan) == 2, plan
    assert any("ix_items_external_id" in step for step in plan), plan
