"""Precomputed neighbour lists of an index version: the ``K`` nearest rows of every row.

A similar-by-id request for an indexed photo then costs a lookup instead of an Annoy
query (issue #14). The lists live in the version's directory beside ``index.ann``::

    neighbours.npy            int32 [n, K]: nearest rows, best first (row i's own row first)
    neighbour_distances.npy   float32 [n, K]: their distances, as Annoy reports them

both plain ``.npy`` files that every serving process memory-maps (one shared copy in
the page cache), checksummed in the manifest, which also records ``K``, how the lists
were computed and their recall@10 against exact search on a fixed sample.

Computed in row chunks (:func:`compute_chunk`, a pure function of the vectors, the
loaded index and a row range, so chunks can be spread over workers) by one of two
methods: **exact** blockwise search (core.index.exact) while the index has at most
``exact_limit`` rows, else **Annoy** at a high ``search_k``; exact search costs
``n²·d`` multiply-adds, which on two cores stops being affordable somewhere past a few
hundred thousand rows (docs/BENCHMARKS.md).

Written after the directory is built but before its SQL row is READY, so no process
can be serving it: each array appears by an atomic rename, and the manifest naming
them is rewritten (atomically) last. A crash in between leaves arrays that the old
manifest does not mention, i.e. a version without lists, which still serves.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.atomic_files import replacing, sha256_file
from core.index.annoy_index import VectorIndex
from core.index.exact import exact_search, recall_at_k
from core.index.manifest import (
    NEIGHBOUR_DISTANCES_FILE,
    NEIGHBOURS_FILE,
    IndexManifest,
    IndexMismatchError,
    Metric,
)
from core.index.validate import check_positive_int

log = logging.getLogger(__name__)

RECALL_K = 10
RECALL_SAMPLE = 1000
RECALL_SEED = 0
"""A fixed sample, so two computations of the same lists report the same recall."""
CHUNK_ROWS = 4096


class NeighbourMethod(str, enum.Enum):
    """How a version's lists were computed (recorded in its manifest)."""

    EXACT = "exact"
    ANNOY = "annoy"


def choose_method(count: int, exact_limit: int) -> NeighbourMethod:
    """Exact search while it is affordable (``count <= exact_limit``), else Annoy."""
    return NeighbourMethod.EXACT if count <= exact_limit else NeighbourMethod.ANNOY


