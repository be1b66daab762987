"""Build one index version from a vector snapshot and check its recall.

The SQL row is created in status BUILDING *before* the directory exists, and the
directory appears in one rename at the end of the build (core.index), so a build
killed at any moment leaves a BUILDING row and no directory; the next reindex marks
such rows FAILED. Every status change here is conditional on the row still being
in the state we left it, so a builder that lost its lock cannot overwrite the
verdict of the one that took over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import IndexStatus, IndexVersion, ModelVersion, session_scope
from core.embedding import ModelSpec
from core.embeddings_store import VectorSnapshot
from core.index import Metric, VectorIndex, build_index
from core.index.metadata_table import add_metadata_table
from core.index.neighbours import add_neighbour_lists
from core.index.verify import self_recall
from core.registry import new_version
from worker.flows.failures import FlowError
from worker.flows.retire import remove_index_dir

log = logging.getLogger(__name__)

VERIFY_K = 10
VERIFY_SEED = 0
"""A fixed sample: two builds of the same vectors report the same recall."""


class BuildError(FlowError):
    """The build did not produce a publishable index; the message says why."""


@dataclass(frozen=True)
class BuiltIndex:
    version: str
    directory: Path
    image_count: int
    item_count: int
    self_recall: float
    build_seconds: float
    verify_seconds: float


def metric_of(model: ModelVersion) -> Metric:
    return Metric(ModelSpec.from_dict(model.spec).distance.annoy_metric)


def fail_interrupted_builds(sessions: sessionmaker[Session]) -> list[str]:
    """Mark BUILDING rows FAILED: only the reindex-lock holder calls this, so none is alive."""
    with session_scope(sessions) as s:
        rows = s.scalars(
            update(IndexVersion).where(IndexVersion.status == IndexStatus.BUILDING)
            .values(status=IndexStatus.FAILED, error="interrupted: its build was killed or lost its lock")
            .returning(IndexVersion.version)
        ).all()
    if rows:
        log.warning("marked interrupted index builds failed: %s", ", ".join(rows))
    return list(rows)


def retire_unpublished_builds(sessions: sessionmaker[Session]) -> list[str]:
    """Mark RETIRED the READY versions that were never published (only the reindex-lock holder calls this).

    Such a version is a build whose publish never happened (the worker died between the two,
    or the publish failed); the retry builds afresh. Left READY, it would count as the newest
    rollback target (retention orders never-published versions by build time) and push out
    the version that was actually served before; the retire step that follows deletes it.
    """
    with session_scope(sessions) as s:
        rows = s.scalars(
            update(IndexVersion).where(IndexVersion.status == IndexStatus.READY, IndexVersion.published_at.is_(None))
            .values(status=IndexStatus.RETIRED, error="built but never published: its publish was interrupted")
            .returning(IndexVersion.version)
        ).all()
    if rows:
        log.warning("retired index builds that were never published: %s", ", ".join(rows))
    return list(rows)


def _set_status(sessions: sessionmaker[Session], version: str, expected: IndexStatus, **values: object) -> None:
    with session_scope(sessions) as s:
        changed = s.execute(
            update(IndexVersion).where(IndexVersion.version == version, IndexVersion.status == expected)
            .values(**values)
        ).rowcount
    if changed != 1:
        raise BuildError(f"index {version} is no longer {expected.value}: another reindex took over")


def build_version(
    settings: Settings, sessions: sessionmaker[Session], model: ModelVersion, snapshot: VectorSnapshot,
    *, on_verify: Callable[[], None] | None = None,
) -> BuiltIndex:
    """Build, verify and mark READY (or FAILED) a new index version of ``snapshot``;
    ``on_verify`` is called between the two (job progress)."""
    version = new_version("i")
    directory = settings.indexes_dir / version
    with session_scope(sessions) as s:
        s.add(IndexVersion(version=version, model_id=model.id, path=str(directory),
                           status=IndexStatus.BUILDING, n_trees=settings.annoy_trees))
    try:
        metric = metric_of(model)
        started = time.perf_counter()
        build_index(directory, snapshot.image_ids, snapshot.vectors, index_version=version,
                    model_version=model.version, metric=metric, n_trees=settings.annoy_trees)
        if settings.neighbour_list_k > 0:
            # before READY, so no process can serve the version while its manifest is rewritten;
            # in this process for now (chunks are independent: core.index.neighbours.compute_chunk)
            add_neighbour_lists(directory, snapshot.vectors, k=settings.neighbour_list_k,
                                exact_limit=settings.neighbour_exact_limit,
                                search_k=settings.neighbour_search_k)
            # the results' metadata beside the lists, which are all it serves with
            with session_scope(sessions) as s:
                add_metadata_table(directory, s.connection())
        build_seconds = time.perf_counter() - started
        if on_verify is not None:
            on_verify()
        started = time.perf_counter()
        recall = verify_recall(directory, snapshot, metric, model.version, settings.verify_sample_size,
                               search_k=settings.annoy_search_k)
        verify_seconds = time.perf_counter() - started
    except BuildError:
        raise
    except Exception as exc:
        _set_status(sessions, version, IndexStatus.BUILDING, status=IndexStatus.FAILED,
                    error=f"{type(exc).__name__}: {exc}")
        raise
    built = BuiltIndex(
        version=version, directory=directory, image_count=len(snapshot.image_ids),
        item_count=int(np.unique(snapshot.item_ids).size), self_recall=recall,
        build_seconds=build_seconds, verify_seconds=verify_seconds,
    )
    counts = dict(image_count=built.image_count, item_count=built.item_count, self_recall=recall,
                  build_seconds=round(build_seconds, 3),
                  max_embedding_created_at=snapshot.max_created_at)
    if recall < settings.min_verify_recall:
        error = (f"self-recall@{VERIFY_K} {recall:.3f} is below LOOKALIKE_MIN_VERIFY_RECALL="
                 f"{settings.min_verify_recall} (try more LOOKALIKE_ANNOY_TREES)")
        _set_status(sessions, version, IndexStatus.BUILDING, status=IndexStatus.FAILED, error=error, **counts)
        remove_index_dir(directory)
        raise BuildError(f"index {version} not published: {error}")
    _set_status(sessions, version, IndexStatus.BUILDING, status=IndexStatus.READY, **counts)
    return built


def verify_recall(directory: Path, snapshot: VectorSnapshot, metric: Metric, model_version: str,
                  sample_size: int, *, search_k: int = -1) -> float:
    """Self-recall@k of the built index (``core.index.verify.self_recall``: against exact
    search, on a fixed sample of its own vectors, each item left out of its own results).

    Queried with the ``search_k`` the service uses, so the number is the recall users get.
    Loading the directory through :meth:`VectorIndex.load` with checksums also proves
    that what was written is what the service will read.
    """
    index = VectorIndex.load(directory, expected_model_version=model_version,
                             expected_dim=snapshot.vectors.shape[1], expected_metric=metric,
                             verify_checksum=True)
    try:
        if not np.array_equal(index.ids, snapshot.image_ids):
            raise RuntimeError(f"index {directory.name} does not hold the snapshot's images in its order")
        return self_recall(index, snapshot.vectors, sample_size=sample_size, k=VERIFY_K,
                           search_k=search_k, seed=VERIFY_SEED)
    finally:
        index.close()
