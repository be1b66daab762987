"""Retrieval metrics of "A Metric Learning Reality Check" (Musgrave et al., 2020).

For a query ``q`` with label ``y`` let ``R`` be the number of references that share
``y`` (leaving ``q`` itself out when queries are the references). Ranking the
references by distance to ``q``:

- ``precision_at_1`` / ``recall_at_k``: is the nearest neighbour relevant / is any
  of the ``k`` nearest relevant (the "Recall@K" of metric-learning papers);
- ``r_precision``: the fraction of relevant items among the ``R`` nearest;
- ``map_at_r``: ``1/R * sum_{i<=R} P(i) * rel(i)``, average precision cut at ``R``,
  which rewards putting the relevant items first, not merely among the first ``R``.

Queries with ``R = 0`` ("lone" queries) are skipped and counted, as the paper does.
Memory stays bounded: queries are processed in chunks sized so that one chunk's
distance row block fits ``memory_budget_bytes``, which lets 100,000 embeddings
evaluate leave-one-out without a 100,000² matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024
_BYTES_PER_CELL = 48
"""Peak bytes per (query, reference) cell of a chunk: the float32 distances, top-k's
workspace, and the per-rank masks and counts; measured by bench/bench_quality.py."""


@dataclass(frozen=True)
class RetrievalMetrics:
    """Averages over the non-lone queries; ``recall_at_k`` maps k -> Recall@k."""

    precision_at_1: float
    r_precision: float
    map_at_r: float
    recall_at_k: dict[int, float] = field(default_factory=dict)
    n_queries: int = 0
    n_lone: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-safe dict (``recall@5`` etc.), the shape stored in the registry."""
        out = {k: v for k, v in asdict(self).items() if k != "recall_at_k"}
        out.update({f"recall@{k}": v for k, v in sorted(self.recall_at_k.items())})
        return out


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: Sequence[Any] | np.ndarray,
    references: np.ndarray | None = None,
    reference_labels: Sequence[Any] | np.ndarray | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    chunk_size: int | None = None,
) -> RetrievalMetrics:
    """Metrics of ranking ``references`` by Euclidean distance to each query.

    Without ``references`` the evaluation is leave-one-out: every embedding queries
    all the others. Labels may be any hashable values (ints, strings).
    ``chunk_size`` forces the number of queries per chunk (tests use it to check
    that chunking does not change the result).
    """
    q = _as_matrix(queries, "queries")
    leave_one_out = references is None
    if leave_one_out:
        if reference_labels is not None:
            raise ValueError("reference_labels given without references")
        r, reference_labels = q, query_labels
    else:
        if reference_labels is None:
            raise ValueError("references given without reference_labels")
        r = _as_matrix(references, "references")
        if r.shape[1] != q.shape[1]:
            raise ValueError(f"dimension mismatch: queries are {q.shape[1]}-d, references {r.shape[1]}-d")
    q_codes, r_codes = _encode_labels(query_labels, reference_labels, len(q), len(r))
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")

    counts = np.bincount(r_codes, minlength=int(max(q_codes.max(), r_codes.max())) + 1)
    relevant = counts[q_codes] - (1 if leave_one_out else 0)  # R per query
    n_rankable = len(r) - (1 if leave_one_out else 0)
    if chunk_size is None:
        chunk_size = max(1, memory_budget_bytes // (_BYTES_PER_CELL * max(len(r), 1)))

    qt, rt = torch.from_numpy(q), torch.from_numpy(r)
    r_sq = (rt * rt).sum(1)
    r_codes_t = torch.from_numpy(r_codes)
    sums = {"p1": 0.0, "rp": 0.0, "map": 0.0}
    hits = dict.fromkeys(ks, 0.0)
    n_used = 0
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        rel = torch.from_numpy(relevant[start:stop])
        keep = rel > 0
        if not bool(keep.any()):
            continue
        # |q|^2 is constant per row, so it does not change the ranking: leave it out.
        # In place, so that a chunk holds one distance block: r_sq - 2 q.r
        dist = torch.matmul(qt[start:stop], rt.T).mul_(-2.0).add_(r_sq)
        if leave_one_out:
            rows = torch.arange(stop - start)
            dist[rows, rows + start] = float("inf")
        if not bool(keep.all()):
            dist, rel = dist[keep], rel[keep]
        q_lab = torch.from_numpy(q_codes[start:stop])[keep]
        depth = min(n_rankable, max(int(rel.max()), ks[-1]))
        _, order = torch.topk(dist, depth, dim=1, largest=False, sorted=True)
        del dist
        match = r_codes_t[order] == q_lab.unsqueeze(1)  # [rows, depth] bool
        _accumulate(match, rel, ks, sums, hits)
        n_used += int(keep.sum())

    n_lone = len(q) - n_used
    if n_used == 0:
        nan = float("nan")
        return RetrievalMetrics(nan, nan, nan, dict.fromkeys(ks, nan), 0, n_lone)
    return RetrievalMetrics(
        precision_at_1=sums["p1"] / n_used,
        r_precision=sums["rp"] / n_used,
        map_at_r=sums["map"] / n_used,
        recall_at_k={k: hits[k] / n_used for k in ks},
        n_queries=n_used,
        n_lone=n_lone,
    )


def _accumulate(
    match: torch.Tensor, rel: torch.Tensor, ks: list[int], sums: dict[str, float], hits: dict[int, float]
) -> None:
    """Add one chunk's per-query precision@1, R-precision, MAP@R and Recall@k hits.

    Per-cell work stays in bool / int32; float64 only for the relevant positions
    within R, so the sums are exact whatever the chunking.
    """
    rows, depth = match.shape
    within_r = torch.arange(depth).unsqueeze(0) < rel.unsqueeze(1)  # the first R positions
    relevant = match & within_r
    correct_so_far = relevant.cumsum(1, dtype=torch.int32)
    row_idx, col_idx = relevant.nonzero(as_tuple=True)
    precision_at_hits = correct_so_far[row_idx, col_idx].to(torch.float64) / (col_idx + 1).to(torch.float64)
    ap = torch.zeros(rows, dtype=torch.float64).index_add_(0, row_idx, precision_at_hits)
    rel64 = rel.to(torch.float64)
    sums["p1"] += float(match[:, 0].sum())
    sums["rp"] += float((correct_so_far[:, -1].to(torch.float64) / rel64).sum())
    sums["map"] += float((ap / rel64).sum())
    for k in ks:
        hits[k] += float(match[:, : min(k, depth)].any(1).sum())


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [n, dim], got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(arr)


def _encode_labels(
    query_labels: Sequence[Any] | np.ndarray, reference_labels: Sequence[Any] | np.ndarray, n_q: int, n_r: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary labels to shared dense int64 codes."""
    ql, rl = list(np.asarray(query_labels).tolist()), list(np.asarray(reference_labels).tolist())
    if len(ql) != n_q or len(rl) != n_r:
        raise ValueError(
            f"labels do not match embeddings: {len(ql)} query labels for {n_q} queries, "
            f"{len(rl)} reference labels for {n_r} references"
        )
    table: dict[Any, int] = {}
    q_codes = np.fromiter((table.setdefault(v, len(table)) for v in ql), dtype=np.int64, count=n_q)
    r_codes = np.fromiter((table.setdefault(v, len(table)) for v in rl), dtype=np.int64, count=n_r)
    return q_codes, r_codes
