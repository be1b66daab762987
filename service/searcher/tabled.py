"""Similar-by-id without SQL on the hot path: the lists, the metadata table, the live set.

The answer of :func:`~service.searcher.listed.search_listed` with its metadata query
replaced: a result image's metadata comes from the live set if it changed since the
version's table was read (service/searcher/live.py), else from the table
(core/index/metadata_table.py), and the exclusions (the item itself, its group with
``exclude_group``, the merchandiser's marks) are applied here as the SQL query's
``WHERE`` applies them. What is left of SQL is one query: the item's lookup, its marks
and the live set's probes together.

Whenever this path cannot vouch for the answer — the probes show changes the live set
has not read yet, the live set overflowed, a candidate image is in neither the table
nor the live set, a query photo is fresh, the lists were cut off — :func:`similar_from_table`
returns None and the caller takes the SQL path, which gives the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import numpy as np
from sqlalchemy import Connection

from core.index.metadata_table import MetadataTable
from service.searcher.engine import SearchResult
from service.searcher.listed import MetadataSource, listed_photos, search_listed
from service.searcher.live import LiveSet, lookup_with_probe
from service.searcher.metadata import Exclusions, ImageMeta
from service.searcher.state import SearchState


class Unvouched(Exception):
    """A candidate image neither the table nor the live set knows: SQL must answer."""


class TableMetadata(Mapping[int, ImageMeta]):
    """The servable, non-excluded images among some candidates, decoded from the table on first access."""

    def __init__(self, table: MetadataTable, live: LiveSet, exclusions: Exclusions,
                 ids: list[int], rows: np.ndarray) -> None:
        self._table, self._live, self._exclusions = table, live, exclusions
        self._marked = frozenset(exclusions.item_ids)
        self._rows = dict(zip(ids, rows.tolist()))

    def get(self, image_id: int, default: ImageMeta | None = None) -> ImageMeta | None:  # type: ignore[override]
        overrides = self._live.overrides
        if image_id in overrides:
            meta = overrides[image_id]
        else:
            meta = self._table.meta(self._rows[image_id], image_id)
        if meta is None or not self._allowed(meta):
            return default
        return meta

    def _allowed(self, meta: ImageMeta) -> bool:
        """The exclusions of :func:`~service.searcher.metadata.fetch_metadata`'s query, on one image."""
        ex = self._exclusions
        if meta.item_id == ex.item_id or meta.item_id in self._marked:
            return False
        return ex.group_key is None or meta.group_key is None or meta.group_key != ex.group_key

    def __getitem__(self, image_id: int) -> ImageMeta:
        meta = self.get(image_id)
        if meta is None:
            raise KeyError(image_id)
        return meta

    def __iter__(self) -> Iterator[int]:
        return (i for i in self._rows if self.get(i) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def table_metadata(state: SearchState, exclusions: Exclusions) -> MetadataSource:
    """The metadata source over the table and the live set; raises :class:`Unvouched` for an unknown image."""
    table, live = state.table, state.live
    assert table is not None and live is not None

    def fetch(ids: list[int]) -> Mapping[int, ImageMeta]:
        rows = state.index.rows_of(np.asarray(ids, dtype=np.int64))
        if (rows < 0).any() and any(i not in live.overrides for i, r in zip(ids, rows.tolist()) if r < 0):
            raise Unvouched("a candidate image is not in the version's table nor in the live set")
        return TableMetadata(table, live, exclusions, ids, rows)

    return fetch


def similar_from_table(state: SearchState, conn: Connection, external_id: str, *, k: int,
                       exclude_group: bool) -> SearchResult | None:
    """The answer for ``external_id`` without filters from lists + table + live set; None: use SQL."""
    live = state.live
    if state.table is None or live is None or live.overflowed or state.neighbours is None:
        return None
    t0 = time.perf_counter()
    found = lookup_with_probe(conn, external_id, live.since)
    lookup = time.perf_counter() - t0
    if found is None or not live.current(found[2]):
        return None  # not found (the SQL path says so), or changes the live set has not read yet
    item, marked, _ = found
    rows = listed_photos(state, item.image_ids)
    if rows is None:
        return None
    exclusions = Exclusions(item_id=item.item_id, group_key=item.group_key if exclude_group else None,
                            item_ids=marked)
    try:
        result = search_listed(state, rows, k=k, metadata=table_metadata(state, exclusions))
    except (Unvouched, KeyError):
        return None
    if result is None:
        return None
    result.from_table = True
    # Server-Timing ``table``: this answer's metadata came from the table (its decode time;
    # ``meta`` still holds lookup + metadata, comparable with the SQL path's)
    result.timings["table"] = result.timings["meta"]
    result.timings["meta"] += lookup
    return result
