"""Brute-force exact nearest neighbours with Annoy's distance definitions, and recall@k.

Used as ground truth (index verification, benchmarks) and to search the handful of
fresh items that are not in the published index yet.

Memory stays bounded: the reference is scanned in blocks of ``chunk_size`` rows and
queries in blocks sized so one score block is ~8 MB, keeping only a running top-k.
Candidates are picked with a float32 matrix product, then the best few are re-scored
in float64 from the raw vectors, so near-ties are ordered as Annoy's direct formulas
order them rather than by ``|q|^2 - 2 q.r + |r|^2`` rounding noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.index.manifest import Metric
from core.index.validate import check_positive_int

_SCORE_BLOCK_ELEMENTS = 1 << 21  # float32 scores per (query block x reference block)
_RESCORE_BLOCK_ELEMENTS = 1 << 20  # float64 values gathered per re-scoring step
_MAX_QUERY_BLOCK = 4096


def exact_search(
    reference: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    metric: Metric,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices [m, k'] and distances [m, k'] (k' = min(k, n)), best first.

    Distances as Annoy reports them: euclidean L2; angular ``sqrt(2 - 2 cos)``
    (a zero vector has cos 0); dot: the dot product itself, largest first.
    """
    metric = Metric(metric)
    k = check_positive_int(k, "k")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    reference = _as_2d(reference, "reference")
    queries = _as_2d(queries, "queries")
    if reference.shape[1] != queries.shape[1]:
        raise ValueError(
            f"dimension mismatch: reference is {reference.shape[1]}-d, queries {queries.shape[1]}-d"
        )
    n, m = len(reference), len(queries)
    if n == 0:
        raise ValueError("reference is empty")
    k = min(k, n)
    pool = min(n, k + max(8, k // 2))  # float32 candidates re-scored in float64

    ref32 = reference.astype(np.float32, copy=False)
    q32 = queries.astype(np.float32, copy=False)
    if metric is Metric.ANGULAR:
        ref32, q32 = _normalise(ref32), _normalise(q32)
    ref_sq = np.einsum("ij,ij->i", ref32, ref32) if metric is Metric.EUCLIDEAN else None

    out_rows = np.empty((m, k), dtype=np.int64)
    out_dist = np.empty((m, k), dtype=np.float32)
    q_block = max(1, min(_MAX_QUERY_BLOCK, _SCORE_BLOCK_ELEMENTS // min(chunk_size, n)))
    for q0 in range(0, m, q_block):
        qb = q32[q0:q0 + q_block]
        best_cost = np.empty((len(qb), 0), dtype=np.float32)
        best_rows = np.empty((len(qb), 0), dtype=np.int64)
        for r0 in range(0, n, chunk_size):
            # cost: smaller is better; for euclidean |q|^2 is constant per row, so omitted
            cost = qb @ ref32[r0:r0 + chunk_size].T
            if ref_sq is not None:
                cost *= -2.0
                cost += ref_sq[r0:r0 + chunk_size]
            else:
                np.negative(cost, out=cost)
            best_cost, best_rows = _merge(best_cost, best_rows, cost, r0, pool)
        rows, dist = _rescore(reference, queries[q0:q0 + q_block], best_rows, metric, k)
        out_rows[q0:q0 + len(qb)] = rows
        out_dist[q0:q0 + len(qb)] = dist
    return out_rows, out_dist


def _merge(best_cost: np.ndarray, best_rows: np.ndarray, cost: np.ndarray, r0: int,
           pool: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``pool`` lowest costs among earlier survivors and a chunk starting at row r0.

    A function of its own so the big temporaries die on return, before the next chunk.
    """
    kept = best_cost.shape[1]
    cost = np.concatenate([best_cost, cost], axis=1)
    if cost.shape[1] > pool:
        part = np.argpartition(cost, pool - 1, axis=1)[:, :pool]
    else:
        part = np.broadcast_to(np.arange(cost.shape[1]), cost.shape)
    # columns < kept are earlier survivors, the rest are rows of this chunk
    if kept:
        earlier = np.take_along_axis(best_rows, np.minimum(part, kept - 1), axis=1)
        rows = np.where(part < kept, earlier, r0 + part - kept)
    else:
        rows = r0 + part
    return np.take_along_axis(cost, part, axis=1), rows


def _rescore(reference: np.ndarray, queries: np.ndarray, cand: np.ndarray, metric: Metric,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 distances for the candidate rows; keep the best ``k`` of each."""
    step = max(1, _RESCORE_BLOCK_ELEMENTS // (cand.shape[1] * reference.shape[1]))
    parts = [_rescore_block(reference, queries[i:i + step], cand[i:i + step], metric, k)
             for i in range(0, len(cand), step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _rescore_block(reference: np.ndarray, queries: np.ndarray, cand: np.ndarray,
                   metric: Metric, k: int) -> tuple[np.ndarray, np.ndarray]:
    r = reference[cand].astype(np.float64)          # [b, pool, d]
    q = queries.astype(np.float64)[:, None, :]      # [b, 1, d]
    if metric is Metric.EUCLIDEAN:
        dist = np.sqrt(((r - q) ** 2).sum(axis=2))
        key = dist
    elif metric is Metric.ANGULAR:
        rn, qn = np.linalg.norm(r, axis=2), np.linalg.norm(q, axis=2)
        denom = rn * qn
        cos = np.divide((r * q).sum(axis=2), denom, out=np.zeros_like(denom), where=denom > 0)
        dist = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
        key = dist
    else:
        dist = (r * q).sum(axis=2)
        key = -dist
    # stable on the row number too, so ties come out in a deterministic order
    order = np.lexsort((cand, key), axis=1)[:, :k]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(dist, order, axis=1)


def recall_at_k(approx: np.ndarray | Sequence[Sequence[int]], exact: np.ndarray) -> float:
    """Mean over queries of ``|approx_i ∩ exact_i| / k``, with ``k = exact.shape[1]``.

    ``approx`` rows may be shorter than ``k`` (Annoy can return fewer hits); missing
    hits count as misses, and only the first ``k`` of a longer row count.
    """
    exact = np.asarray(exact)
    if exact.ndim != 2 or exact.shape[1] == 0:
        raise ValueError(f"exact must be 2-D [m, k] with k >= 1, got shape {exact.shape}")
    if len(approx) != len(exact):
        raise ValueError(f"approx has {len(approx)} rows, exact has {len(exact)}")
    if len(exact) == 0:
        raise ValueError("recall of zero queries is undefined")
    k = exact.shape[1]
    hits = sum(len(np.intersect1d(np.asarray(a)[:k], e)) for a, e in zip(approx, exact))
    return hits / (k * len(exact))


def _as_2d(array: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {arr.dtype}")
    return arr


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
