"""self_recall: the pre-publish check, against a plain brute-force computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.index import Metric, VectorIndex, build_index
from core.index.verify import self_recall


@pytest.fixture
def built(tmp_path: Path) -> tuple[VectorIndex, np.ndarray]:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64)[::-1] * 10  # ids differ from rows
    build_index(tmp_path / "v1", ids, vectors, index_version="v1", model_version="m1",
                metric=Metric.EUCLIDEAN, n_trees=2)
    return VectorIndex.load(tmp_path / "v1"), vectors


def test_exhaustive_search_scores_one(built) -> None:
    index, vectors = built
    assert self_recall(index, vectors, sample_size=100, search_k=10**6) == 1.0


def test_matches_brute_force_and_excludes_the_item_itself(built) -> None:
    index, vectors = built
    got = self_recall(index, vectors, sample_size=500, k=5, search_k=6)
    hits = 0
    for row in range(500):
        d = np.linalg.norm(vectors - vectors[row], axis=1)
        d[row] = np.inf
        truth = set(index.ids[np.argsort(d)[:5]].tolist())
        found = [i for i in index.query(vectors[row], 6, search_k=6)[0] if i != index.ids[row]]
        hits += len(truth & set(found[:5]))
    assert got == pytest.approx(hits / (500 * 5))
    assert got < 0.9  # 2 trees and a tiny search_k on 32-d noise: a weak index scores low


def test_rejects_vectors_of_another_shape(built) -> None:
    index, vectors = built
    with pytest.raises(ValueError, match=r"\[500, 32\]"):
        self_recall(index, vectors[:10], sample_size=5)
