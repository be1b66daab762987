"""The searcher a process serves queries with: similar-by-item, by vector, by image.

Similar-by-item searches with every embedded photo of the item (at most
:data:`~service.searcher.engine.MAX_QUERY_PHOTOS`); a result item's distance is its
best over all (query photo, result photo) pairs.

It owns the :class:`StateHolder` (what is loaded) and the :class:`Watcher` (hot
swap). It is started once per process — by gunicorn's ``post_worker_init`` hook, or
by the first query — never at import time and never in a preloading master, so
every worker memory-maps the shared index file itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from PIL import Image
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.embeddings_store import load_vectors
from core.feedback import dissimilar_results
from core.notify import IndexChangeListener
from service.filters import Filters
from service.metrics import Metrics
from service.searcher.engine import MAX_QUERY_PHOTOS, SearchResult, search, search_photos
from service.searcher.listed import listed_photos, search_listed, sql_metadata
from service.searcher.metadata import Exclusions, lookup_item
from service.searcher.state import SearchState
from service.searcher.tabled import similar_from_table
from service.searcher.watcher import Listener, StateHolder, Watcher


class SearchError(Exception):
    """Base of the errors a query can end with; the API maps each to a status."""


class IndexUnavailable(SearchError):
    pass


class ModelUnavailable(SearchError):
    pass


class ItemNotFound(SearchError):
    pass


class NotEmbedded(SearchError):
    pass


class BadVector(SearchError):
    pass


def unit_vector(values: object, dim: int) -> np.ndarray:
    """A query vector as float32 unit length; BadVector says what is wrong with it."""
    try:
        vector = np.asarray(values, dtype=np.float64)
    except OverflowError:  # a JSON integer with hundreds of digits: no float holds it
        raise BadVector("vector contains a number too large for a float") from None
    except (TypeError, ValueError) as exc:
        raise BadVector(f"vector must be a list of numbers: {exc}") from exc
    if vector.ndim != 1 or vector.shape[0] != dim:
        raise BadVector(f"vector must have {dim} numbers (the active model's dimension), got shape "
                        f"{list(vector.shape)}")
    if not np.all(np.isfinite(vector)):
        raise BadVector("vector contains NaN or infinite values")
    scale = float(np.max(np.abs(vector)))
    if scale == 0.0:
        raise BadVector("vector must not be all zeros")
    vector = vector / scale  # first to [-1, 1], so the norm cannot overflow or underflow
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class Searcher:
    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session],
                 metrics: Metrics, *, listener_factory: Callable[[], Listener] | None = None,
                 watch: bool = True) -> None:
        self.settings = settings
        self._engine = engine
        self.holder = StateHolder(settings, engine, sessions, metrics)
        if listener_factory is None and settings.resolved_redis_url:
            listener_factory = lambda: IndexChangeListener(settings)  # noqa: E731
        self._watcher = Watcher(self.holder, poll_seconds=settings.index_poll_seconds,
                                listener_factory=listener_factory) if watch else None
        self._started = False
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Load the active index now (if any) and start following changes; idempotent."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            try:
                self.holder.refresh()
            finally:
                if self._watcher is not None:
                    self._watcher.start()
                self._started = True

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def refresh_now(self) -> SearchState | None:
        """Check for a new index / fresh vectors right away (after an in-process embed)."""
        self.start()
        return self.holder.refresh()

    def current(self) -> SearchState | None:
        self.start()
        return self.holder.state

    def require_state(self) -> SearchState:
        state = self.current()
        if state is None:
            reason = self.holder.last_error or "no index has been published yet: run a reindex"
            raise IndexUnavailable(reason)
        return state

    # ------------------------------------------------------------------ queries
    def similar_to_item(self, external_id: str, *, k: int, filters: Filters,
                        exclude_group: bool = False) -> SearchResult:
        """The ``k`` items that look most like this one, searched with all its embedded photos.

        Every embedded photo of the item (its first :data:`MAX_QUERY_PHOTOS` in display
        order) is a query; a result item's distance is its best distance over all
        (query photo, result photo) pairs, the item itself is excluded, and so is every
        item a merchandiser marked dissimilar to it (read per query, so a mark applies
        at once; docs/ARCHITECTURE.md, "Feedback"), and the first
        ``k`` items by that distance are returned (see :func:`search_photos`). An item
        with one embedded photo is exactly a one-vector :func:`search`.
        """
        state = self.require_state()
        t0 = time.perf_counter()
        with self._engine.connect() as conn:
            if filters.empty and state.live is not None:
                # lists + metadata table + live set, one SQL query; None when it cannot vouch
                # for the answer (changes not read yet, a fresh query photo): the path below
                result = similar_from_table(state, conn, external_id, k=k, exclude_group=exclude_group)
                if result is not None:
                    return result
            item = lookup_item(conn, external_id)
            if item is None:
                raise ItemNotFound(f"no active item with external id {external_id!r}")
            rows = listed_photos(state, item.image_ids) if filters.empty else None
            vectors = [] if rows is not None else _item_vectors(state, conn, item.image_ids)
            if rows is None and not vectors:
                raise NotEmbedded(f"item {external_id!r} has no vector for model {state.model_version} yet "
                                  "(it is queued for embedding, or has no image)")
            lookup = time.perf_counter() - t0
            marked = dissimilar_results(conn, [item.item_id]).get(item.item_id, set())
            exclusions = Exclusions(item_id=item.item_id,
                                    group_key=item.group_key if exclude_group else None,
                                    item_ids=tuple(sorted(marked)))
            # no filters and every query photo indexed: its precomputed lists answer, unless
            # they were cut off too early (then the Annoy path below, which widens)
            result = search_listed(state, rows, k=k, metadata=sql_metadata(conn, exclusions)) \
                if rows is not None else None
            if result is not None:
                result.timings["meta"] += lookup
                return result
            if not vectors:
                vectors = _item_vectors(state, conn, item.image_ids)
            result = search_photos(state, conn, vectors, k=k, filters=filters, exclusions=exclusions,
                                   search_k=self.settings.annoy_search_k)
        result.timings["meta"] += lookup
        return result

    def search_vector(self, values: object, *, k: int, filters: Filters,
                      state: SearchState | None = None) -> SearchResult:
        state = state or self.require_state()
        vector = unit_vector(values, state.dim)
        with self._engine.connect() as conn:
            return search(state, conn, vector, k=k, filters=filters, exclusions=Exclusions(),
                          search_k=self.settings.annoy_search_k)

    def search_image(self, image: Image.Image, *, k: int, filters: Filters) -> SearchResult:
        state = self.require_state()
        if state.embedder is None:
            raise ModelUnavailable(state.embedder_error or f"model {state.model_version} is not loaded")
        t0 = time.perf_counter()
        vector = state.embedder.embed([image])[0]
        embed_seconds = time.perf_counter() - t0
        result = self.search_vector(vector, k=k, filters=filters, state=state)
        result.timings = {"embed": embed_seconds, **result.timings}
        return result


def _item_vectors(state: SearchState, conn: Connection, image_ids: tuple[int, ...],
                  limit: int = MAX_QUERY_PHOTOS) -> list[np.ndarray]:
    """The vectors of the item's first ``limit`` images that have one, in display order.

    A fresh vector wins over the index's (it is the newer). An image this process
    holds no vector for may still have one in the database: embedded a moment ago and
    made fresh by another process, which this one's next poll would pick up. Those
    are read in one query (at most ``limit`` ids, by primary key, with the index's
    model and dimension), so an item is searchable by id on every worker as soon as
    its embedding is stored (docs/ARCHITECTURE.md, "The fresh set"). Images with no
    vector anywhere are skipped.
    """
    held: dict[int, np.ndarray] = {}
    lacking: list[int] = []
    for image_id in image_ids:
        v = state.fresh.vector(image_id)
        if v is None and state.index.contains(image_id):
            v = state.index.vector(image_id)
        if v is None:
            lacking.append(image_id)
            continue
        held[image_id] = v
        if len(held) == limit:
            break
    if lacking and len(held) < limit:
        ids, vectors = load_vectors(conn, state.model_id, lacking[:limit], dim=state.dim)
        held.update(zip(ids.tolist(), vectors))
    return [held[i] for i in image_ids if i in held][:limit]