def compute_chunk(index: VectorIndex, vectors: np.ndarray, start: int, stop: int, k: int, *,
                  method: NeighbourMethod, search_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of rows ``start..stop`` (int32 [m, k]) and distances (float32).

    ``vectors`` are the index's own vectors in row order. For euclidean and angular
    indexes a row's own row comes first at distance 0, as :meth:`VectorIndex.query_by_id`
    places it; a row with fewer than ``k`` results (a tiny ``search_k``) is padded with
    row -1 and distance +inf, which a reader treats as the end of the list.
    """
    metric = index.manifest.metric
    m = stop - start
    rows = np.full((m, k), -1, dtype=np.int32)
    dists = np.full((m, k), np.inf, dtype=np.float32)
    if method is NeighbourMethod.EXACT:
        found, found_d = exact_search(vectors, vectors[start:stop], k, metric=metric)
        lists = [(r.tolist(), d.tolist()) for r, d in zip(found, found_d)]
    else:
        lists = [index.nearest_rows(row, k, search_k=search_k) for row in range(start, stop)]
    for i, (got, got_d) in enumerate(lists):
        own = start + i
        if metric is not Metric.DOT:
            keep = [(r, d) for r, d in zip(got, got_d) if r != own][: k - 1]
            got, got_d = [own] + [r for r, _ in keep], [0.0] + [d for _, d in keep]
        rows[i, :len(got)] = got
        dists[i, :len(got)] = got_d
    return rows, dists


def add_neighbour_lists(directory: Path, vectors: np.ndarray, *, k: int, exact_limit: int,
                        search_k: int, chunk_rows: int = CHUNK_ROWS) -> IndexManifest:
    """Compute, write and checksum the lists of the index at ``directory``; return its new manifest.

    ``vectors`` must be the vectors the index was built from, in row order. The
    directory must not be served yet (see the module docstring).
    """
    k = check_positive_int(k, "k")
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    started = time.perf_counter()
    index = VectorIndex.load(directory)
    try:
        manifest = index.manifest
        if vectors.shape != (manifest.count, manifest.dim):
            raise ValueError(f"vectors must be the index's own [{manifest.count}, {manifest.dim}], "
                             f"got {vectors.shape}")
        k = min(k, manifest.count)
        method = choose_method(manifest.count, exact_limit)
        rows_path, dists_path = directory / NEIGHBOURS_FILE, directory / NEIGHBOUR_DISTANCES_FILE
        with replacing(rows_path, fsync=True) as rows_tmp, replacing(dists_path, fsync=True) as dists_tmp:
            rows_out = np.lib.format.open_memmap(rows_tmp, mode="w+", dtype=np.int32, shape=(manifest.count, k))
            dists_out = np.lib.format.open_memmap(dists_tmp, mode="w+", dtype=np.float32,
                                                  shape=(manifest.count, k))
            for start in range(0, manifest.count, chunk_rows):
                stop = min(start + chunk_rows, manifest.count)
                rows_out[start:stop], dists_out[start:stop] = compute_chunk(
                    index, vectors, start, stop, k, method=method, search_k=search_k)
            rows_out.flush()
            dists_out.flush()
            del rows_out, dists_out
        lists = NeighbourLists.open(directory, replace(manifest, neighbours_k=k))
        recall = lists_recall(lists, vectors, manifest.metric)
    finally:
        index.close()
    updated = replace(
        manifest, neighbours_k=k, neighbours_method=method.value,
        neighbours_checksum=sha256_file(rows_path), neighbour_distances_checksum=sha256_file(dists_path),
        neighbours_recall=round(recall, 6), neighbours_seconds=round(time.perf_counter() - started, 3),
    )
    updated.write(directory)
    log.info("neighbour lists of %s: %d x %d (%s) in %.1fs, recall@%d %.4f", manifest.index_version,
             manifest.count, k, method.value, updated.neighbours_seconds, RECALL_K, recall)
    return updated


def lists_recall(lists: NeighbourLists, vectors: np.ndarray, metric: Metric, *,
                 sample_size: int = RECALL_SAMPLE, seed: int = RECALL_SEED) -> float:
    """recall@10 of the lists against exact search on a fixed sample of rows, the row itself left out."""
    n = len(vectors)
    if n < 2:
        return 1.0
    k = min(RECALL_K, n - 1, lists.k - 1) if lists.k > 1 else 0
    if k < 1:
        return 1.0
    sample = np.random.default_rng(seed).choice(n, size=min(sample_size, n), replace=False)
    truth, _ = exact_search(vectors, vectors[sample], k + 1, metric=metric)
    exact_rows = [[r for r in t.tolist() if r != row][:k] for row, t in zip(sample, truth)]
    found = [[r for r in lists.rows[row].tolist() if r not in (row, -1)][:k] for row in sample]
    return recall_at_k(found, np.array(exact_rows))


@dataclass(frozen=True)
class NeighbourLists:
    """A version's lists, memory-mapped read-only (the pages are shared between processes)."""

    rows: np.ndarray
    distances: np.ndarray

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    @classmethod
    def open(cls, directory: Path, manifest: IndexManifest, *,
             verify_checksum: bool = False) -> NeighbourLists | None:
        """The lists the manifest names; None if it names none (an older version)."""
        if manifest.neighbours_k <= 0:
            return None
        directory = Path(directory)
        paths = ((directory / NEIGHBOURS_FILE, manifest.neighbours_checksum, np.int32),
                 (directory / NEIGHBOUR_DISTANCES_FILE, manifest.neighbour_distances_checksum, np.float32))
        arrays = []
        for path, want, dtype in paths:
            if not path.is_file():
                raise FileNotFoundError(f"neighbour list file missing: {path}")
            if verify_checksum and want and (found := sha256_file(path)) != want:
                raise IndexMismatchError(f"checksum of {path.name}: expected {want}, found {found}")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape != (manifest.count, manifest.neighbours_k) or array.dtype != dtype:
                raise IndexMismatchError(f"{path.name}: expected {np.dtype(dtype)} "
                                         f"[{manifest.count}, {manifest.neighbours_k}], "
                                         f"found {array.dtype} {array.shape}")
            arrays.append(array)
        return cls(rows=arrays[0], distances=arrays[1])

    def of_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``row``'s list (rows, distances), best first, without its padding."""
        rows, dists = self.rows[row], self.distances[row]
        end = int(np.argmax(rows < 0)) if rows[-1] < 0 else len(rows)
        return np.asarray(rows[:end]), np.asarray(dists[:end])
