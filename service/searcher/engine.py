"""One search: candidates from the index and the fresh set, filtered in SQL, grouped by item.

Index rows are image ids, and a filter or a deletion can throw many of them away,
so the index is asked for more than ``k`` (over-fetch) and, if fewer than ``k``
items survive, asked again for four times as many (widening) until ``k`` items are
found, the index is exhausted, or :data:`MAX_ANN_CANDIDATES` is reached. Past that
point the filter is very selective (it passes fewer than ``k`` in 20,000 of the
nearest images), so the matching images are few: they are fetched from SQL and
ranked exactly. Either way ``k`` results come back whenever ``k`` servable matching
items exist. Results are grouped by item, each with its best (closest) image.

Similar-by-item queries with every embedded photo of the item
(:func:`search_photos`): the index and the fresh set are asked once per query photo
(at most :data:`MAX_QUERY_PHOTOS`), and the per-photo neighbour lists are merged by
one rule: **the distance of a result item is its best (smallest; largest for a dot
product) distance over all (query photo, result photo) pairs**, and that pair's
result photo is the one shown. The query item itself is excluded, filters apply as
for one photo, and the first ``k`` items by that distance are the answer. Each
photo's list is the ``n`` nearest images of that photo (``n`` = the one-photo first
fetch plus the number of query photos, for the query item's own photos that the
lists also hold); a merged top ``k`` is accepted only when its ``k``-th distance is
within every list's reach (no list was cut off before it), so it is exact with
respect to the per-photo neighbour lists — otherwise every list is widened as for
one photo, up to the same cap and the same exact fallback. A query item with one
embedded photo is :func:`search` itself: one search, the same code path and answer
as before.

Score: for Euclidean and angular indexes over unit vectors, ``score = 1 - d²/2``,
which is the cosine similarity (1 = identical, 0 = unrelated, -1 = opposite); for
a dot-product index the score is the dot product itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
MAX_QUERY_PHOTOS = 8
"""A similar-by-item query searches with at most this many of the item's embedded photos
(the first ones in display order). Each photo costs one index query and one fresh-set
scan per round (the metadata query stays one per round, over the union of the lists),
so this bounds a query's index work to 8× that of a one-photo query. 8 is a cost bound
chosen to cover a typical product page's photos, not a measured optimum."""


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
    query_photos: int = 1
    """How many query vectors were searched with (a similar-by-item query: the item's photos)."""
    listed: bool = False
    """Answered from the precomputed neighbour lists (service/searcher/listed.py), not Annoy."""
    from_table: bool = False
    """Its metadata came from the version's metadata table and live set (service/searcher/tabled.py), not SQL."""
    timings: dict[str, float] = field(default_factory=dict)


def score_of(metric: Metric, distance: float) -> float:
    if metric is Metric.DOT:
        return float(distance)
    return float(1.0 - distance * distance / 2.0)


def first_fetch(k: int, filters: Filters, exclusions: Exclusions) -> int:
    """How many images to ask for first: enough for ``k`` items in the common case.

    Excluded result items (feedback marks) are near the query by construction, so their
    images are likely among the first candidates: asked for on top (two per item, the
    catalog's typical photo count; widening covers the rest).
    """
    marked = 2 * len(exclusions.item_ids)
    if not filters.empty:
        return 8 * k + 32 + marked
    extra = 16 if exclusions.group_key is not None else 8
    return 2 * k + extra + marked


def _order(distances: np.ndarray, metric: Metric) -> np.ndarray:
    return np.argsort(-distances if metric is Metric.DOT else distances, kind="stable")


def _key(metric: Metric, distance: float) -> float:
    """A distance as a "smaller is closer" number (a dot product is larger when closer)."""
    return -distance if metric is Metric.DOT else distance


def _reach(metric: Metric, dists: np.ndarray, complete: bool) -> float:
    """How far (as a :func:`_key`) a list of the ``n`` nearest is known complete: +inf if it is all there is."""
    if complete:
        return float("inf")
    return _key(metric, float(dists[-1])) if len(dists) else float("-inf")


def candidates(state: SearchState, vector: np.ndarray, n: int,
               search_k: int) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """Up to ``n`` nearest image ids from the index plus up to ``n`` from the fresh set, merged.

    The third value says whether nothing more could be found by asking for more. The
    fourth is the list's reach, as a :func:`_key`: every image closer than it is in
    the list (the smaller of the index part's and the fresh part's last distance
    where that part was cut off at ``n``; +inf when neither was).
    """
    index, fresh = state.index, state.fresh
    if search_k > 0:
        # a fixed search_k sized for small k would cap a widened query below n results
        search_k = max(search_k, n * index.manifest.n_trees)
    ids, dists = index.query(vector, n, search_k=search_k) if len(index) else (
        np.empty(0, np.int64), np.empty(0, np.float32))
    exhausted = n >= len(index) and n >= len(fresh)
    reach = _reach(state.metric, dists, n >= len(index))
    if not len(fresh):
        return ids, dists, exhausted, reach
    keep = ~np.isin(ids, fresh.image_ids)  # a re-embedded image: its fresh vector wins
    rows, fresh_d = exact_search(fresh.vectors, vector[None, :], min(n, len(fresh)), metric=state.metric)
    reach = min(reach, _reach(state.metric, fresh_d[0], n >= len(fresh)))
    ids = np.concatenate([ids[keep], fresh.image_ids[rows[0]]])
    dists = np.concatenate([dists[keep], fresh_d[0]])
    order = _order(dists, state.metric)
    return ids[order], dists[order], exhausted, reach


