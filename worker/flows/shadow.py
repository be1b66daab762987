"""Shadow evaluation: replay logged queries on the candidate and the active model before a promotion.

What a retrain's holdout cannot see is how the shop's own traffic would change. So,
before a candidate that won on the holdout is promoted, the most recent logged
similar-by-id queries (core/query_log.py, ``shadow_queries`` rows) are answered by both
models, each over its own vectors of the whole servable catalog, and compared:

- **top-k overlap**: per distinct query item, |candidate's top-k ∩ active's top-k| / k
  (``overlap``) and the Jaccard index of the two sets (``jaccard``), averaged;
- **feedback pairs**: every judgement (one per (query, result) direction, resolved as the
  trainer resolves pairs, sources weighted 0 left out) is *ranked correctly* by a model
  when a ``similar`` result is inside the query's top-k and a ``dissimilar`` one is not.

Both models are searched exactly (every catalog vector, each item at its nearest photo,
the query item left out), so the numbers compare the models, not two Annoy builds. The
candidate's vectors are embedded here and stored: a promotion's reindex then finds them
done. The promotion rule that reads the report is in worker/flows/promotion.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.config import ShadowRule
from core.db import ModelVersion, session_scope
from core.embedding import ModelSpec
from core.embeddings_store import VectorSnapshot, snapshot_vectors
from core.index import Metric
from core.query_log import recent_queries
from trainer.config import SourceWeights
from trainer.data.catalog import item_of_images
from trainer.data.feedback import FeedbackPair, read_judgements, resolve
from worker.flows.catchup import embed_missing
from worker.runtime import Runtime


@dataclass
class PairCounts:
    """Feedback pairs of one judgement and how many each model ranks correctly."""

    pairs: int = 0
    candidate: int = 0
    active: int = 0


@dataclass
class ShadowReport:
    """What the replay measured; ``skipped`` says why there are no numbers."""

    k: int
    logged: int
    """Logged query rows read (the most recent ``shadow_queries``)."""
    queries: int = 0
    """Distinct query items replayed (active items with vectors under both models)."""
    overlap: float | None = None
    """Mean |top-k ∩| / k."""
    jaccard: float | None = None
    feedback_pairs: int = 0
    """Feedback judgements both models could rank (items active and embedded)."""
    candidate_correct: int = 0
    active_correct: int = 0
    by_judgement: dict[str, PairCounts] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BLOCK_SCORES = 1 << 24


class _Ranker:
    """Item-level exact search over one model's servable vectors."""

    def __init__(self, snapshot: VectorSnapshot, external_of: dict[int, str], metric: Metric) -> None:
        order = np.argsort(snapshot.item_ids, kind="stable")
        item_ids = snapshot.item_ids[order]
        self.vectors = snapshot.vectors[order].astype(np.float32)
        if metric is Metric.ANGULAR:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self.vectors = np.divide(self.vectors, norms, out=np.zeros_like(self.vectors), where=norms > 0)
        self.metric = metric
        self.sq = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self.starts = np.flatnonzero(np.r_[True, item_ids[1:] != item_ids[:-1]]) if len(item_ids) else item_ids
        self.items = [external_of[int(i)] for i in snapshot.image_ids[order][self.starts]]
        self.position = {name: p for p, name in enumerate(self.items)}
        self.bounds = np.r_[self.starts, len(item_ids)]

    def distances_of(self, items: list[str]) -> Iterator[np.ndarray]:
        """Per query item, in order: every catalog item's (``self.items`` order) nearest-photo distance
        to the query's photos, in a monotone form of the model's metric; the query item itself +inf.

        A block of query items shares one matrix product (the catalog's vectors are read once per
        block, ~16M scores of it at a time, so memory stays ~64 MB whatever the catalog's size).
        """
        block = max(1, min(256, _BLOCK_SCORES // max(len(self.vectors), 1)))
        for start in range(0, len(items), block):
            chunk = [self.position[item] for item in items[start:start + block]]
            rows = np.concatenate([np.arange(self.bounds[p], self.bounds[p + 1]) for p in chunk])
            dots = self.vectors[rows] @ self.vectors.T
            if self.metric is Metric.EUCLIDEAN:  # |q|^2 - 2 q.r + |r|^2: |q|^2 differs between a query's photos
                dots *= -2.0
                dots += self.sq[None, :]
                cost = np.add(dots, self.sq[rows][:, None], out=dots)
            else:  # angular (normalised) or dot: larger products are nearer
                cost = np.negative(dots, out=dots)
            per_item = np.minimum.reduceat(cost, self.starts, axis=1)  # each item at its nearest photo
            first = np.r_[0, np.cumsum([self.bounds[p + 1] - self.bounds[p] for p in chunk])[:-1]]
            per_query = np.minimum.reduceat(per_item, first, axis=0)  # each query at its nearest photo
            for row, p in zip(per_query, chunk, strict=True):
                row[p] = np.inf
                yield row

    def top(self, distances: np.ndarray, k: int) -> set[str]:
        k = min(k, len(self.items) - 1)
        if k <= 0:
            return set()
        picked = np.argpartition(distances, k - 1)[:k]
        return {self.items[i] for i in picked}

    def within(self, distances: np.ndarray, result: str, k: int) -> bool:
        """Whether ``result`` ranks in the top ``k`` (ties counted in its favour)."""
        return int(np.count_nonzero(distances < distances[self.position[result]])) < k


def _ranker(rt: Runtime, model: ModelVersion, external_of: dict[int, str]) -> _Ranker:
    embed_missing(rt, model)  # the candidate's vectors, stored: a promotion's reindex reuses them
    with session_scope(rt.sessions) as s:
        snapshot = snapshot_vectors(s, model.id)
    return _Ranker(snapshot, external_of, Metric(ModelSpec.from_dict(model.spec).distance.annoy_metric))


def shadow_evaluate(rt: Runtime, candidate: ModelVersion, active: ModelVersion, rule: ShadowRule,
                    sources: SourceWeights) -> ShadowReport:
    """Replay the logged queries and rank the feedback pairs on both models (module docstring)."""
    with session_scope(rt.sessions) as s:
        logged = recent_queries(s, rule.queries)
    report = ShadowReport(k=rule.k, logged=logged.rows)
    if len(logged.items) < rule.min_queries:
        report.skipped = (f"only {len(logged.items)} distinct logged query items (of {logged.rows} rows), fewer than "
                          f"LOOKALIKE_SHADOW_MIN_QUERIES={rule.min_queries}; the holdout alone decides")
        return report
    external_of = item_of_images(rt.sessions)
    rankers = {"candidate": _ranker(rt, candidate, external_of), "active": _ranker(rt, active, external_of)}
    both = set(rankers["candidate"].position) & set(rankers["active"].position)
    queries = [item for item in logged.items if item in both]
    if len(queries) < rule.min_queries:
        report.skipped = (f"only {len(queries)} logged query items are still in the catalog under both models, "
                          f"fewer than LOOKALIKE_SHADOW_MIN_QUERIES={rule.min_queries}; the holdout alone decides")
        return report
    pairs = [p for p in resolve(read_judgements(rt.sessions), sources, ordered=True) if p.a in both and p.b in both]
    _replay(report, rankers, queries, pairs)
    return report


def _replay(report: ShadowReport, rankers: dict[str, _Ranker], queries: list[str],
            pairs: list[FeedbackPair]) -> None:
    k = report.k
    overlaps, jaccards = [], []
    rows = zip(rankers["candidate"].distances_of(queries), rankers["active"].distances_of(queries), strict=True)
    for cand_row, active_row in rows:
        a, b = rankers["candidate"].top(cand_row, k), rankers["active"].top(active_row, k)
        overlaps.append(len(a & b) / k)
        jaccards.append(len(a & b) / len(a | b) if a | b else 1.0)
    report.queries = len(queries)
    report.overlap, report.jaccard = round(float(np.mean(overlaps)), 4), round(float(np.mean(jaccards)), 4)
    report.by_judgement = {"similar": PairCounts(), "dissimilar": PairCounts()}
    by_query: dict[str, list[FeedbackPair]] = {}
    for pair in pairs:
        by_query.setdefault(pair.a, []).append(pair)
    queried = list(by_query)
    per_role = {role: r.distances_of(queried) for role, r in rankers.items()}
    for query in queried:
        distances = {role: next(rows) for role, rows in per_role.items()}
        for pair in by_query[query]:
            counts = report.by_judgement["similar" if pair.y == 0 else "dissimilar"]
            counts.pairs += 1
            for role, ranker in rankers.items():
                inside = ranker.within(distances[role], pair.b, k)
                if inside == (pair.y == 0):
                    setattr(counts, role, getattr(counts, role) + 1)
    report.feedback_pairs = sum(c.pairs for c in report.by_judgement.values())
    report.candidate_correct = sum(c.candidate for c in report.by_judgement.values())
    report.active_correct = sum(c.active for c in report.by_judgement.values())
