"""The fresh set: vectors of the query model that the loaded index does not hold yet.

An image is fresh when it is servable, has a vector for the index's model, and
either is not in the index or has a vector newer than the newest one the build
included (re-embedded). Only embeddings created after the index's newest one
(minus :data:`COMMIT_SLACK`, for vectors committed while the build read its
snapshot) are read, through the ``created_at`` index, so the query stays small no
matter how large the catalog is; the watcher then follows new rows incrementally
from a cursor. Rows are never dropped here: deleted items and removed images are
filtered by the metadata query of every search, and the next index drops them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select

from core.db import Embedding, ImageStatus, Item, ItemImage, ItemStatus
from core.db.backend import backend_of
from core.index import VectorIndex
from service.searcher.planhints import no_index

COMMIT_SLACK = dt.timedelta(seconds=5)
"""How far before a cursor rows are re-read: covers transactions that commit late."""


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


def _since(cursor: dt.datetime | None) -> dt.datetime | None:
    return None if cursor is None else cursor - COMMIT_SLACK


def read_fresh(
    engine: Engine, *, model_id: int, index: VectorIndex, newest_in_index: dt.datetime | None,
    previous: FreshSet | None = None,
) -> FreshSet:
    """The fresh set of ``index``: read from scratch, or updated from ``previous``'s cursor."""
    dim = index.manifest.dim
    cursor = previous.cursor if previous is not None else newest_in_index
    since = _since(cursor)
    # With a cursor the created_at range is the selective condition. Left a choice,
    # SQLite (no statistics) takes any equality over a range: it reads every vector
    # of the model through the model_id index, or every active image through the
    # status index, on each poll. So those columns are kept off their indexes.
    backend = backend_of(engine) if since is not None else None
    query = (
        select(Embedding.image_id, Embedding.created_at, Embedding.dim, Embedding.vector)
        .join(ItemImage, ItemImage.id == Embedding.image_id)
        .join(Item, Item.id == ItemImage.item_id)
        .where(no_index(Embedding.model_id, backend) == model_id,
               no_index(ItemImage.status, backend) == ImageStatus.ACTIVE,
               no_index(Item.status, backend) == ItemStatus.ACTIVE)
    )
    if since is not None:
        query = query.where(Embedding.created_at > since)
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if r.dim == dim]
    base = previous if previous is not None else FreshSet.empty(dim, cursor)
    if not rows:
        return base
    ids = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    created = [r.created_at for r in rows]
    in_index = index.rows_of(ids) >= 0
    newer = np.fromiter((newest_in_index is None or c > newest_in_index for c in created), bool, len(rows))
    keep = ~in_index | newer
    new_cursor = max([c for c in created if c is not None] + ([cursor] if cursor else []))
    if not keep.any():
        return FreshSet(base.image_ids, base.vectors, new_cursor)
    new_ids = ids[keep]
    new_vectors = np.frombuffer(b"".join(r.vector for r, k in zip(rows, keep) if k),
                                dtype="<f4").reshape(-1, dim).astype(np.float32)
    stale = np.isin(base.image_ids, new_ids)  # re-embedded since: the newer vector wins
    return FreshSet(
        image_ids=np.concatenate([base.image_ids[~stale], new_ids]),
        vectors=np.concatenate([base.vectors[~stale], new_vectors]),
        cursor=new_cursor,
    )
