"""What one process serves: the active index (memory-mapped), its model, the fresh set.

A :class:`SearchState` is immutable and built completely before it is swapped in
(see :mod:`service.searcher.watcher`); a request takes one reference at its start
and uses it to the end, so a swap never changes anything under a running query.
The old state is not closed explicitly: when the last request holding it ends,
dropping the reference unmaps the old index file (and, with an object store, releases
its pin on the cached files: core/index_store.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import weakref
from dataclasses import dataclass

import torch
from sqlalchemy import Engine

from core.config import Settings
from core.db import IndexVersion
from core.embedding import Embedder, resolve_device
from core.embeddings_store import FreshBasis
from core.index import Metric, VectorIndex
from core.index.metadata_table import MetadataTable
from core.index.neighbours import NeighbourLists
from core.index_store import served_index_files
from core.registry import checkpoint_path
from service.searcher.fresh import FreshSet, follow_fresh
from service.searcher.live import LiveSet, follow_live

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchState:
    index: VectorIndex
    index_version: str
    model_version: str
    model_id: int
    newest_in_index: dt.datetime | None
    embedder: Embedder | None
    """None when the checkpoint could not be loaded: searches by image answer 503."""
    embedder_error: str
    fresh: FreshSet
    loaded_at: float
    neighbours: NeighbourLists | None = None
    """The version's precomputed neighbour lists; None for a version without (or unreadable)."""
    table: MetadataTable | None = None
    """The version's metadata table; None for a version without, unreadable, or switched off."""
    live: LiveSet | None = None
    """What changed in SQL since the table was read (service/searcher/live.py); None without a table."""

    @property
    def metric(self) -> Metric:
        return self.index.manifest.metric

    @property
    def dim(self) -> int:
        return self.index.manifest.dim

    @property
    def fresh_basis(self) -> FreshBasis:
        """What this state's fresh set is measured against: its index version."""
        return FreshBasis(self.model_id, self.dim, self.newest_in_index, self.index)

    def with_fresh(self, fresh: FreshSet) -> SearchState:
        return dataclasses.replace(self, fresh=fresh)


def load_embedder(settings: Settings, checkpoint: str, model_version: str) -> tuple[Embedder | None, str]:
    """The query model, or None and the reason it could not be loaded."""
    path = checkpoint_path(settings, checkpoint, model_version)
    try:
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        embedder = Embedder.from_checkpoint(path, device=resolve_device(settings.device), batch_size=1)
    except Exception as exc:  # noqa: BLE001 - any failure leaves id/vector search working
        log.error("model %s could not be loaded from %s: %s", model_version, path, exc)
        return None, f"model {model_version} could not be loaded: {exc}"
    return embedder, ""


def build_state(settings: Settings, engine: Engine, row: IndexVersion) -> SearchState:
    """Load everything a search needs for the index ``row`` (raises if the index is unusable)."""
    started = time.perf_counter()
    model = row.model
    directory, pinned = served_index_files(settings, row)
    try:
        index = VectorIndex.load(directory, expected_model_version=model.version)
    except BaseException:
        if pinned is not None:
            pinned.close()
        raise
    if pinned is not None:  # cached files stay pinned (never evicted) for as long as this index maps them
        weakref.finalize(index, pinned.close)
    embedder, error = load_embedder(settings, model.checkpoint_path, model.version)
    if embedder is not None and embedder.dim != index.manifest.dim:
        error = f"model {model.version} embeds {embedder.dim}-d vectors, the index holds {index.manifest.dim}-d"
        embedder = None
    neighbours = load_neighbours(index) if settings.serve_neighbour_lists else None
    fresh = follow_fresh(engine, FreshBasis(model.id, index.manifest.dim, row.max_embedding_created_at, index))
    table = load_table(index) if settings.serve_metadata_table and neighbours is not None else None
    live = follow_live(engine, table.as_of, index, fresh) if table is not None else None
    log.info("loaded index %s (model %s, %d images, %d fresh) in %.2fs", row.version, model.version,
             len(index), len(fresh), time.perf_counter() - started)
    return SearchState(
        index=index, index_version=row.version, model_version=model.version, model_id=model.id,
        newest_in_index=row.max_embedding_created_at, embedder=embedder, embedder_error=error,
        fresh=fresh, loaded_at=time.time(), neighbours=neighbours, table=table, live=live,
    )


def load_neighbours(index: VectorIndex) -> NeighbourLists | None:
    """The index's neighbour lists, memory-mapped; None (the Annoy path serves) if it has none or they are broken."""
    try:
        return NeighbourLists.open(index.directory, index.manifest)
    except (OSError, ValueError) as exc:
        log.error("neighbour lists of index %s not used: %s", index.manifest.index_version, exc)
        return None


def load_table(index: VectorIndex) -> MetadataTable | None:
    """The index's metadata table, memory-mapped; None (SQL serves the metadata) if it has none or it is broken."""
    try:
        return MetadataTable.open(index.directory, index.manifest)
    except (OSError, ValueError) as exc:
        log.error("metadata table of index %s not used: %s", index.manifest.index_version, exc)
        return None


def refresh_fresh(engine: Engine, state: SearchState) -> SearchState:
    """The same state with its fresh set and live set brought up to date (itself if nothing changed).

    Both are swapped in together: a fresh image the table lacks is a candidate only once
    the live set holds its metadata (until then the table path refuses it: SQL answers).
    """
    fresh = follow_fresh(engine, state.fresh_basis, previous=state.fresh)
    live = state.live
    if state.table is not None:
        live = follow_live(engine, state.table.as_of, state.index, fresh, previous=state.live)
    if fresh is state.fresh and live is state.live:
        return state
    return dataclasses.replace(state, fresh=fresh, live=live)