def group_by_item(ids: np.ndarray, dists: np.ndarray, meta: Mapping[int, ImageMeta], k: int,
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
        ids, dists, exhausted, _ = candidates(state, vector, n, search_k)
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


def merge_photo_lists(lists: Sequence[tuple[np.ndarray, np.ndarray, bool, float]],
                      metric: Metric) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """One candidate list from the query photos' (ids, distances, exhausted, reach) lists: all
    candidates nearest first (stable: equal distances keep the photo order), exhausted only if
    every list is, and the nearest of their reaches (beyond it, a list may have missed images)."""
    ids = np.concatenate([c[0] for c in lists])
    dists = np.concatenate([c[1] for c in lists])
    order = _order(dists, metric)
    return ids[order], dists[order], all(c[2] for c in lists), min(c[3] for c in lists)


def search_photos(state: SearchState, conn: Connection, vectors: Sequence[np.ndarray], *, k: int,
                  filters: Filters, exclusions: Exclusions, search_k: int = -1) -> SearchResult:
    """The ``k`` best items for the photos of one query item (unit vectors, display order).

    Rule: a result item's distance is its best distance over all (query photo, result
    photo) pairs, shown with that result photo; ``exclusions`` (the query item itself)
    and ``filters`` apply as in :func:`search`. One vector is :func:`search` itself;
    more than :data:`MAX_QUERY_PHOTOS` are cut to the first ones. Each round asks every
    photo for its ``n`` nearest images (``first_fetch + number of photos``: the query
    item's own photos fill some of each list and are excluded) and accepts the merged
    top ``k`` only if its ``k``-th distance is within the reach of every list, so no
    list could still hide a closer item; otherwise all lists widen ×4, then the exact
    fallback ranks every matching image by its best distance to any query photo.
    """
    if not len(vectors):
        raise ValueError("search_photos needs at least one query vector")
    if len(vectors) == 1:
        return search(state, conn, vectors[0], k=k, filters=filters, exclusions=exclusions, search_k=search_k)
    queries = np.stack([np.asarray(v, np.float32) for v in vectors[:MAX_QUERY_PHOTOS]])
    metric = state.metric
    result = SearchResult(matches=[], index_version=state.index_version, model_version=state.model_version,
                          query_photos=len(queries))
    timings = result.timings = {"index": 0.0, "meta": 0.0}
    meta: dict[int, ImageMeta] = {}
    checked: set[int] = set()
    n = first_fetch(k, filters, exclusions) + len(queries)
    while True:
        result.rounds += 1
        t0 = time.perf_counter()
        ids, dists, exhausted, reach = merge_photo_lists(
            [candidates(state, q, n, search_k) for q in queries], metric)
        t1 = time.perf_counter()
        new = [i for i in dict.fromkeys(ids.tolist()) if i not in checked]
        meta.update(fetch_metadata(conn, new, filters=filters, exclusions=exclusions))
        checked.update(new)
        t2 = time.perf_counter()
        timings["index"] += t1 - t0
        timings["meta"] += t2 - t1
        result.candidates = len(checked)
        # the first occurrence of an item in the merged order is its best pair
        result.matches = group_by_item(ids, dists, meta, k, metric)
        if exhausted or (len(result.matches) >= k and _key(metric, result.matches[-1].distance) <= reach):
            return result
        if n >= MAX_ANN_CANDIDATES:
            break
        n = min(n * WIDEN_FACTOR, MAX_ANN_CANDIDATES)
    fallback = exact_among_matching(state, conn, queries, k=k, filters=filters, exclusions=exclusions)
    timings["exact"] = fallback[1]
    if fallback[0] is not None:
        result.matches = fallback[0]
        result.exact_fallback = True
    return result


def exact_among_matching(state: SearchState, conn: Connection, vector: np.ndarray, *, k: int,
                         filters: Filters, exclusions: Exclusions) -> tuple[list[Match] | None, float]:
    """Rank every matching servable image exactly; None if too many match for that.

    ``vector`` is one query vector, or a matrix of several (the photos of a query item):
    then each image is ranked by its best distance to any of them.
    """
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
    queries = vector[None, :] if vector.ndim == 1 else vector
    order, dists = exact_search(np.stack(vectors), queries, len(ids), metric=state.metric)
    if len(queries) == 1:
        ranked_ids, ranked_d = np.asarray(ids, dtype=np.int64)[order[0]], dists[0]
    else:  # every (photo, image) pair, best first: an item's first pair is its best
        pair_ids, pair_d = np.asarray(ids, dtype=np.int64)[order].ravel(), dists.ravel()
        best = _order(pair_d, state.metric)
        ranked_ids, ranked_d = pair_ids[best], pair_d[best]
    matches = group_by_item(ranked_ids, ranked_d, {m.image_id: m for m in rows}, k, state.metric)
    return matches, time.perf_counter() - started
