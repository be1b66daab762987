"""Feedback judgements as training pairs: read from SQL, one judgement per pair, on training images.

The ``feedback`` table (core/feedback.py) holds one row per (query, result, source). For
training, the embedding distance is symmetric, so the rows of an *unordered* pair of
items {a, b} (both directions, every source) are resolved into one judgement
(:func:`resolve`):

1. rows of a source whose configured weight is 0 are left out;
2. the highest-ranked source present decides (:data:`SOURCE_RANK`: a merchandiser's mark
   outranks a click, a click a skip), whatever the weights;
3. within that source, ``dissimilar`` wins over ``similar`` (the two directions may
   disagree; "not alike" is the cautious reading, and never makes a false positive);
4. the pair's weight is the source's weight times the largest judgement weight among the
   deciding rows.

Only pairs whose two items both have images in the training list are used: items of
held-out (or validation) classes, deleted items and items without an active photo are
counted and dropped, so evaluation never sees an item the feedback trained on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, sessionmaker

from core.db import Feedback, FeedbackJudgement, FeedbackSource, Item, ItemStatus, session_scope
from trainer.config import SourceWeights
from trainer.data.catalog import item_of_images
from trainer.data.images import MediaList
from trainer.data.tuples import index_by_item

SOURCE_RANK: tuple[FeedbackSource, ...] = (FeedbackSource.MERCHANDISER, FeedbackSource.CLICK, FeedbackSource.SKIP)
"""Which source decides a pair judged by several, first first (rule 2 above)."""


def source_weight(weights: SourceWeights, source: FeedbackSource) -> float:
    """The configured weight of ``source`` (``feedback.sources.<source>``)."""
    return float(getattr(weights, source.value))


@dataclass(frozen=True)
class StoredJudgement:
    """One row of the feedback table, items by external id; ``y``: 0 similar, 1 dissimilar."""

    query: str
    result: str
    y: int
    source: FeedbackSource
    weight: float


@dataclass(frozen=True)
class FeedbackPair:
    """The resolved judgement of an unordered pair of items (``a < b``, external ids), or of a
    query ``a`` and its result ``b`` (``resolve(ordered=True)``)."""

    a: str
    b: str
    y: int
    source: FeedbackSource
    """The source that decided it."""
    weight: float


def resolve(judgements: Iterable[StoredJudgement], weights: SourceWeights, *,
            ordered: bool = False) -> list[FeedbackPair]:
    """One :class:`FeedbackPair` per unordered pair of items, by the rules of the module docstring;
    sorted by (a, b), so the same rows always give the same pairs in the same order.

    ``ordered=True`` resolves each direction on its own instead (``a`` the query, ``b`` the
    result): what a ranked answer is judged by (the shadow evaluation, worker/flows/shadow.py).
    """
    rank = {source: i for i, source in enumerate(SOURCE_RANK)}
    by_pair: dict[tuple[str, str], list[StoredJudgement]] = {}
    for j in judgements:
        if j.query == j.result or source_weight(weights, j.source) <= 0:
            continue
        key = (j.query, j.result) if ordered else (min(j.query, j.result), max(j.query, j.result))
        by_pair.setdefault(key, []).append(j)
    pairs = []
    for (a, b), rows in sorted(by_pair.items()):
        source = min((r.source for r in rows), key=rank.__getitem__)
        deciding = [r for r in rows if r.source is source]
        y = max(r.y for r in deciding)
        weight = max(r.weight for r in deciding if r.y == y)
        pairs.append(FeedbackPair(a, b, y, source, source_weight(weights, source) * weight))
    return pairs


def read_judgements(sessions: sessionmaker[Session]) -> list[StoredJudgement]:
    """Every feedback row whose two items are active, in id order."""
    query_item, result_item = aliased(Item, name="query_item"), aliased(Item, name="result_item")
    statement = (
        select(query_item.external_id, result_item.external_id, Feedback.judgement, Feedback.source, Feedback.weight)
        .join(query_item, query_item.id == Feedback.query_item_id)
        .join(result_item, result_item.id == Feedback.result_item_id)
        .where(query_item.status == ItemStatus.ACTIVE, result_item.status == ItemStatus.ACTIVE)
        .order_by(Feedback.id)
    )
    with session_scope(sessions) as s:
        return [StoredJudgement(q, r, 1 if judgement is FeedbackJudgement.DISSIMILAR else 0, source, float(weight))
                for q, r, judgement, source, weight in s.execute(statement)]


@dataclass(frozen=True)
class FeedbackPairs:
    """Resolved pairs whose items are both in the training list, and where their images are.

    ``images_of[external_id]``: positions of the item's images in the training list (its
    dataset indices); ``labels_of``: the item's training label (class name).
    """

    pairs: list[FeedbackPair]
    images_of: dict[str, list[int]]
    labels_of: dict[str, str]
    dropped: int
    """Resolved pairs left out because an item is not in the training list."""

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def never_positive(self) -> list[FeedbackPair]:
        """Dissimilar pairs of items that share a training label: the class batches must not
        use them as positives (``trainer.feedback.NeverPositive``)."""
        return [p for p in self.pairs if p.y == 1 and self.labels_of[p.a] == self.labels_of[p.b]]

    def summary(self) -> dict[str, Any]:
        """What the run's data summary records about the feedback it trained on."""
        by_source = Counter(p.source.value for p in self.pairs)
        return {
            "pairs": len(self.pairs), "similar": sum(p.y == 0 for p in self.pairs),
            "dissimilar": sum(p.y == 1 for p in self.pairs),
            "by_source": {s.value: by_source.get(s.value, 0) for s in SOURCE_RANK},
            "never_positive": len(self.never_positive), "dropped": self.dropped,
        }


def training_pairs(pairs: Sequence[FeedbackPair], external_ids: Sequence[str],
                   labels: Sequence[str]) -> FeedbackPairs:
    """Keep the ``pairs`` whose two items are among the training images' ``external_ids``
    (one per image, in dataset order, labelled ``labels``)."""
    images_of = index_by_item(external_ids)
    labels_of = dict(zip(external_ids, labels, strict=True))
    kept = [p for p in pairs if p.a in images_of and p.b in images_of]
    return FeedbackPairs(kept, images_of, labels_of, dropped=len(pairs) - len(kept))


def catalog_feedback(sessions: sessionmaker[Session], train_list: MediaList,
                     weights: SourceWeights) -> FeedbackPairs:
    """The feedback of the catalog for a training list of catalog images."""
    external_of = item_of_images(sessions)
    return training_pairs(resolve(read_judgements(sessions), weights),
                          [external_of[i] for i in train_list.image_ids], train_list.labels)
