"""The publish gate's self-recall: the item left out of its own results, as users see them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from core.embeddings_store import VectorSnapshot
from core.index import Metric, VectorIndex, build_index
from worker.flows.index_build import VERIFY_K, verify_recall


def test_the_gate_scores_neighbours_other_than_the_item_itself(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 400
    vectors = rng.standard_normal((n, 32)).astype(np.float32)
    snapshot = VectorSnapshot(image_ids=np.arange(n, dtype=np.int64) * 7 + 1, item_ids=np.arange(n, dtype=np.int64),
                              vectors=vectors, max_created_at=dt.datetime(2026, 1, 1))
    build_index(tmp_path / "v1", snapshot.image_ids, vectors, index_version="v1", model_version="m1",
                metric=Metric.EUCLIDEAN, n_trees=2)
    search_k = 30  # a weak index on 32-d noise, so misses happen
    got = verify_recall(tmp_path / "v1", snapshot, Metric.EUCLIDEAN, "m1", sample_size=n, search_k=search_k)

    index = VectorIndex.load(tmp_path / "v1")
    hits = with_self_hits = 0
    for row in range(n):  # brute force over every row (the sample is all of them)
        d = np.linalg.norm(vectors - vectors[row], axis=1)
        found = index.query(vectors[row], VERIFY_K + 1, search_k=search_k)[0]
        own = snapshot.image_ids[row]
        with_self = set(snapshot.image_ids[np.argsort(d)[:VERIFY_K]].tolist())
        with_self_hits += len(with_self & set(list(found)[:VERIFY_K]))
        d[row] = np.inf
        truth = set(snapshot.image_ids[np.argsort(d)[:VERIFY_K]].tolist())
        hits += len(truth & set([i for i in found if i != own][:VERIFY_K]))
    index.close()
    assert got == pytest.approx(hits / (n * VERIFY_K))
    # Counting the item as its own neighbour (the gate's old definition) flatters the score.
    assert with_self_hits / (n * VERIFY_K) > got + 0.02


def test_an_index_that_does_not_hold_the_snapshot_in_order_is_refused(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    ids = np.arange(20, dtype=np.int64)
    build_index(tmp_path / "v1", ids, vectors, index_version="v1", model_version="m1",
                metric=Metric.EUCLIDEAN, n_trees=2)
    other = VectorSnapshot(image_ids=ids + 100, item_ids=ids, vectors=vectors, max_created_at=None)
    with pytest.raises(RuntimeError, match="does not hold the snapshot's images"):
        verify_recall(tmp_path / "v1", other, Metric.EUCLIDEAN, "m1", sample_size=10)
