"""Self-recall check of a built index against exact search, run before publishing it."""

from __future__ import annotations

import numpy as np

from core.index.annoy_index import VectorIndex
from core.index.exact import exact_search, recall_at_k
from core.index.validate import check_positive_int, check_search_k


def self_recall(
    index: VectorIndex,
    vectors: np.ndarray,
    *,
    sample_size: int,
    k: int = 10,
    search_k: int = -1,
    seed: int = 0,
) -> float:
    """recall@k of ``index`` on a random sample of its own items, against exact search.

    ``vectors`` are the vectors the index was built from, in the same row order
    (row i is ``index.ids[i]``). Each sampled item is queried by its vector; the item
    itself is dropped from both result lists, since finding itself is trivially easy
    and would flatter the score by up to 1/k.
    """
    if vectors.shape != (len(index), index.manifest.dim):
        raise ValueError(
            f"vectors must be the index's own [{len(index)}, {index.manifest.dim}], "
            f"got {vectors.shape}"
        )
    k = check_positive_int(k, "k")
    sample_size = check_positive_int(sample_size, "sample_size")
    search_k = check_search_k(search_k)
    if len(index) < 2:
        return 1.0
    k = min(k, len(index) - 1)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(index), size=min(sample_size, len(index)), replace=False)
    exact_rows, _ = exact_search(vectors, vectors[rows], k + 1, metric=index.manifest.metric)
    exact_ids, approx_ids = [], []
    for row, truth in zip(rows, exact_rows):
        own = index.ids[row]
        found, _ = index.query(vectors[row], k + 1, search_k=search_k)
        exact_ids.append([i for i in index.ids[truth] if i != own][:k])
        approx_ids.append([i for i in found if i != own][:k])
    return recall_at_k(approx_ids, np.array(exact_ids))
