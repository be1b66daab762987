"""Feedback: judgements on (query item, result item) pairs, stored, listed and applied.

A judgement says that, for the query item, the result item is ``similar`` (y = 0) or
``dissimilar`` (y = 1), from a source (a merchandiser's mark, a shopper's click or
skip) with a weight. There is one row per (query, result, source): recording the same
key again updates its judgement and weight (an upsert, so a retried POST never
duplicates). Items are named by their external ids, as everywhere in the API; a batch
is all or nothing (docs/ARCHITECTURE.md, "Feedback").

Applied at query time: :func:`dissimilar_results` gives, for query items, the result
items a merchandiser marked dissimilar, which similar-by-item queries exclude.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, sessionmaker

from core.db import Feedback, FeedbackJudgement, FeedbackSource, Item, ItemStatus, session_scope
from core.db.backend import Backend, backend_of
from core.db.types import utcnow


class FeedbackError(ValueError):
    """A judgement that cannot be stored; nothing of its batch was."""


class UnknownItem(FeedbackError):
    """A judgement names an external id with no active item."""

    def __init__(self, external_id: str) -> None:
        super().__init__(f"no active item with external id {external_id!r}")
        self.external_id = external_id


class SelfPair(FeedbackError):
    """A judgement pairs an item with itself."""

    def __init__(self, external_id: str) -> None:
        super().__init__(f"query and result are the same item {external_id!r}: a pair needs two items")
        self.external_id = external_id


@dataclass(frozen=True)
class Judgement:
    """One judgement to record, items by external id."""

    query: str
    result: str
    judgement: FeedbackJudgement
    source: FeedbackSource
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise FeedbackError(f"weight must be a finite number > 0, got {self.weight!r}")

    @property
    def key(self) -> tuple[str, str, FeedbackSource]:
        return (self.query, self.result, self.source)


@dataclass(frozen=True)
class FeedbackRecord:
    """A stored judgement, items by external id."""

    id: int
    query: str
    result: str
    judgement: FeedbackJudgement
    source: FeedbackSource
    weight: float
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "query": self.query, "result": self.result, "judgement": self.judgement.value,
            "y": self.judgement.y, "source": self.source.value, "weight": self.weight,
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class FeedbackPage:
    records: list[FeedbackRecord]
    next_cursor: int | None
    """Pass as ``cursor`` for the next page; None when this page is the last."""


_QUERY_ITEM = aliased(Item, name="query_item")
_RESULT_ITEM = aliased(Item, name="result_item")


def _records() -> Select[Any]:
    return (select(Feedback.id, _QUERY_ITEM.external_id, _RESULT_ITEM.external_id, Feedback.judgement,
                   Feedback.source, Feedback.weight, Feedback.created_at, Feedback.updated_at)
            .join(_QUERY_ITEM, _QUERY_ITEM.id == Feedback.query_item_id)
            .join(_RESULT_ITEM, _RESULT_ITEM.id == Feedback.result_item_id))


def _record(row: Sequence[Any]) -> FeedbackRecord:
    return FeedbackRecord(*row)


def record_feedback(session: Session, judgements: Sequence[Judgement]) -> list[FeedbackRecord]:
    """Upsert ``judgements`` and return them as stored, in the order given (repeats once, last wins).

    Every item must be active and no pair may be an item with itself, else nothing is
    written: :class:`UnknownItem` / :class:`SelfPair` name the first offending id. An
    existing (query, result, source) row keeps its id and ``created_at`` and takes the
    new judgement and weight. The caller's transaction commits or rolls back the batch.
    """
    latest: dict[tuple[str, str, FeedbackSource], Judgement] = {}
    for j in judgements:
        if j.query == j.result:
            raise SelfPair(j.query)
        latest.pop(j.key, None)  # a repeat moves to its last position
        latest[j.key] = j
    names = sorted({j.query for j in latest.values()} | {j.result for j in latest.values()})
    ids: dict[str, int] = {}
    for start in range(0, len(names), 1000):
        chunk = names[start:start + 1000]
        ids.update((name, item_id) for name, item_id in session.execute(select(Item.external_id, Item.id).where(
            Item.external_id.in_(chunk), Item.status == ItemStatus.ACTIVE)))
    for j in latest.values():
        for name in (j.query, j.result):
            if name not in ids:
                raise UnknownItem(name)
    if not latest:
        return []
    now = utcnow()
    rows = [{"query_item_id": ids[j.query], "result_item_id": ids[j.result], "judgement": j.judgement,
             "source": j.source, "weight": float(j.weight), "created_at": now, "updated_at": now}
            for j in latest.values()]
    insert = (sqlite.insert if backend_of(session) is Backend.SQLITE else postgresql.insert)(Feedback)
    statement = insert.on_conflict_do_update(
        index_elements=["query_item_id", "result_item_id", "source"],
        set_={"judgement": insert.excluded.judgement, "weight": insert.excluded.weight,
              "updated_at": insert.excluded.updated_at})
    for start in range(0, len(rows), 500):
        session.execute(statement, rows[start:start + 500])
    stored: dict[tuple[str, str, FeedbackSource], FeedbackRecord] = {}
    query_ids = sorted({ids[j.query] for j in latest.values()})
    for start in range(0, len(query_ids), 1000):
        for row in session.execute(_records().where(Feedback.query_item_id.in_(query_ids[start:start + 1000]))):
            record = _record(row)
            stored[(record.query, record.result, record.source)] = record
    return [stored[key] for key in latest]


def list_feedback(session: Session, *, query: str | None = None, source: FeedbackSource | None = None,
                  judgement: FeedbackJudgement | None = None, limit: int = 50,
                  cursor: int | None = None) -> FeedbackPage:
    """Stored judgements matching the filters, oldest first (by id), at most ``limit`` after ``cursor``."""
    statement = _records()
    if query is not None:
        statement = statement.where(_QUERY_ITEM.external_id == query)
    if source is not None:
        statement = statement.where(Feedback.source == source)
    if judgement is not None:
        statement = statement.where(Feedback.judgement == judgement)
    if cursor is not None:
        statement = statement.where(Feedback.id > cursor)
    records = [_record(r) for r in session.execute(statement.order_by(Feedback.id).limit(limit + 1))]
    more = len(records) > limit
    records = records[:limit]
    return FeedbackPage(records=records, next_cursor=records[-1].id if more else None)


def dissimilar_mark_clauses() -> tuple[ColumnElement[bool], ...]:
    """The condition that makes a feedback row a query-time exclusion: a merchandiser's "dissimilar".

    Clicks and skips never filter: they are noisy signals for retraining, not decisions.
    The one definition, shared by :func:`dissimilar_results` and the searcher's combined
    per-request query (service/searcher/live.py).
    """
    return (Feedback.source == FeedbackSource.MERCHANDISER, Feedback.judgement == FeedbackJudgement.DISSIMILAR)


def dissimilar_results(conn: Connection | Session, query_item_ids: Collection[int]) -> dict[int, set[int]]:
    """For each query item, the result items a merchandiser marked dissimilar (one indexed query)."""
    if not query_item_ids:
        return {}
    statement = select(Feedback.query_item_id, Feedback.result_item_id).where(
        Feedback.query_item_id.in_(sorted(query_item_ids)), *dissimilar_mark_clauses())
    out: dict[int, set[int]] = {}
    for query_id, result_id in conn.execute(statement):
        out.setdefault(query_id, set()).add(result_id)
    return out


CSV_COLUMNS = ("a", "b", "y", "judgement", "source", "weight", "id", "created_at", "updated_at")
"""The export's header: ``a,b,y`` first, the trainer's pairs format (trainer/data/tuples.py)."""
EXPORT_CHUNK = 1000


def feedback_csv(sessions: sessionmaker[Session], *, query: str | None = None,
                 source: FeedbackSource | None = None,
                 judgement: FeedbackJudgement | None = None) -> Iterator[str]:
    """Every matching judgement as CSV text, oldest first, in chunks of :data:`EXPORT_CHUNK` rows.

    One short transaction per chunk, so a long export (the API streams it, the CLI
    writes it to a file) never holds a snapshot open. The API and ``lookalike
    feedback export`` both write exactly this.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    cursor: int | None = None
    while True:
        with session_scope(sessions) as s:
            page = list_feedback(s, query=query, source=source, judgement=judgement, limit=EXPORT_CHUNK,
                                 cursor=cursor)
        writer.writerows((r.query, r.result, r.judgement.y, r.judgement.value, r.source.value, r.weight, r.id,
                          r.created_at.isoformat(), r.updated_at.isoformat()) for r in page.records)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
