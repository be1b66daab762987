"""Vectors in the ``embeddings`` table: write, find what is missing, read back, fresh set.

Vectors are stored as float32 little-endian bytes (``np.asarray(v, '<f4').tobytes()``)
with their dimension, one row per (image, model). The worker writes them; the
reindex reads a snapshot of them to build an index. :func:`read_fresh` is the one
definition of the *fresh set* (embedded for the served index's model, with its
dimension, but not in that index version): the service searches it exactly so that
new images are findable before any rebuild, and the worker's rebuild threshold
counts it (docs/ARCHITECTURE.md, "The fresh set").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import ColumnElement, Connection, Integer, LargeBinary, Select, any_, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from core.db import (
    Embedding,
    ImageStatus,
    IndexStatus,
    IndexVersion,
    Item,
    ItemImage,
    ItemStatus,
)
from core.db.backend import Backend, backend_of
from core.db.planhints import no_index
from core.db.types import utcnow
from core.index import VectorIndex

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


def id_in(bind: Session | Connection, column: ColumnElement[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``, as ``= ANY(array)`` on PostgreSQL.

    One array parameter keeps the statement short and the same for every batch, so
    psycopg parses it once; an expanded IN of a few hundred ids is parsed on every call.
    """
    values = [int(i) for i in ids]
    if backend_of(bind) is Backend.POSTGRESQL:
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


