"""exact_search against a naive full distance matrix, and recall_at_k by hand."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from core.index import Metric, exact_search, recall_at_k


def naive(reference: np.ndarray, queries: np.ndarray, k: int, metric: Metric):
    """Full float64 distance matrix and a stable sort: the obvious reference."""
    r, q = reference.astype(np.float64), queries.astype(np.float64)
    if metric is Metric.EUCLIDEAN:
        dist = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=2))
        key = dist
    elif metric is Metric.ANGULAR:
        cos = np.zeros((len(q), len(r)))
        for i in range(len(q)):
            for j in range(len(r)):
                nq, nr = np.linalg.norm(q[i]), np.linalg.norm(r[j])
                cos[i, j] = q[i] @ r[j] / (nq * nr) if nq > 0 and nr > 0 else 0.0
        dist = np.sqrt(np.maximum(2 - 2 * cos, 0))
        key = dist
    else:
        dist = q @ r.T
        key = -dist
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("chunk_size", [1, 37, 4096])
def test_matches_naive_bruteforce(metric: Metric, chunk_size: int) -> None:
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((300, 12)).astype(np.float32)
    queries = rng.standard_normal((25, 12)).astype(np.float32)
    rows, dist = exact_search(reference, queries, 7, metric=metric, chunk_size=chunk_size)
    want_rows, want_dist = naive(reference, queries, 7, metric)
    assert rows.shape == dist.shape == (25, 7)
    assert rows.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-5, atol=1e-6)


def test_dot_reports_dot_product_largest_first() -> None:
    reference = np.array([[1, 0], [3, 0], [2, 0], [-5, 0]], dtype=np.float32)
    rows, dist = exact_search(reference, np.array([[1.0, 0.0]], np.float32), 3, metric=Metric.DOT)
    assert rows.tolist() == [[1, 2, 0]]
    assert dist.tolist() == [[3.0, 2.0, 1.0]]


def test_angular_zero_vectors_are_at_sqrt2() -> None:
    reference = np.array([[0, 0], [1, 0], [-1, 0]], dtype=np.float32)
    rows, dist = exact_search(reference, np.array([[1.0, 0.0]], np.float32), 3,
                              metric=Metric.ANGULAR)
    assert rows.tolist() == [[1, 0, 2]]
    np.testing.assert_allclose(dist[0], [0.0, np.sqrt(2), 2.0], atol=1e-6)


def test_k_larger_than_reference_returns_all_rows() -> None:
    reference = np.eye(3, dtype=np.float32)
    rows, dist = exact_search(reference, reference, 10, metric=Metric.EUCLIDEAN)
    assert rows.shape == (3, 3)
    assert rows[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(dist[:, 0], 0.0)


def test_near_duplicates_are_ordered_exactly() -> None:
    """Differences far below float32 |q|^2 - 2q.r + |r|^2 rounding still order correctly."""
    base = np.full(64, 10.0, dtype=np.float32)
    far = base - np.arange(1, 51, dtype=np.float32)[:, None]  # more rows than the re-scored pool
    reference = np.concatenate([np.stack([base + 3e-3, base + 1e-3, base + 2e-3]), far])
    rows, _ = exact_search(reference, base[None, :], 3, metric=Metric.EUCLIDEAN)
    assert rows.tolist() == [[1, 2, 0]]


def test_memory_stays_bounded() -> None:
    """A 20k x 128 reference against 4,000 queries never holds the full score matrix."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((20_000, 128), dtype=np.float32)
    queries = rng.standard_normal((4_000, 128), dtype=np.float32)
    full_matrix_bytes = 4_000 * 20_000 * 4  # 320 MB
    tracemalloc.start()
    try:
        rows, _ = exact_search(reference, queries, 10, metric=Metric.EUCLIDEAN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < full_matrix_bytes / 2, f"peak {peak / 1e6:.0f} MB"
    # spot-check correctness on a few queries against a plain computation
    for i in (0, 1999, 3999):
        d = np.linalg.norm(reference.astype(np.float64) - queries[i], axis=1)
        assert rows[i].tolist() == np.argsort(d, kind="stable")[:10].tolist()


def test_exact_search_rejects_bad_input() -> None:
    ref = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_search(ref, np.zeros((2, 3), np.float32), 1, metric=Metric.EUCLIDEAN)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        exact_search(ref, ref, 0, metric=Metric.EUCLIDEAN)
    with pytest.raises(ValueError, match="2-D"):
        exact_search(ref[0], ref, 1, metric=Metric.EUCLIDEAN)
    with pytest.raises(ValueError, match="empty"):
        exact_search(ref[:0], ref, 1, metric=Metric.EUCLIDEAN)
    with pytest.raises(ValueError, match="not a valid Metric"):
        exact_search(ref, ref, 1, metric="cosine")  # type: ignore[arg-type]


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[4, 3, 9, 9], [0, 0, 0, 0]]), exact) == pytest.approx(2 / 8)
    # short rows count their missing hits as misses; only the first k of long rows count
    assert recall_at_k([[1], [5, 6, 7, 0, 8]], exact) == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="rows"):
        recall_at_k([[1, 2, 3, 4]], exact)
    with pytest.raises(ValueError, match="undefined"):
        recall_at_k(np.zeros((0, 3)), np.zeros((0, 3)))
