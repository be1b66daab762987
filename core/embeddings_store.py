"""Vectors in the ``embeddings`` table: write, find what is missing, read back, fresh set.

Vectors are stored as float32 little-endian bytes (``np.asarray(v, '<f4').tobytes()``)
with their dimension, one row per (image, model). The worker writes them; the
reindex reads a snapshot of them to build an index; the service reads the *fresh
set* (embedded with the active index's model but not part of that index) and
searches it exactly so that new images are findable before any rebuild.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Integer, LargeBinary, Select, any_, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

from core.db import (
    Embedding,
    ImageStatus,
    IndexStatus,
    IndexVersion,
    Item,
    ItemImage,
    ItemStatus,
    session_scope,
)
from core.db.backend import Backend, backend_of
from core.db.types import utcnow
from core.index.manifest import IDS_FILE

_IN_CHUNK = 900
"""Ids per ``IN (...)`` clause: well under SQLite's bound-parameter limit."""


class EmbeddingStoreError(ValueError):
    """Stored vectors are inconsistent with what the caller asked for."""


@dataclass(frozen=True)
class VectorSnapshot:
    """Every servable vector of one model at one moment, as an index build consumes it."""

    image_ids: np.ndarray
    """int64 [n], ascending."""
    item_ids: np.ndarray
    """int64 [n], the item of each image (for item counts)."""
    vectors: np.ndarray
    """float32 [n, dim]."""
    max_created_at: dt.datetime | None
    """Newest ``embeddings.created_at`` included; recorded on the index for freshness."""


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stack stored blobs into a float32 [n, dim] matrix; a wrong length is an error."""
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    joined = b"".join(blobs)
    if len(joined) != len(blobs) * dim * 4:
        raise EmbeddingStoreError(f"stored vectors do not all have dimension {dim}")
    return np.frombuffer(joined, dtype="<f4").reshape(len(blobs), dim).astype(np.float32, copy=True)


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield [int(i) for i in ids[start:start + _IN_CHUNK]]


def id_in(session: Session, column: ColumnElement[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``, as ``= ANY(array)`` on PostgreSQL.

    One array parameter keeps the statement short and the same for every batch, so
    psycopg parses it once; an expanded IN of a few hundred ids is parsed on every call.
    """
    values = [int(i) for i in ids]
    if backend_of(session) is Backend.POSTGRESQL:
        return column == any_(literal(values, ARRAY(Integer)))
    return column.in_(values)


def _servable(query: Select[Any]) -> Select[Any]:
    """Restrict an embeddings query to active images of active items."""
    return (
        query.join(ItemImage, ItemImage.id == Embedding.image_id)
        .join(Item, Item.id == ItemImage.item_id)
        .where(ItemImage.status == ImageStatus.ACTIVE, Item.status == ItemStatus.ACTIVE)
    )