def snapshot_vectors(session: Session | Connection, model_id: int) -> VectorSnapshot:
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
    bind: Session | Connection, model_id: int, image_ids: Sequence[int] | None = None, *,
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(image ids int64, float32 [n, dim]) for ``model_id``, ascending ids.

    Without ``image_ids``: every servable vector. With them: those of the listed
    images that have a vector, whatever their status (the caller asked for them),
    and with ``dim`` only those of that dimension (what an index of that dimension
    can be queried with); one query per 900 ids.
    """
    if image_ids is None:
        if dim is not None:
            raise TypeError("dim applies to listed image_ids only")
        snap = snapshot_vectors(bind, model_id)
        return snap.image_ids, snap.vectors
    rows = []
    for chunk in _chunks(sorted(set(image_ids))):
        query = (select(Embedding.image_id, Embedding.dim, Embedding.vector)
                 .where(Embedding.model_id == model_id, id_in(bind, Embedding.image_id, chunk)))
        if dim is not None:
            query = query.where(Embedding.dim == dim)
        rows.extend(bind.execute(query).all())
    rows.sort(key=lambda r: r.image_id)
    dims = {r.dim for r in rows}
    if len(dims) > 1:
        raise EmbeddingStoreError(f"model {model_id} has vectors of several dimensions: {sorted(dims)}")
    ids = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    return ids, decode_vectors([r.vector for r in rows], dims.pop() if dims else (dim or 0))


COMMIT_SLACK = dt.timedelta(seconds=5)
"""How far before the newest vector an index holds (or a reader's cursor) vectors are still read.

``created_at`` is stamped when a row is written, not when its transaction commits, so
a vector committed late can carry a time earlier than one already seen; this covers
such transactions (docs/ARCHITECTURE.md, "The fresh set")."""


class IndexMembership(Protocol):
    """What the fresh set needs of an index: which ids it holds (a loaded :class:`VectorIndex`)."""

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FreshBasis:
    """The served index version a fresh set is measured against."""

    model_id: int
    """The index's model: only its vectors can be searched with the index."""
    dim: int
    """The index's dimension: a vector of another length cannot be compared with it."""
    newest_in_index: dt.datetime | None
    """``indexes.max_embedding_created_at``: the newest vector the build included (None: it held none)."""
    index: IndexMembership

    @property
    def floor(self) -> dt.datetime | None:
        """Vectors written at or before this are in the index or never fresh against it."""
        return None if self.newest_in_index is None else self.newest_in_index - COMMIT_SLACK


@dataclass(frozen=True)
class FreshRows:
    """Fresh vectors read in one query, and how far that query read."""

    image_ids: np.ndarray
    """int64 [n], ascending."""
    vectors: np.ndarray
    """float32 [n, dim]."""
    read_until: dt.datetime | None
    """Newest ``created_at`` among every row the query read (fresh or not): a reader's next cursor."""


def read_fresh(bind: Connection | Session, basis: FreshBasis, *, after: dt.datetime | None = None) -> FreshRows:
    """The fresh set of ``basis``'s index — *the* definition, used by the worker and the service.

    An image is fresh when it is servable (image and item active), has a vector of the
    index's model with the index's dimension written after :attr:`FreshBasis.floor`,
    and either is not in the index or its vector is newer than the newest one the build
    included (it was re-embedded). See docs/ARCHITECTURE.md, "The fresh set".

    ``after`` (a reader's cursor less :data:`COMMIT_SLACK`) restricts the answer to
    vectors written after it, which is how the service follows the set incrementally;
    the answer is always a subset of the definition. One query, driven by the
    ``created_at`` index, so its cost follows the fresh set, not the catalog.
    """
    bounds = [t for t in (basis.floor, after) if t is not None]
    since = max(bounds) if bounds else None
    # With a bound the created_at range is the selective condition. Left a choice,
    # SQLite (no statistics) takes any equality over a range: it reads every vector of
    # the model through the model_id index, or every active image through the status
    # index, on each poll. So those columns are kept off their indexes.
    backend = backend_of(bind) if since is not None else None
    query = (
        select(Embedding.image_id, Embedding.created_at, Embedding.vector)
        .join(ItemImage, ItemImage.id == Embedding.image_id)
        .join(Item, Item.id == ItemImage.item_id)
        .where(no_index(Embedding.model_id, backend) == basis.model_id,
               Embedding.dim == basis.dim,
               no_index(ItemImage.status, backend) == ImageStatus.ACTIVE,
               no_index(Item.status, backend) == ItemStatus.ACTIVE)
    )
    if since is not None:
        query = query.where(Embedding.created_at > since)
    rows = sorted(bind.execute(query).all(), key=lambda r: r.image_id)
    read_until = max((r.created_at for r in rows), default=None)
    ids = np.fromiter((r.image_id for r in rows), np.int64, len(rows))
    newest = basis.newest_in_index
    newer = np.fromiter((newest is None or r.created_at > newest for r in rows), bool, len(rows))
    keep = (basis.index.rows_of(ids) < 0) | newer
    return FreshRows(
        image_ids=ids[keep],
        vectors=decode_vectors([r.vector for r, k in zip(rows, keep.tolist()) if k], basis.dim),
        read_until=read_until,
    )


def fresh_image_ids(session: Session, index_version: str | None = None) -> np.ndarray:
    """The ids of :func:`read_fresh`'s set for an index version (default: the active index).

    What the worker's rebuild threshold counts. With no active index there is
    nothing to be fresh against: empty.
    """
    query = select(IndexVersion)
    if index_version is None:
        row = session.scalar(query.where(IndexVersion.status == IndexStatus.ACTIVE))
        if row is None:
            return np.empty(0, np.int64)
    else:
        row = session.scalar(query.where(IndexVersion.version == index_version))
        if row is None:
            raise EmbeddingStoreError(f"index version {index_version!r} does not exist")
    with VectorIndex.load(Path(row.path)) as index:
        basis = FreshBasis(row.model_id, index.manifest.dim, row.max_embedding_created_at, index)
        return read_fresh(session, basis).image_ids


def count_written_since(session: Session, model_id: int, since: dt.datetime) -> int:
    """How many vectors of ``model_id`` were written at or after ``since`` (a cheap progress probe)."""
    return session.scalar(
        select(func.count()).select_from(Embedding)
        .where(Embedding.model_id == model_id, Embedding.created_at >= since)
    ) or 0
