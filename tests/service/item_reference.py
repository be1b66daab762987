"""Brute-force reference for similar-by-item with every embedded photo of the query item.

The rule under test (service/searcher/engine.py): a result item's distance is its
best (smallest) distance over all (query photo, result photo) pairs; the query item
is excluded; the first k items by that distance are the answer. Computed here with
numpy in float64 over every vector the test stored, independent of the index.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from service.searcher.engine import MAX_QUERY_PHOTOS
from tests.service.support import Catalog


def item_photo_vectors(cat: Catalog, external_id: str, limit: int = MAX_QUERY_PHOTOS) -> np.ndarray:
    """The vectors of the item's first ``limit`` embedded photos, in display order [m, dim]."""
    ids = [i for i in cat.items[external_id]["image_ids"] if i in cat.vectors][:limit]
    return np.stack([cat.vectors[i] for i in ids]).astype(np.float64)


def brute_force_photos(cat: Catalog, queries: np.ndarray, *, k: int, allowed: Iterable[str] | None = None,
                       exclude: Iterable[str] = ()) -> list[tuple[str, int, float]]:
    """(external id, best image id, distance) of the k items nearest to any of ``queries``."""
    allowed = None if allowed is None else set(allowed)
    exclude = set(exclude)
    owner = cat.item_of_image()
    image_ids = [i for i in cat.vectors if owner.get(i) is not None and owner[i] not in exclude
                 and (allowed is None or owner[i] in allowed)]
    if not image_ids:
        return []
    vectors = np.stack([cat.vectors[i] for i in image_ids]).astype(np.float64)
    # [images, query photos] -> the best pair of each image
    pair = np.linalg.norm(vectors[:, None, :] - np.asarray(queries, np.float64)[None, :, :], axis=2)
    per_image = pair.min(axis=1)
    best: dict[str, tuple[float, int]] = {}
    for image_id, d in zip(image_ids, per_image.tolist()):
        ext = owner[image_id]
        if ext not in best or d < best[ext][0]:
            best[ext] = (d, image_id)
    ranked = sorted(best.items(), key=lambda kv: kv[1][0])[:k]
    return [(ext, image_id, d) for ext, (d, image_id) in ranked]


def brute_force_item(cat: Catalog, external_id: str, *, k: int, allowed: Iterable[str] | None = None,
                     exclude: Iterable[str] = ()) -> list[tuple[str, int, float]]:
    """The reference answer of similar-by-item for ``external_id`` (itself excluded)."""
    return brute_force_photos(cat, item_photo_vectors(cat, external_id), k=k, allowed=allowed,
                              exclude={external_id, *exclude})
