"""Feedback storage on SQLite and PostgreSQL: idempotent upserts, atomic batches, listing, the marks applied."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.db import Feedback, FeedbackJudgement, FeedbackSource, Item, ItemStatus, session_scope
from core.feedback import (
    FeedbackError,
    Judgement,
    SelfPair,
    UnknownItem,
    dissimilar_results,
    list_feedback,
    record_feedback,
)

SIMILAR, DISSIMILAR = FeedbackJudgement.SIMILAR, FeedbackJudgement.DISSIMILAR
MERCH, CLICK, SKIP = FeedbackSource.MERCHANDISER, FeedbackSource.CLICK, FeedbackSource.SKIP


@pytest.fixture
def items(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Five active items a..e and one deleted item x; their internal ids."""
    with session_scope(sessions) as s:
        rows = [Item(external_id=name) for name in "abcde"]
        rows.append(Item(external_id="x", status=ItemStatus.DELETED))
        s.add_all(rows)
        s.flush()
        return {row.external_id: row.id for row in rows}


def count(sessions: sessionmaker[Session]) -> int:
    with session_scope(sessions) as s:
        return s.scalar(select(func.count()).select_from(Feedback)) or 0


def test_recording_again_updates_the_same_row(sessions: sessionmaker[Session], items: dict[str, int]) -> None:
    with session_scope(sessions) as s:
        first = record_feedback(s, [Judgement("a", "b", DISSIMILAR, MERCH), Judgement("a", "b", SIMILAR, CLICK)])
    assert [(r.query, r.result, r.judgement, r.source, r.weight) for r in first] == [
        ("a", "b", DISSIMILAR, MERCH, 1.0), ("a", "b", SIMILAR, CLICK, 1.0)]
    with session_scope(sessions) as s:
        again = record_feedback(s, [Judgement("a", "b", SIMILAR, MERCH, weight=2.5)])
    assert count(sessions) == 2
    (row,) = again
    assert (row.id, row.created_at) == (first[0].id, first[0].created_at)
    assert (row.judgement, row.weight) == (SIMILAR, 2.5)
    assert row.updated_at >= first[0].updated_at
    assert row.to_dict()["y"] == 0


def test_a_repeat_within_one_batch_is_stored_once_last_wins(sessions: sessionmaker[Session],
                                                            items: dict[str, int]) -> None:
    with session_scope(sessions) as s:
        stored = record_feedback(s, [Judgement("a", "b", SIMILAR, MERCH), Judgement("a", "c", SIMILAR, MERCH),
                                     Judgement("a", "b", DISSIMILAR, MERCH, weight=3.0)])
    assert [(r.result, r.judgement, r.weight) for r in stored] == [("c", SIMILAR, 1.0), ("b", DISSIMILAR, 3.0)]
    assert count(sessions) == 2


@pytest.mark.parametrize("bad, error, name", [
    (Judgement("a", "nope", SIMILAR, MERCH), UnknownItem, "nope"),
    (Judgement("x", "a", SIMILAR, MERCH), UnknownItem, "x"),  # deleted items take no feedback
    (Judgement("c", "c", DISSIMILAR, MERCH), SelfPair, "c"),
])
def test_a_bad_judgement_stores_nothing_of_its_batch(sessions: sessionmaker[Session], items: dict[str, int],
                                                     bad: Judgement, error: type[FeedbackError],
                                                     name: str) -> None:
    with pytest.raises(error) as caught:
        with session_scope(sessions) as s:
            record_feedback(s, [Judgement("a", "b", DISSIMILAR, MERCH), bad])
    assert caught.value.external_id == name  # type: ignore[attr-defined]
    assert repr(name) in str(caught.value)
    assert count(sessions) == 0


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_weight_must_be_finite_and_positive(weight: float) -> None:
    with pytest.raises(FeedbackError, match="weight must be a finite number > 0"):
        Judgement("a", "b", SIMILAR, MERCH, weight=weight)


def test_list_filters_and_pages_by_cursor(sessions: sessionmaker[Session], items: dict[str, int]) -> None:
    marks = [Judgement(q, r, j, src) for q, r, j, src in [
        ("a", "b", DISSIMILAR, MERCH), ("a", "c", SIMILAR, CLICK), ("b", "a", DISSIMILAR, SKIP),
        ("a", "d", DISSIMILAR, MERCH), ("a", "e", SIMILAR, MERCH)]]
    with session_scope(sessions) as s:
        record_feedback(s, marks)
    with session_scope(sessions) as s:
        pages, cursor = [], None
        while True:
            page = list_feedback(s, query="a", limit=2, cursor=cursor)
            pages.append([r.result for r in page.records])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert pages == [["b", "c"], ["d", "e"]]
        assert [r.result for r in list_feedback(s, source=MERCH, judgement=DISSIMILAR).records] == ["b", "d"]
        assert [r.query for r in list_feedback(s, source=SKIP).records] == ["b"]
        assert list_feedback(s, query="nope").records == []


def test_only_merchandiser_dissimilar_marks_are_applied(sessions: sessionmaker[Session],
                                                        items: dict[str, int]) -> None:
    with session_scope(sessions) as s:
        record_feedback(s, [Judgement("a", "b", DISSIMILAR, MERCH), Judgement("a", "c", DISSIMILAR, CLICK),
                            Judgement("a", "d", DISSIMILAR, SKIP), Judgement("a", "e", SIMILAR, MERCH),
                            Judgement("b", "c", DISSIMILAR, MERCH)])
    with sessions() as s:
        assert dissimilar_results(s, [items["a"]]) == {items["a"]: {items["b"]}}
        assert dissimilar_results(s, [items["a"], items["b"], items["c"]]) == {
            items["a"]: {items["b"]}, items["b"]: {items["c"]}}
        assert dissimilar_results(s, []) == {}