def put_vectors(
    session: Session,
    model_id: int,
    image_ids: Sequence[int],
    vectors: np.ndarray,
    *,
    replace: bool = False,
) -> int:
    """Store one vector per image for ``model_id``; return how many rows were written.

    Idempotent: an (image, model) row that already exists is left alone, so two
    workers embedding the same chunk (a retry, a fan-out overlap) are harmless.
    ``replace=True`` overwrites instead and stamps a new ``created_at``, which puts
    the image back into the fresh set (used when an image's bytes changed).
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(image_ids):
        raise EmbeddingStoreError(
            f"expected one vector per image: {len(image_ids)} ids, vectors of shape {vectors.shape}"
        )
    if not len(image_ids):
        return 0
    backend = backend_of(session)
    now = utcnow()
    blobs = [encode_vector(v) for v in vectors]
    ids = [int(i) for i in image_ids]
    keys = [Embedding.image_id, Embedding.model_id]
    if backend is Backend.POSTGRESQL:
        # Two array parameters unnested into rows: one short statement whatever the batch
        # size (a multi-row VALUES is re-parsed by psycopg on every call, which cost
        # more than the embedding itself did in the worker's chunks).
        pairs = select(func.unnest(literal(ids, ARRAY(Integer))).label("image_id"),
                       func.unnest(literal(blobs, ARRAY(LargeBinary))).label("vector")).subquery()
        source = select(pairs.c.image_id, literal(model_id, Integer), literal(vectors.shape[1], Integer),
                        pairs.c.vector, literal(now, Embedding.created_at.type))
        stmt = postgresql.insert(Embedding).from_select(
            ["image_id", "model_id", "dim", "vector", "created_at"], source)
        params = None
    else:
        stmt = sqlite.insert(Embedding)
        params = [{"image_id": i, "model_id": model_id, "dim": vectors.shape[1], "vector": b, "created_at": now}
                  for i, b in zip(ids, blobs, strict=True)]
    if replace:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={"dim": stmt.excluded.dim, "vector": stmt.excluded.vector, "created_at": stmt.excluded.created_at},
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    # RETURNING lists only the rows actually written, which is how they are counted
    # (rowcount is -1 for batches on some drivers).
    return len(session.execute(stmt.returning(Embedding.image_id), params).all())


def _missing_query(model_id: int, *columns: Any) -> Select[Any]:
    has_vector = select(Embedding.image_id).where(
        Embedding.model_id == model_id, Embedding.image_id == ItemImage.id
    ).exists()
    return (
        select(*columns)
        .join(Item, Item.id == ItemImage.item_id)
        .where(ItemImage.status == ImageStatus.ACTIVE, Item.status == ItemStatus.ACTIVE, ~has_vector)
        .order_by(ItemImage.id)
    )


def missing_image_ids(session: Session, model_id: int, among: Sequence[int] | None = None) -> list[int]:
    """Active images of active items that have no vector for ``model_id`` (ascending ids).

    ``among`` restricts the answer to those image ids (a chunk checking what is left).
    """
    base = _missing_query(model_id, ItemImage.id)
    if among is None:
        return list(session.scalars(base))
    found: list[int] = []
    for chunk in _chunks(sorted(set(among))):
        found.extend(session.scalars(base.where(id_in(session, ItemImage.id, chunk))))
    return sorted(found)


def missing_media_keys(session: Session, model_id: int, among: Sequence[int]) -> dict[int, str]:
    """Like :func:`missing_image_ids` restricted to ``among``, with each image's media key.

    One query for what an embedding chunk needs: which images still lack a vector,
    and where their bytes are.
    """
    base = _missing_query(model_id, ItemImage.id, ItemImage.media_key)
    found: dict[int, str] = {}
    for chunk in _chunks(sorted(set(among))):
        rows = session.execute(base.where(id_in(session, ItemImage.id, chunk)))
        found.update((row.id, row.media_key) for row in rows)
    return found


def snapshot_vectors(session: Session, model_id: int) -> VectorSnapshot:
    """All servable vectors of ``model_id`` in one query (what a reindex builds from)."""
    rows = session.execute(
        _servable(select(Embedding.image_id, ItemImage.item_id, Embedding.dim, Embedding.vector,
                         Embedding.created_at))
        .where(Embedding.model_id == model_id)
        .order_by(Embedding.image_id)
    ).all()
    if not rows:
        return VectorSnapshot(np.empty(0, np.int64), np.empty(0, np.int64),
                              np.empty((0, 0), np.float32), None)
    dims = {r.dim for r in rows}
    if len(dims) != 1:
        raise EmbeddingStoreError(f"model {model_id} has vectors of several dimensions: {sorted(dims)}")
    return VectorSnapshot(
        image_ids=np.fromiter((r.image_id for r in rows), np.int64, len(rows)),
        item_ids=np.fromiter((r.item_id for r in rows), np.int64, len(rows)),
        vectors=decode_vectors([r.vector for r in rows], dims.pop()),
        max_created_at=max(r.created_at for r in rows),
    )


def load_vectors(
    session: Session, model_id: int, image_ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image ids int64, float32 [n, dim]) for ``model_id``, ascending ids.

    Without ``image_ids``: every servable vector. With them: those of the listed
    images that have a vector, whatever their status (the caller asked for them).
    """
    if image_ids is None:
        snap = snapshot_vectors(session, model_id)
        return snap.image_ids, snap.vectors
    rows = []
    for chunk in _chunks(sorted(set(image_ids))):
        rows.extend(session.execute(
            select(Embedding.image_id, Embedding.dim, Embedding.vector)
            .where(Embedding.model_id == model_id, id_in(session, Embedding.image_id, chunk))
        ).all())
    rows.sort(key=lambda r: r.image_id)
    dims = {r.dim for r in rows}
    if len(dims) > 1:
        raise EmbeddingStoreError(f"model {model_id} has vectors of several dimensions: {sorted(dims)}")
    ids = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    return ids, decode_vectors([r.vector for r in rows], dims.pop() if dims else 0)


