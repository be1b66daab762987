"""Versioned Annoy index directories: build one atomically, load it memory-mapped, query it.

Layout of ``indexes/<version>/``::

    index.ann      Annoy forest; item i is row i (0..n-1)
    ids.npy        int64 [n]: row -> external id
    manifest.json  see :class:`IndexManifest`

Annoy allocates ``max_id + 1`` slots, so external ids (arbitrary int64) are never
used as Annoy ids: rows are, and ``ids.npy`` translates back.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from core.atomic_files import fsync_path, rename_no_replace, sha256_file
from core.index.manifest import (
    ANNOY_FILE,
    FORMAT_VERSION,
    IDS_FILE,
    IndexManifest,
    IndexMismatchError,
    Metric,
)
from core.index.validate import (
    check_ids,
    check_positive_int,
    check_query,
    check_search_k,
    check_vectors,
)

log = logging.getLogger(__name__)


def build_index(
    directory: Path,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    index_version: str,
    model_version: str,
    metric: Metric,
    n_trees: int,
    n_jobs: int = -1,
    progress: bool = False,
    on_disk: bool = True,
) -> IndexManifest:
    """Build an index directory at ``directory``, which must not exist yet.

    Everything is written into a sibling ``.<name>.tmp-<random>`` directory, fsynced,
    and renamed into place in one step, so readers see either no directory or a
    complete one; on any error the temp directory is removed and nothing appears.
    ``on_disk`` builds straight into the file (Annoy's ``on_disk_build``) instead
    of growing the forest in anonymous memory and writing it out on save: for 1M x
    128-d that keeps ~1 GB out of anonymous memory (page cache instead, which the
    kernel can write back and evict), at about the same build time.
    """
    directory = Path(directory)
    metric = Metric(metric)
    n_trees = check_positive_int(n_trees, "n_trees")
    if not index_version or not model_version:
        raise ValueError("index_version and model_version must be non-empty")
    vectors = check_vectors(vectors)
    ids = check_ids(ids, len(vectors))
    if directory.exists():
        raise FileExistsError(f"index directory already exists: {directory}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        manifest = _build_into(
            tmp, ids, vectors, index_version=index_version, model_version=model_version,
            metric=metric, n_trees=n_trees, n_jobs=n_jobs, progress=progress, on_disk=on_disk,
        )
        fsync_path(tmp)
        rename_no_replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(directory.parent)
    log.info("index %s published at %s (%d items)", index_version, directory, manifest.count)
    return manifest


def _build_into(
    tmp: Path, ids: np.ndarray, vectors: np.ndarray, *, index_version: str,
    model_version: str, metric: Metric, n_trees: int, n_jobs: int, progress: bool,
    on_disk: bool,
) -> IndexManifest:
    """Write the three files into ``tmp`` (a fresh private directory) and fsync them."""
    n, dim = vectors.shape
    ann_path = tmp / ANNOY_FILE
    started = time.perf_counter()
    index = AnnoyIndex(dim, metric.value)
    index.verbose(progress)
    if on_disk:
        index.on_disk_build(str(ann_path))
    for row in range(n):
        index.add_item(row, vectors[row])
    log.info("building %d trees over %d x %d vectors (%s)", n_trees, n, dim, metric.value)
    index.build(n_trees, n_jobs=n_jobs)
    index.save(str(ann_path))  # a no-op after on_disk_build: the file is already complete
    index.unload()
    build_seconds = time.perf_counter() - started

    ids_path = tmp / IDS_FILE
    with open(ids_path, "wb") as fh:
        np.save(fh, ids, allow_pickle=False)
    for path in (ann_path, ids_path):
        fsync_path(path)
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        index_version=index_version,
        model_version=model_version,
        metric=metric,
        dim=dim,
        n_trees=n_trees,
        count=n,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(build_seconds, 6),
        checksum=sha256_file(ann_path),
        ids_checksum=sha256_file(ids_path),
    )
    manifest.write(tmp)
    return manifest


class VectorIndex:
    """A loaded, read-only index directory.

    ``index.ann`` is memory-mapped without prefaulting, so every process that loads
    the same version shares one copy of its pages in the page cache. Queries are
    safe from several threads; call :meth:`close` only when none is in flight
    (dropping the last reference unmaps it too).
    """

    def __init__(self, directory: Path, manifest: IndexManifest, annoy: AnnoyIndex,
                 ids: np.ndarray) -> None:
        self.directory = directory
        self.manifest = manifest
        self.ids = ids
        self._annoy: AnnoyIndex | None = annoy
        # id -> row by binary search on a sorted copy: 16 bytes per item, no dict of
        # a million Python ints.
        order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[order]
        self._sorted_rows = order.astype(np.int64)

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        expected_model_version: str | None = None,
        expected_dim: int | None = None,
        expected_metric: Metric | None = None,
        verify_checksum: bool = False,
    ) -> VectorIndex:
        """Open an index directory, refusing it (IndexMismatchError) if it is not as expected."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"index directory not found: {directory}")
        manifest = IndexManifest.read(directory)
        manifest.check(model_version=expected_model_version, dim=expected_dim,
                       metric=expected_metric)
        ann_path, ids_path = directory / ANNOY_FILE, directory / IDS_FILE
        for path in (ann_path, ids_path):
            if not path.is_file():
                raise FileNotFoundError(f"index file missing: {path}")
        if verify_checksum:
            for path, want in ((ann_path, manifest.checksum), (ids_path, manifest.ids_checksum)):
                if want and (found := sha256_file(path)) != want:
                    raise IndexMismatchError(
                        f"checksum of {path.name}: expected {want}, found {found}"
                    )
        ids = np.load(ids_path, allow_pickle=False)
        if ids.shape != (manifest.count,) or ids.dtype != np.int64:
            raise IndexMismatchError(
                f"{IDS_FILE}: expected int64 [{manifest.count}], found {ids.dtype} {ids.shape}"
            )
        annoy = AnnoyIndex(manifest.dim, manifest.metric.value)
        try:
            annoy.load(str(ann_path), prefault=False)
        except OSError as exc:
            raise IndexMismatchError(f"{ann_path} does not load as a {manifest.dim}-d "
                                     f"{manifest.metric.value} Annoy index: {exc}") from exc
        if annoy.get_n_items() != manifest.count:
            annoy.unload()
            raise IndexMismatchError(
                f"count: expected {manifest.count}, found {annoy.get_n_items()} items in {ANNOY_FILE}"
            )
        return cls(directory, manifest, annoy, ids)

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return self.manifest.count

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _index(self) -> AnnoyIndex:
        if self._annoy is None:
            raise RuntimeError(f"index {self.manifest.index_version} is closed")
        return self._annoy

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each external id, -1 where the id is not in the index (vectorised)."""
        wanted = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, wanted)
        pos_clipped = np.minimum(pos, len(self._sorted_ids) - 1)
        found = self._sorted_ids[pos_clipped] == wanted
        return np.where(found, self._sorted_rows[pos_clipped], -1)

    def contains(self, item_id: int) -> bool:
        return bool(self.rows_of(np.array([item_id]))[0] >= 0)

    def _row(self, item_id: int) -> int:
        row = int(self.rows_of(np.array([item_id]))[0])
        if row < 0:
            raise KeyError(f"id {item_id} is not in index {self.manifest.index_version}")
        return row

    def vector(self, item_id: int) -> np.ndarray:
        """The stored vector of an id (KeyError if absent)."""
        return np.asarray(self._index.get_item_vector(self._row(item_id)), dtype=np.float32)

    # ------------------------------------------------------------------ queries
    def query(self, vector: np.ndarray, k: int, *,
              search_k: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids and their distances, best first.

        Distances are Annoy's: euclidean L2, angular ``sqrt(2 - 2 cos)``, and for
        ``dot`` the dot product itself (larger is closer, so that column descends).
        At most ``len(self)`` results; fewer if a tiny ``search_k`` finds fewer.
        """
        query = check_query(vector, self.manifest.dim)
        k = check_positive_int(k, "k")
        rows, dists = self._index.get_nns_by_vector(
            query, min(k, len(self)), search_k=check_search_k(search_k), include_distances=True
        )
        return self._translate(rows, dists)

    def query_by_id(self, item_id: int, k: int, *,
                    search_k: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of a stored item; the item itself comes first.

        For euclidean and angular it is placed first with distance 0 (float rounding
        in Annoy's angular formula can otherwise report ~3e-4, and an exact
        duplicate could tie ahead of it). For ``dot`` Annoy's order is kept.
        """
        row = self._row(item_id)
        k = check_positive_int(k, "k")
        rows, dists = self._index.get_nns_by_item(
            row, min(k, len(self)), search_k=check_search_k(search_k), include_distances=True
        )
        if self.manifest.metric is not Metric.DOT:
            keep = [(r, d) for r, d in zip(rows, dists) if r != row]
            rows = [row] + [r for r, _ in keep][: max(k - 1, 0)]
            dists = [0.0] + [d for _, d in keep][: max(k - 1, 0)]
        return self._translate(rows, dists)

    def nearest_rows(self, row: int, k: int, *, search_k: int = -1) -> tuple[list[int], list[float]]:
        """Annoy's ``k`` nearest rows of a stored row and their distances, best first.

        Rows, not external ids: the precomputed neighbour lists (core/index/neighbours.py)
        store rows, 4 bytes each, and translate through :attr:`ids` only when served.
        """
        return self._index.get_nns_by_item(int(row), min(check_positive_int(k, "k"), len(self)),
                                           search_k=check_search_k(search_k), include_distances=True)

    def _translate(self, rows: list[int], dists: list[float]) -> tuple[np.ndarray, np.ndarray]:
        return (self.ids[np.asarray(rows, dtype=np.int64)],
                np.asarray(dists, dtype=np.float32))

    def close(self) -> None:
        """Unmap the index file; later queries raise RuntimeError."""
        if self._annoy is not None:
            self._annoy.unload()
            self._annoy = None

    def __repr__(self) -> str:
        m = self.manifest
        return (f"VectorIndex({m.index_version!r}, model={m.model_version!r}, "
                f"metric={m.metric.value}, dim={m.dim}, count={m.count})")
