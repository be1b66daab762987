"""Similar-by-item from the version's precomputed neighbour lists, merged with the fresh set.

The same answer as :func:`~service.searcher.engine.search_photos` (its rule, its
exclusions, its grouping by item), for the common request: no filters and every
query photo served from the index. Each query photo's list (its ``K`` nearest indexed
images, core/index/neighbours.py) takes the place of its Annoy query; images that
are fresh (re-embedded, or new since the build) are dropped from the list and the
fresh set is searched exactly, as :func:`~service.searcher.engine.candidates` does.
The merged top ``k`` is accepted only when its ``k``-th distance is within the
reach of every list (no list was cut off before it); otherwise — many results
deleted or marked dissimilar, a fresh query photo, filters, a version without
lists — :func:`search_listed` returns None and the caller takes the Annoy path,
which widens as needed. Metadata, deletions and marks come from the one SQL query per
request (:func:`sql_metadata`), so they apply exactly as on that path — or from the
version's metadata table and the live set (service/searcher/tabled.py), which give the
same answer without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sqlalchemy import Connection

from core.index import exact_search
from service.filters import Filters
from service.searcher.engine import (
    MAX_QUERY_PHOTOS,
    SearchResult,
    _key,
    _order,
    _reach,
    group_by_item,
    merge_photo_lists,
)
from service.searcher.metadata import Exclusions, ImageMeta, fetch_metadata
from service.searcher.state import SearchState


def listed_photos(state: SearchState, image_ids: Sequence[int]) -> np.ndarray | None:
    """Index rows of the item's query photos, or None if the lists cannot serve them.

    The Annoy path searches with the first :data:`MAX_QUERY_PHOTOS` images that have a
    vector; when each of the first ones is indexed and not fresh, those are exactly
    its query photos, and each has a list. Anything else (a fresh or unembedded photo)
    is left to that path.
    """
    if state.neighbours is None or not image_ids:
        return None
    wanted = np.asarray(image_ids[:MAX_QUERY_PHOTOS], dtype=np.int64)
    rows = state.index.rows_of(wanted)
    if (rows < 0).any() or (len(state.fresh) and np.isin(wanted, state.fresh.image_ids).any()):
        return None
    return rows


def _photo_candidates(state: SearchState, row: int) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """One photo's list merged with the fresh set: ids, distances (best first), exhausted, reach."""
    assert state.neighbours is not None
    index, fresh, metric = state.index, state.fresh, state.metric
    rows, dists = state.neighbours.of_row(row)
    ids = index.ids[rows]
    whole = len(rows) >= len(index)
    reach = _reach(metric, dists, whole)
    if not len(fresh):
        return ids, dists, whole, reach
    n = state.neighbours.k
    keep = ~np.isin(ids, fresh.image_ids)  # a re-embedded image: its fresh vector wins
    vector = index.vector(int(index.ids[row]))
    found, fresh_d = exact_search(fresh.vectors, vector[None, :], min(n, len(fresh)), metric=metric)
    reach = min(reach, _reach(metric, fresh_d[0], n >= len(fresh)))
    ids = np.concatenate([ids[keep], fresh.image_ids[found[0]]])
    dists = np.concatenate([dists[keep], fresh_d[0]])
    order = _order(dists, metric)
    return ids[order], dists[order], whole and n >= len(fresh), reach


MetadataSource = Callable[[list[int]], Mapping[int, ImageMeta]]
"""The servable, non-excluded images among candidate ids and their metadata (SQL, or the table)."""


def sql_metadata(conn: Connection, exclusions: Exclusions) -> MetadataSource:
    """The metadata source of the SQL path: one query over the candidates."""
    return lambda ids: fetch_metadata(conn, ids, filters=Filters(), exclusions=exclusions)


def search_listed(state: SearchState, rows: np.ndarray, *, k: int,
                  metadata: MetadataSource) -> SearchResult | None:
    """The ``k`` best items for the query photos at index ``rows``, or None to take the Annoy path."""
    metric = state.metric
    result = SearchResult(matches=[], index_version=state.index_version, model_version=state.model_version,
                          query_photos=len(rows), rounds=1, listed=True)
    t0 = time.perf_counter()
    ids, dists, exhausted, reach = merge_photo_lists([_photo_candidates(state, int(row)) for row in rows], metric)
    t1 = time.perf_counter()
    unique = list(dict.fromkeys(ids.tolist()))
    meta = metadata(unique)
    t2 = time.perf_counter()
    result.timings = {"index": t1 - t0, "meta": t2 - t1}
    result.candidates = len(unique)
    result.matches = group_by_item(ids, dists, meta, k, metric)
    if exhausted or (len(result.matches) >= k and _key(metric, result.matches[-1].distance) <= reach):
        return result
    return None
