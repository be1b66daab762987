"""Helpers for the service tests: a small catalog with controlled vectors, published indexes."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CatalogRow, ImageRef, import_rows
from core.config import Settings
from core.db import Embedding, IndexStatus, IndexVersion, Item, ItemImage, ModelVersion, session_scope
from core.embeddings_store import put_vectors
from core.index import Metric, build_index
from core.index.metadata_table import add_metadata_table
from core.index.neighbours import add_neighbour_lists
from core.media import MediaStore
from core.publish import publish_index
from tests.worker.support import TINY_SPEC, register_tiny_model

DIM = TINY_SPEC.embedding_dim
_versions = itertools.count(1)


def png_bytes(seed: int, size: int = 24) -> bytes:
    """A small PNG whose bytes are unique to ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class Catalog:
    settings: Settings
    sessions: sessionmaker[Session]
    model_version: str
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    """external id -> {category, group, attributes, image_ids}."""
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    """image id -> vector (everything ever embedded for the model)."""
    index_version: str = ""

    def item_of_image(self) -> dict[int, str]:
        return {i: ext for ext, item in self.items.items() for i in item["image_ids"]}


def add_items(cat: Catalog, specs: Sequence[dict[str, Any]], *, seed_base: int) -> None:
    """Import items (``external_id``, ``category``, ``group``, ``attributes``, ``n_images``).

    ``photos`` (a list of image bytes) replaces the random photos of an item."""
    rows = []
    seeds = itertools.count(seed_base)
    for line, spec in enumerate(specs, 1):
        photos = spec.get("photos") or [png_bytes(next(seeds)) for _ in range(spec.get("n_images", 1))]
        refs = [ImageRef(uri=f"test:{spec['external_id']}/{j}", data=data) for j, data in enumerate(photos)]
        rows.append(CatalogRow(line=line, external_id=spec["external_id"], title=spec.get("title", spec["external_id"]),
                               category=spec.get("category"), group=spec.get("group"),
                               attributes=spec.get("attributes", {}), images=refs))
    report = import_rows(rows, sessions=cat.sessions, store=MediaStore.from_settings(cat.settings, fsync=False))
    assert not report.errors, report.errors
    with session_scope(cat.sessions) as s:
        for spec in specs:
            ids = list(s.scalars(select(ItemImage.id).join(Item).where(Item.external_id == spec["external_id"])
                                 .order_by(ItemImage.position, ItemImage.id)))
            cat.items[spec["external_id"]] = {"category": spec.get("category"), "group": spec.get("group"),
                                              "attributes": spec.get("attributes", {}), "image_ids": ids}


def model_id(sessions: sessionmaker[Session], version: str) -> int:
    with session_scope(sessions) as s:
        return s.scalar(select(ModelVersion.id).where(ModelVersion.version == version))


def embed(cat: Catalog, image_ids: Sequence[int], vectors: np.ndarray) -> None:
    """Store vectors for the catalog's model (as the worker's embed step would)."""
    with session_scope(cat.sessions) as s:
        put_vectors(s, model_id(cat.sessions, cat.model_version), list(image_ids), vectors, replace=True)
    for i, v in zip(image_ids, vectors):
        cat.vectors[int(i)] = np.asarray(v, np.float32)


def publish(cat: Catalog, image_ids: Sequence[int], *, metric: Metric = Metric.EUCLIDEAN,
            lists_k: int = 0, table: bool = True) -> str:
    """Build an index over ``image_ids`` (their stored vectors) and publish it.

    ``lists_k`` > 0 adds exact neighbour lists of that length, and (``table``) the metadata
    table, as a reindex does."""
    version = f"i-test-{next(_versions):04d}"
    ids = np.asarray(sorted(int(i) for i in image_ids), dtype=np.int64)
    vectors = np.stack([cat.vectors[int(i)] for i in ids])
    directory = cat.settings.indexes_dir / version
    manifest = build_index(directory, ids, vectors, index_version=version, model_version=cat.model_version,
                           metric=metric, n_trees=10, n_jobs=1)
    if lists_k:
        manifest = add_neighbour_lists(directory, vectors, k=lists_k, exact_limit=len(ids), search_k=-1)
        if table:
            with session_scope(cat.sessions) as s:
                manifest = add_metadata_table(directory, s.connection())
    mid = model_id(cat.sessions, cat.model_version)
    with session_scope(cat.sessions) as s:
        newest = s.scalar(select(func.max(Embedding.created_at)).where(
            Embedding.model_id == mid, Embedding.image_id.in_([int(i) for i in ids])))
        s.add(IndexVersion(version=version, model_id=mid, path=str(directory), image_count=manifest.count,
                           item_count=manifest.count, status=IndexStatus.READY, n_trees=10,
                           max_embedding_created_at=newest))
    publish_index(cat.settings, cat.sessions, version)
    cat.index_version = version
    return version


def new_catalog(settings: Settings, sessions: sessionmaker[Session]) -> Catalog:
    version = register_tiny_model(settings, sessions)
    return Catalog(settings=settings, sessions=sessions, model_version=version)


def brute_force(cat: Catalog, query: np.ndarray, *, k: int, allowed: set[str] | None = None,
                exclude: set[str] = frozenset()) -> list[tuple[str, int, float]]:
    """Reference ranking: (external id, best image id, distance) for the k nearest items."""
    owner = cat.item_of_image()
    best: dict[str, tuple[float, int]] = {}
    for image_id, vector in cat.vectors.items():
        ext = owner.get(image_id)
        if ext is None or ext in exclude or (allowed is not None and ext not in allowed):
            continue
        d = float(np.linalg.norm(vector.astype(np.float64) - query.astype(np.float64)))
        if ext not in best or d < best[ext][0]:
            best[ext] = (d, image_id)
    ranked = sorted(best.items(), key=lambda kv: kv[1][0])[:k]
    return [(ext, image_id, d) for ext, (d, image_id) in ranked]
