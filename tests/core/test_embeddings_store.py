"""The embeddings table: writing vectors, finding what is missing, snapshots, the fresh set."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
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
from core.db.types import utcnow
from core.embeddings_store import (
    EmbeddingStoreError,
    active_image_mask,
    decode_vectors,
    encode_vector,
    fresh_image_ids,
    fresh_set,
    load_vectors,
    missing_image_ids,
    put_vectors,
    snapshot_vectors,
)
from core.index.manifest import IDS_FILE
from core.registry import get_model, register_model


def _catalog(sessions: sessionmaker[Session], n_items: int, images_per_item: int = 1) -> list[int]:
    """Items with fake media keys; returns the image ids in creation order."""
    ids = []
    with session_scope(sessions) as s:
        for i in range(n_items):
            item = Item(external_id=f"sku-{i}", title=f"item {i}")
            s.add(item)
            s.flush()
            for j in range(images_per_item):
                image = ItemImage(item_id=item.id, position=j, media_key=f"{i:032x}{j:032x}", width=1, height=1)
                s.add(image)
                s.flush()
                ids.append(image.id)
    return ids


def _model(sessions: sessionmaker[Session], version: str = "m1") -> int:
    register_model(sessions, checkpoint_path=Path(f"{version}.pt"), spec={}, version=version)
    return get_model(sessions, version).id


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_vectors_round_trip_as_little_endian_float32() -> None:
    v = _vectors(3)
    blobs = [encode_vector(row) for row in v]
    assert blobs[0] == np.asarray(v[0], "<f4").tobytes()
    np.testing.assert_array_equal(decode_vectors(blobs, 8), v)
    with pytest.raises(EmbeddingStoreError, match="dimension 4"):
        decode_vectors(blobs, 4)


def test_put_missing_and_load(sessions: sessionmaker[Session]) -> None:
    images = _catalog(sessions, 6)
    model = _model(sessions)
    vectors = _vectors(6)
    with session_scope(sessions) as s:
        assert missing_image_ids(s, model) == images
        assert put_vectors(s, model, images[:4], vectors[:4]) == 4
    with session_scope(sessions) as s:
        assert missing_image_ids(s, model) == images[4:]
        assert missing_image_ids(s, model, among=[images[0], images[5], 10**6]) == [images[5]]
        ids, loaded = load_vectors(s, model)
    assert ids.tolist() == images[:4]
    np.testing.assert_array_equal(loaded, vectors[:4])


def test_put_is_idempotent_unless_replacing(sessions: sessionmaker[Session]) -> None:
    images = _catalog(sessions, 2)
    model = _model(sessions)
    first, second = _vectors(2, seed=1), _vectors(2, seed=2)
    with session_scope(sessions) as s:
        put_vectors(s, model, images, first)
    with session_scope(sessions) as s:
        assert put_vectors(s, model, images, second) == 0  # a retry or a racing worker: no change
        _, kept = load_vectors(s, model, images)
    np.testing.assert_array_equal(kept, first)
    with session_scope(sessions) as s:
        put_vectors(s, model, images[:1], second[:1], replace=True)
        _, now = load_vectors(s, model, images)
    np.testing.assert_array_equal(now, np.stack([second[0], first[1]]))


def test_put_rejects_a_count_mismatch(sessions: sessionmaker[Session]) -> None:
    images = _catalog(sessions, 2)
    model = _model(sessions)
    with session_scope(sessions) as s, pytest.raises(EmbeddingStoreError, match="one vector per image"):
        put_vectors(s, model, images, _vectors(3))


def test_deleted_items_and_removed_images_are_neither_missing_nor_snapshotted(sessions: sessionmaker[Session]) -> None:
    images = _catalog(sessions, 3, images_per_item=2)  # items 0..2, two images each
    model = _model(sessions)
    with session_scope(sessions) as s:
        put_vectors(s, model, images, _vectors(6))
        first_item = s.get(ItemImage, images[0]).item_id
        s.execute(update(Item).where(Item.id == first_item).values(status=ItemStatus.DELETED))
        s.execute(update(ItemImage).where(ItemImage.id == images[3]).values(status=ImageStatus.REMOVED))
    with session_scope(sessions) as s:
        snap = snapshot_vectors(s, model)
        assert snap.image_ids.tolist() == [images[2], images[4], images[5]]
        assert len(np.unique(snap.item_ids)) == 2
        assert active_image_mask(s, images).tolist() == [False, False, True, False, True, True]
        assert missing_image_ids(s, model) == []


def _index(settings: Settings, sessions: sessionmaker[Session], model_id: int, version: str,
           indexed: list[int], newest: dt.datetime | None, status: IndexStatus = IndexStatus.ACTIVE) -> None:
    """An index row plus the ids file the fresh set reads (the only file it needs)."""
    directory = settings.indexes_dir / version
    directory.mkdir(parents=True)
    np.save(directory / IDS_FILE, np.asarray(indexed, dtype=np.int64))
    with session_scope(sessions) as s:
        s.add(IndexVersion(version=version, model_id=model_id, path=str(directory), status=status,
                           max_embedding_created_at=newest))


def test_fresh_set_is_what_the_index_lacks_or_holds_stale(settings: Settings, sessions: sessionmaker[Session]) -> None:
    images = _catalog(sessions, 6)
    model, other = _model(sessions, "m1"), _model(sessions, "m2")
    vectors = _vectors(6)
    with session_scope(sessions) as s:
        put_vectors(s, model, images[:4], vectors[:4])
        put_vectors(s, other, images, _vectors(6, seed=9))  # another model's vectors never count
    with session_scope(sessions) as s:
        newest = max(e.created_at for e in s.query(Embedding).filter(Embedding.model_id == model))
    assert fresh_set(sessions) [0].size == 0  # no active index: nothing to be fresh against
    _index(settings, sessions, model, "i1", images[:3], newest)

    with session_scope(sessions) as s:
        # images[3] was embedded but not indexed (committed while the build read its snapshot)
        assert fresh_image_ids(s).tolist() == [images[3]]
        put_vectors(s, model, images[4:], vectors[4:])  # arrived after the build
        # images[0] changed and was re-embedded: the index holds a stale vector for it
        put_vectors(s, model, images[:1], vectors[5:6], replace=True)
        s.execute(update(Embedding).where(Embedding.image_id == images[0])
                  .values(created_at=utcnow() + dt.timedelta(seconds=1)))
    ids, fresh = fresh_set(sessions)
    assert ids.tolist() == [images[0], images[3], images[4], images[5]]
    np.testing.assert_array_equal(fresh, np.stack([vectors[5], vectors[3], vectors[4], vectors[5]]))

    with session_scope(sessions) as s:  # a deleted item is never fresh
        item = s.get(ItemImage, images[4]).item_id
        s.execute(update(Item).where(Item.id == item).values(status=ItemStatus.DELETED))
    assert fresh_set(sessions)[0].tolist() == [images[0], images[3], images[5]]
    assert fresh_set(sessions, "i1")[0].tolist() == [images[0], images[3], images[5]]
    with pytest.raises(EmbeddingStoreError, match="nope"):
        fresh_set(sessions, "nope")
