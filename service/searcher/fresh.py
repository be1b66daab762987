"""The fresh set one process holds: the served index's fresh vectors, followed incrementally.

What is fresh is defined once, by :func:`core.embeddings_store.read_fresh` (the worker's
rebuild threshold counts the same set; docs/ARCHITECTURE.md, "The fresh set"). A
process reads it whole when it loads an index, then follows new rows from a cursor
(the newest ``created_at`` read, less :data:`~core.embeddings_store.COMMIT_SLACK`),
so a poll reads only what was written since. Rows are never dropped here: deleted
items and removed images are filtered by the metadata query of every search, and
the next index drops them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

from core.embeddings_store import COMMIT_SLACK, FreshBasis, read_fresh


@dataclass(frozen=True)
class FreshSet:
    """An immutable snapshot; a refresh builds a new one and swaps it in."""

    image_ids: np.ndarray
    """int64 [n]."""
    vectors: np.ndarray
    """float32 [n, dim]."""
    cursor: dt.datetime | None
    """Newest ``created_at`` read so far; the next refresh reads from here."""

    def __len__(self) -> int:
        return len(self.image_ids)

    def vector(self, image_id: int) -> np.ndarray | None:
        hit = np.flatnonzero(self.image_ids == image_id)
        return self.vectors[hit[0]] if len(hit) else None

    @classmethod
    def empty(cls, dim: int, cursor: dt.datetime | None) -> FreshSet:
        return cls(np.empty(0, np.int64), np.empty((0, dim), np.float32), cursor)


def follow_fresh(engine: Engine, basis: FreshBasis, previous: FreshSet | None = None) -> FreshSet:
    """The fresh set of ``basis``'s index: read whole, or updated from ``previous``'s cursor.

    Returns ``previous`` itself when nothing was read, so the caller can tell that
    nothing changed.
    """
    cursor = previous.cursor if previous is not None else basis.newest_in_index
    after = None if previous is None or cursor is None else cursor - COMMIT_SLACK
    with engine.connect() as conn:
        rows = read_fresh(conn, basis, after=after)
    base = previous if previous is not None else FreshSet.empty(basis.dim, cursor)
    if rows.read_until is None:
        return base
    new_cursor = rows.read_until if cursor is None else max(rows.read_until, cursor)
    if not len(rows.image_ids):
        return FreshSet(base.image_ids, base.vectors, new_cursor)
    stale = np.isin(base.image_ids, rows.image_ids)  # re-embedded since: the newer vector wins
    return FreshSet(
        image_ids=np.concatenate([base.image_ids[~stale], rows.image_ids]),
        vectors=np.concatenate([base.vectors[~stale], rows.vectors]),
        cursor=new_cursor,
    )
