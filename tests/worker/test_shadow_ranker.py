"""The shadow replay's exact item search matches a brute-force reference (several photos per item)."""

from __future__ import annotations

import numpy as np
import pytest

from core.embeddings_store import VectorSnapshot
from core.index import Metric
from worker.flows.shadow import _Ranker


@pytest.mark.parametrize("metric", [Metric.EUCLIDEAN, Metric.ANGULAR])
def test_item_distances_and_ranks_match_brute_force(metric: Metric) -> None:
    rng = np.random.default_rng(3)
    photos = rng.integers(1, 4, size=40)  # 1-3 photos per item
    item_ids = np.repeat(np.arange(100, 140), photos)
    order = rng.permutation(len(item_ids))  # snapshots are in image-id order, not item order
    image_ids = np.arange(1, len(item_ids) + 1)
    item_ids = item_ids[order]
    vectors = rng.normal(size=(len(item_ids), 8)).astype(np.float32)
    external_of = {int(i): f"sku-{item}" for i, item in zip(image_ids, item_ids, strict=True)}
    ranker = _Ranker(VectorSnapshot(image_ids, item_ids, vectors, None), external_of, metric)

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        if metric is Metric.ANGULAR:
            return float(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return float(np.linalg.norm(a - b))

    names = [f"sku-{item}" for item in range(100, 140)]
    for query, row in zip(names, ranker.distances_of(names), strict=True):
        mine = vectors[item_ids == int(query[4:])]
        reference = {name: min(distance(a, b) for a in mine for b in vectors[item_ids == int(name[4:])])
                     for name in names if name != query}
        ranked = sorted(reference, key=reference.get)
        assert ranker.top(row, 5) == set(ranked[:5])
        assert np.isinf(row[ranker.position[query]])
        assert ranker.within(row, ranked[4], 5) and not ranker.within(row, ranked[5], 5)
