"""Re-ranking by neighbour averaging: alpha query expansion and database-side augmentation.

Both replace a vector by the normalised, similarity-weighted sum of itself and its
nearest neighbours (Radenović et al., "Fine-tuning CNN image retrieval with no human
annotation", 2018)::

    v' = normalise(v + sum_i max(cos(v, x_i), 0) ** alpha * x_i)

- **alpha query expansion** (:func:`expand_query`): at query time, the query and its
  top-n results are averaged and the index is searched again (a second ANN query);
- **database-side augmentation** (:func:`augment_database`): offline, every catalog
  vector is averaged with its own top-n neighbours before the index is built.

Vectors are treated as directions: inputs are L2-normalised first, so the weights are
cosine similarities (the anchor's own weight is 1) and outputs are unit vectors. Pure
numpy; the neighbour search is the caller's (an ANN index in production, exact search
in evaluation), so the same functions serve both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.config import RerankMode, Settings
from core.index import Metric, exact_search

_EPS = 1e-12


def expand_query(queries: np.ndarray, neighbours: np.ndarray, *, alpha: float) -> np.ndarray:
    """Expanded queries ``[m, d]`` from queries ``[m, d]`` and their top-n result vectors ``[m, n, d]``."""
    q = _unit(np.asarray(queries, dtype=np.float32))
    nb = _unit(np.asarray(neighbours, dtype=np.float32))
    if q.ndim != 2 or nb.ndim != 3 or nb.shape[0] != q.shape[0] or nb.shape[2] != q.shape[1]:
        raise ValueError(f"expected queries [m, d] and neighbours [m, n, d], got {q.shape} and {nb.shape}")
    return _weighted_sum(q, nb, alpha)


def augment_database(vectors: np.ndarray, neighbour_ids: np.ndarray, *, n: int, alpha: float,
                     chunk_size: int = 8192) -> np.ndarray:
    """Every row of ``vectors`` ``[N, d]`` averaged with its first ``n`` neighbours other than itself.

    ``neighbour_ids`` ``[N, k]`` are row indices into ``vectors``, best first, as a
    self-query of an index returns them: a row's own index is skipped wherever it
    appears, so ``k`` must be at least ``n + 1`` unless no row lists itself. Rows are
    processed in chunks so the gathered neighbours stay ``chunk_size * n * d`` floats.
    """
    x = _unit(np.asarray(vectors, dtype=np.float32))
    ids = np.asarray(neighbour_ids)
    if x.ndim != 2 or ids.ndim != 2 or len(ids) != len(x):
        raise ValueError(f"expected vectors [N, d] and neighbour_ids [N, k], got {x.shape} and {ids.shape}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    others = _first_others(ids, n)
    out = np.empty_like(x)
    for start in range(0, len(x), chunk_size):
        stop = min(start + chunk_size, len(x))
        out[start:stop] = _weighted_sum(x[start:stop], x[others[start:stop]], alpha)
    return out


def _first_others(ids: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` ids of each row that are not the row's own index ``[N, n]``."""
    not_self = ids != np.arange(len(ids))[:, None]
    if bool((not_self.sum(1) < n).any()):
        raise ValueError(f"some rows have fewer than n={n} neighbours besides themselves")
    # A stable sort of "is self" keeps the others in rank order and moves self to the end.
    order = np.argsort(~not_self, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(ids, order, axis=1)


def _weighted_sum(anchors: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    sims = np.einsum("md,mnd->mn", anchors, neighbours)
    # Clipped at 0: a negative cosine raised to a real power is undefined, and an opposite
    # neighbour should not pull the anchor anyway. alpha=0 is plain average query expansion.
    weights = np.maximum(sims, 0.0) ** np.float32(alpha)
    return _unit(anchors + np.einsum("mn,mnd->md", weights, neighbours))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


@dataclass(frozen=True)
class Rerank:
    """One re-ranking setting (``LOOKALIKE_RERANK*``), applied to a query set and a catalog."""

    mode: RerankMode = RerankMode.NONE
    neighbours: int = 2
    alpha: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Rerank:
        return cls(settings.rerank, settings.rerank_neighbours, settings.rerank_alpha)

    def apply(self, queries: np.ndarray, catalog: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(queries, catalog) re-ranked with exact neighbours: DBA on the catalog alone, then aQE.

        The evaluation path. The catalog never sees the queries, as in serving, where a
        query photo is not in the index; the order is the serving one (DBA at build time,
        aQE against the augmented index).
        """
        if self.mode is RerankMode.NONE:
            return queries, catalog
        if self._augments and len(catalog) > 1:
            n = min(self.neighbours, len(catalog) - 1)  # a catalog smaller than n + 1 averages all it has
            ids = exact_search(catalog, catalog, n + 1, metric=Metric.EUCLIDEAN)[0]
            catalog = augment_database(catalog, ids, n=n, alpha=self.alpha)
        if self.mode in (RerankMode.QUERY_EXPANSION, RerankMode.BOTH):
            ids = exact_search(catalog, queries, self.neighbours, metric=Metric.EUCLIDEAN)[0]
            queries = expand_query(queries, catalog[ids], alpha=self.alpha)
        return queries, catalog

    @property
    def _augments(self) -> bool:
        return self.mode in (RerankMode.DATABASE_AUGMENTATION, RerankMode.BOTH)
