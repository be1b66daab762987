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
    COMMIT_SLACK,
    EmbeddingStoreError,
    FreshBasis,
    decode_vectors,
    encode_vector,
    fresh_image_ids,
    load_vectors,
    missing_image_ids,
    put_vectors,
    read_fresh,
    snapshot_vectors,
)
from core.index import Metric, VectorIndex, build_index
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
        listed = load_vectors(s, model, [images[5], images[1], images[0]], dim=8)
        other_dim = load_vectors(s, model, images, dim=4)  # an index of another dimension cannot use them
    assert ids.tolist() == images[:4]
    np.testing.assert_array_equal(loaded, vectors[:4])
    assert listed[0].tolist() == images[:2]
    np.testing.assert_array_equal(listed[1], vectors[:2])
    assert other_dim[0].size == 0 and other_dim[1].shape == (0, 4)


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
        assert missing_image_ids(s, model) == []


def _set_created(sessions: sessionmaker[Session], model_id: int, stamps: dict[int, dt.datetime]) -> None:
    with session_scope(sessions) as s:
        for image_id, at in stamps.items():
            s.execute(update(Embedding).where(Embedding.image_id == image_id, Embedding.model_id == model_id)
                      .values(created_at=at))


def _publish(settings: Settings, sessions: sessionmaker[Session], model_id: int, indexed: list[int],
             newest: dt.datetime) -> None:
    """A real index over the stored vectors of ``indexed``, active, built at ``newest``."""
    with session_scope(sessions) as s:
        ids, vectors = load_vectors(s, model_id, indexed)
    directory = settings.indexes_dir / "i1"
    build_index(directory, ids, vectors, index_version="i1", model_version="m1", metric=Metric.EUCLIDEAN,
                n_trees=2, n_jobs=1)
    with session_scope(sessions) as s:
        s.add(IndexVersion(version="i1", model_id=model_id, path=str(directory), status=IndexStatus.ACTIVE,
                           max_embedding_created_at=newest))


def _brute_force_fresh(sessions: sessionmaker[Session], model_id: int, dim: int, indexed: set[int],
                       newest: dt.datetime, after: dt.datetime | None = None) -> list[int]:
    """The fresh set's definition (docs/ARCHITECTURE.md), row by row over the whole embeddings table."""
    fresh = []
    with session_scope(sessions) as s:
        for e in s.query(Embedding).order_by(Embedding.image_id):
            image = s.get(ItemImage, e.image_id)
            servable = image.status is ImageStatus.ACTIVE and s.get(Item, image.item_id).status is ItemStatus.ACTIVE
            if (servable and e.model_id == model_id and e.dim == dim and e.created_at > newest - COMMIT_SLACK
                    and (after is None or e.created_at > after)
                    and (e.image_id not in indexed or e.created_at > newest)):
                fresh.append(e.image_id)
    return fresh


def test_the_fresh_set_is_what_the_served_index_lacks_or_holds_stale(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    images = _catalog(sessions, 12)
    model, other = _model(sessions, "m1"), _model(sessions, "m2")
    vectors = _vectors(12)
    built = utcnow().replace(microsecond=0) - dt.timedelta(hours=1)
    with session_scope(sessions) as s:
        put_vectors(s, other, images, _vectors(12, seed=9))  # another model's vectors never count
        put_vectors(s, model, images[:7], vectors[:7])
    # Before the build: 0-4 long before, 5 the newest the build read, 6 committed late (within the
    # slack) and missed by it.
    _set_created(sessions, model, {**{i: built - dt.timedelta(hours=1) for i in images[:5]},
                                   images[5]: built, images[6]: built - dt.timedelta(seconds=2)})
    with session_scope(sessions) as s:
        assert fresh_image_ids(s).size == 0  # no active index: nothing to be fresh against
    indexed = [images[i] for i in (0, 1, 2, 3, 5)]  # 4 was not servable at build time: never fresh
    _publish(settings, sessions, model, indexed, built)

    with session_scope(sessions) as s:
        put_vectors(s, model, images[7:9], vectors[7:9])  # after the build
        put_vectors(s, model, images[1:2], vectors[11:12], replace=True)  # re-embedded: the index is stale
        put_vectors(s, model, images[9:10], _vectors(1, dim=4))  # the model's, but not the index's dimension
        put_vectors(s, model, images[11:12], vectors[11:12])
        s.execute(update(Item).where(Item.id == s.get(ItemImage, images[8]).item_id)
                  .values(status=ItemStatus.DELETED))  # a deleted item is never fresh
        s.execute(update(ItemImage).where(ItemImage.id == images[11]).values(status=ImageStatus.REMOVED))
    _set_created(sessions, model, {images[7]: built + dt.timedelta(seconds=1),
                                   images[8]: built + dt.timedelta(seconds=1),
                                   images[1]: built + dt.timedelta(seconds=3),
                                   images[9]: built + dt.timedelta(seconds=1),
                                   images[11]: built + dt.timedelta(seconds=1)})

    expected = [images[1], images[6], images[7]]
    assert _brute_force_fresh(sessions, model, 8, set(indexed), built) == expected
    with session_scope(sessions) as s:
        assert fresh_image_ids(s).tolist() == expected
        assert fresh_image_ids(s, "i1").tolist() == expected
        with pytest.raises(EmbeddingStoreError, match="nope"):
            fresh_image_ids(s, "nope")
        with VectorIndex.load(settings.indexes_dir / "i1") as index:
            basis = FreshBasis(model, 8, built, index)
            rows = read_fresh(s, basis)
            assert rows.image_ids.tolist() == expected
            np.testing.assert_array_equal(rows.vectors, np.stack([vectors[11], vectors[6], vectors[7]]))
            assert rows.read_until == built + dt.timedelta(seconds=3)
            # Followed from a cursor: only what was written after it, never more than the set.
            later = built + dt.timedelta(seconds=2)
            assert read_fresh(s, basis, after=later).image_ids.tolist() == [images[1]]
            assert _brute_force_fresh(sessions, model, 8, set(indexed), built, after=later) == [images[1]]
            assert read_fresh(s, basis, after=built - dt.timedelta(days=1)).image_ids.tolist() == expected