def active_image_mask(session: Session, image_ids: Sequence[int]) -> np.ndarray:
    """For each image id, whether it is servable now (image and item active).

    Annoy cannot forget a vector, so every index hit is checked against SQL: this is
    how deleted items and removed images disappear at once, without a rebuild.
    """
    alive: set[int] = set()
    for chunk in _chunks(sorted(set(int(i) for i in image_ids))):
        alive.update(session.scalars(
            select(ItemImage.id).join(Item, Item.id == ItemImage.item_id)
            .where(id_in(session, ItemImage.id, chunk), ItemImage.status == ImageStatus.ACTIVE,
                   Item.status == ItemStatus.ACTIVE)
        ))
    return np.fromiter((int(i) in alive for i in image_ids), dtype=bool, count=len(image_ids))


def _index_row(session: Session, index_version: str | None) -> IndexVersion | None:
    query = select(IndexVersion)
    if index_version is None:
        return session.scalar(query.where(IndexVersion.status == IndexStatus.ACTIVE))
    row = session.scalar(query.where(IndexVersion.version == index_version))
    if row is None:
        raise EmbeddingStoreError(f"index version {index_version!r} does not exist")
    return row


def fresh_image_ids(session: Session, index_version: str | None = None) -> np.ndarray:
    """Servable images embedded with the index's model but not (as now) in the index.

    An image is fresh when its id is not among the index's ids, or when its vector
    is newer than the newest one the build included (the image changed and was
    re-embedded). Comparing ids, not only timestamps, also catches a vector that was
    committed while the build was reading its snapshot. ``None`` means the active
    index; with no active index there is nothing to be fresh against: empty.
    """
    index = _index_row(session, index_version)
    if index is None:
        return np.empty(0, np.int64)
    rows = session.execute(
        _servable(select(Embedding.image_id, Embedding.created_at))
        .where(Embedding.model_id == index.model_id)
        .order_by(Embedding.image_id)
    ).all()
    if not rows:
        return np.empty(0, np.int64)
    ids = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    indexed = np.load(Path(index.path) / IDS_FILE, mmap_mode="r")
    fresh = ~np.isin(ids, np.asarray(indexed, dtype=np.int64))
    newest = index.max_embedding_created_at
    if newest is not None:
        fresh |= np.fromiter((r.created_at > newest for r in rows), bool, len(rows))
    return ids[fresh]


def fresh_set(
    sessions: sessionmaker[Session], index_version: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, float32 vectors) of the fresh set of an index (default: the active one).

    The service searches these exactly and merges them with the Annoy results, so
    an image embedded after the build is findable at once (docs/ARCHITECTURE.md, "Freshness").
    """
    with session_scope(sessions) as s:
        ids = fresh_image_ids(s, index_version)
        if not len(ids):
            return ids, np.empty((0, 0), np.float32)
        model_id = _index_row(s, index_version).model_id  # type: ignore[union-attr]
        return load_vectors(s, model_id, ids.tolist())


def count_written_since(session: Session, model_id: int, since: dt.datetime) -> int:
    """How many vectors of ``model_id`` were written at or after ``since`` (a cheap progress probe)."""
    return session.scalar(
        select(func.count()).select_from(Embedding)
        .where(Embedding.model_id == model_id, Embedding.created_at >= since)
    ) or 0
