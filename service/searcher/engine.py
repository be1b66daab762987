"""One search: candidates from the index and the fresh set, filtered in SQL, grouped by item.

Index rows are image ids, and a filter or a deletion can throw many of them away,
so the index is asked for more than ``k`` (over-fetch) and, if fewer than ``k``
items survive, asked again for four times as many (widening) until ``k`` items are
found, the index is exhausted, or :data:`MAX_ANN_CANDIDATES` is reached. Past that
point the filter is very selective (it passes fewer than ``k`` in 20,000 of the
nearest images), so the matching images are few: they are fetched from SQL and
ranked exactly. Either way ``k`` results come back whenever ``k`` servable matching
items exist. Results are grouped by item, each with its best (closest) image.

Score: for Euclidean and angular indexes over unit vectors, ``score = 1 - d²/2``,
which is the cosine similarity (1 = identical, 0 = unrelated, -1 = opposite); for
a dot-product index the score is the dot product itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection

from core.index import Metric, exact_search
from service.filters import Filters
from service.searcher.metadata import Exclusions, ImageMeta, fetch_metadata, matching_images
from service.searcher.state import SearchState

MAX_ANN_CANDIDATES = 20_000
EXACT_FALLBACK_LIMIT = 50_000
WIDEN_FACTOR = 4


@dataclass(frozen=True)
class Match:
    meta: ImageMeta
    distance: float
    score: float


@dataclass
class SearchResult:
    matches: list[Match]
    index_version: str
    model_version: str
    candidates: int = 0
    """Image ids examined (index + fresh set)."""
    rounds: int = 0
    exact_fallback: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def score_of(metric: Metric, distance: float) -> float:
    if metric is Metric.DOT:
        return float(distance)
    return float(1.0 - distance * distance / 2.0)


def first_fetch(k: int, filters: Filters, exclusions: Exclusions) -> int:
    """How many images to ask for first: enough for ``k`` items in the common case."""
    if not filters.empty:
        return 8 * k + 32
    extra = 16 if exclusions.group_key is not None else 8
    return 2 * k + extra


def _order(distances: np.ndarray, metric: Metric) -> np.ndarray:
    return np.argsort(-distances if metric is Metric.DOT else distances, kind="stable")


def candidates(state: SearchState, vector: np.ndarray, n: int, search_k: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Up to ``n`` nearest image ids from the index plus up to ``n`` from the fresh set, merged.

    The third value says whether nothing more could be found by asking for more.
    """
    index, fresh = state.index, state.fresh
    if search_k > 0:
        # a fixed search_k sized for small k would cap a widened query below n results
        search_k = max(search_k, n * index.manifest.n_trees)
    ids, dists = index.query(vector, n, search_k=search_k) if len(index) else (
        np.empty(0, np.int64), np.empty(0, np.float32))
    exhausted = n >= len(index) and n >= len(fresh)
    if not len(fresh):
        return ids, dists, exhausted
    keep = ~np.isin(ids, fresh.image_ids)  # a re-embedded image: its fresh vector wins
    rows, fresh_d = exact_search(fresh.vectors, vector[None, :], min(n, len(fresh)), metric=state.metric)
    ids = np.concatenate([ids[keep], fresh.image_ids[rows[0]]])
    dists = np.concatenate([dists[keep], fresh_d[0]])
    order = _order(dists, state.metric)
    return ids[order], dists[order], exhausted


def group_by_item(ids: np.ndarray, dists: np.ndarray, meta: dict[int, ImageMeta], k: int,
                  metric: Metric) -> list[Match]:
    """The first ``k`` distinct items in candidate order, each with its best image."""
    seen: set[int] = set()
    out: list[Match] = []
    for image_id, distance in zip(ids.tolist(), dists.tolist()):
        m = meta.get(image_id)
        if m is None or m.item_id in seen:
            continue
        seen.add(m.item_id)
        out.append(Match(meta=m, distance=float(distance), score=score_of(metric, distance)))
        if len(out) == k:
            break
    return out


def search(state: SearchState, conn: Connection, vector: np.ndarray, *, k: int, filters: Filters,
           exclusions: Exclusions, search_k: int = -1) -> SearchResult:
    """The ``k`` best items for a unit query vector (see the module docstring)."""
    result = SearchResult(matches=[], index_version=state.index_version, model_version=state.model_version)
    timings = result.timings = {"index": 0.0, "meta": 0.0}
    meta: dict[int, ImageMeta] = {}
    checked: set[int] = set()
    n = first_fetch(k, filters, exclusions)
    while True:
        result.rounds += 1
        t0 = time.perf_counter()
        ids, dists, exhausted = candidates(state, vector, n, search_k)
        t1 = time.perf_counter()
        new = [i for i in ids.tolist() if i not in checked]
        meta.update(fetch_metadata(conn, new, filters=filters, exclusions=exclusions))
        checked.update(new)
        t2 = time.perf_counter()
        timings["index"] += t1 - t0
        timings["meta"] += t2 - t1
        result.candidates = len(checked)
        result.matches = group_by_item(ids, dists, meta, k, state.metric)
        if len(result.matches) >= k or exhausted:
            return result
        if n >= MAX_ANN_CANDIDATES:
            break
        n = min(n * WIDEN_FACTOR, MAX_ANN_CANDIDATES)
    fallback = exact_among_matching(state, conn, vector, k=k, filters=filters, exclusions=exclusions)
    timings["exact"] = fallback[1]
    if fallback[0] is not None:
        result.matches = fallback[0]
        result.exact_fallback = True
    return result


def exact_among_matching(state: SearchState, conn: Connection, vector: np.ndarray, *, k: int,
                         filters: Filters, exclusions: Exclusions) -> tuple[list[Match] | None, float]:
    """Rank every matching servable image exactly; None if too many match for that."""
    started = time.perf_counter()
    rows = matching_images(conn, filters=filters, exclusions=exclusions, limit=EXACT_FALLBACK_LIMIT)
    if rows is None:
        return None, time.perf_counter() - started
    ids: list[int] = []
    vectors: list[np.ndarray] = []
    for m in rows:
        v = state.fresh.vector(m.image_id)
        if v is None and state.index.contains(m.image_id):
            v = state.index.vector(m.image_id)
        if v is not None:
            ids.append(m.image_id)
            vectors.append(v)
    if not ids:
        return [], time.perf_counter() - started
    order, dists = exact_search(np.stack(vectors), vector[None, :], len(ids), metric=state.metric)
    ranked_ids = np.asarray(ids, dtype=np.int64)[order[0]]
    matches = group_by_item(ranked_ids, dists[0], {m.image_id: m for m in rows}, k, state.metric)
    return matches, time.perf_counter() - started
