"""Near-duplicate items: the same product photographed or uploaded twice under different ids.

Byte-identical photos are merged at import; this finds the rest in two stages
(docs/ARCHITECTURE.md, "Near-duplicate detection"):

1. **Candidates.** Every servable image of the active index is queried for its ``k``
   nearest neighbours in that index (the served vectors and metric), and for its
   ``k`` nearest neighbours by photo descriptor (:func:`core.signatures.descriptors`,
   an in-memory Annoy forest), because the embedding of a product model keeps
   re-encoded copies close but not cropped ones. A pair of images of *different*
   items is a candidate when its embedding distance is below a cutoff calibrated on
   the catalog: ``ratio`` x the median distance from an image to its nearest other
   item (an explicit ``threshold`` overrides it). The default ratio is generous: the
   cutoff only bounds the work, the verification decides.
2. **Verification** on the photos themselves: a candidate is a near duplicate when
   its :func:`core.signatures.aligned_similarity` (band-passed thumbnails, best of 81
   small crops, both ways) reaches ``min_similarity``. Signatures are computed once
   per photo content and stored (core/signature_store.py).

Verified pairs join their items into groups (connected components).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import ImageStatus, Item, ItemImage, ItemStatus, session_scope
from core.index import Metric, VectorIndex
from core.media import MediaStore
from core.registry import active_index_row
from core.signature_store import load_signatures
from core.signatures import aligned_similarity, descriptors


class NoActiveIndex(LookupError):
    """There is no published index to measure distances in."""


class ScanStage(str, Enum):
    """The steps of a scan, in order, as :data:`Progress` reports them (a job's phases)."""

    SIGNATURES = "signatures"
    CANDIDATES = "candidates"
    VERIFYING = "verifying"


Progress = Callable[[ScanStage, int, int], None]
"""Called as ``(stage, done, total)`` when a stage starts and when it ends: a job's progress."""


def _no_progress(_stage: ScanStage, _done: int, _total: int) -> None:
    return None


@dataclass(frozen=True)
class DuplicatePair:
    """Two images of different items: their embedding distance and, once verified, their photo similarity."""

    image_a: int
    image_b: int
    distance: float
    similarity: float = float("nan")
    """:func:`core.signatures.aligned_similarity` (NaN: not verified)."""


@dataclass(frozen=True)
class DuplicateGroup:
    """Items joined by near-duplicate pairs, external ids ascending; pairs closest first."""

    items: tuple[str, ...]
    pairs: tuple[DuplicatePair, ...]

    @property
    def min_distance(self) -> float:
        return self.pairs[0].distance


@dataclass(frozen=True)
class DuplicateReport:
    index_version: str
    metric: Metric
    threshold: float
    """The candidate cutoff: an embedding distance in the index's metric."""
    calibrated: bool
    """True when the threshold came from the catalog (ratio x median), False when given."""
    median_distance: float
    """Median distance from an image to its nearest image of another item (NaN: fewer than two items)."""
    images: int
    groups: tuple[DuplicateGroup, ...]
    """Largest group first, then the closest pair, then the first external id."""
    min_similarity: float = float("nan")
    """What a candidate's photo similarity had to reach (-1: grouped on the embedding alone)."""
    candidates: int = 0
    """Candidate pairs below the threshold that were verified."""
    signatures_computed: int = 0
    """Photos decoded for a signature in this call (the rest were stored)."""


@dataclass(frozen=True)
class NeighbourScan:
    """Each image's neighbours of other items, from one pass over the index."""

    image_ids: np.ndarray
    """int64 [n]: the scanned images."""
    nearest: np.ndarray
    """float32 [n]: distance to the nearest image of another item (inf if none was found)."""
    pairs: list[DuplicatePair]
    """Every (image, neighbour of another item) found, each unordered pair once, with ``a < b``."""


def scan_neighbours(index: VectorIndex, image_ids: np.ndarray, item_of: dict[int, int], *, k: int,
                    search_k: int = -1) -> NeighbourScan:
    """Query ``k`` neighbours of every image and keep those of other (listed) items."""
    if index.manifest.metric is Metric.DOT:
        raise ValueError("near duplicates need a distance metric; this index ranks by dot product")
    nearest = np.full(len(image_ids), np.inf, dtype=np.float32)
    seen: dict[tuple[int, int], float] = {}
    for row, image in enumerate(image_ids.tolist()):
        ids, dists = index.query_by_id(image, k + 1, search_k=search_k)
        own = item_of[image]
        for other, dist in zip(ids.tolist(), dists.tolist(), strict=True):
            other_item = item_of.get(other)
            if other_item is None or other_item == own:
                continue
            nearest[row] = min(nearest[row], dist)
            key = (min(image, other), max(image, other))
            seen[key] = min(seen.get(key, dist), dist)
    pairs = [DuplicatePair(a, b, d) for (a, b), d in seen.items()]
    return NeighbourScan(np.asarray(image_ids, np.int64), nearest, pairs)


def calibrated_threshold(nearest: np.ndarray, ratio: float) -> tuple[float, float]:
    """(threshold, median): ``ratio`` x the median nearest-other-item distance."""
    finite = nearest[np.isfinite(nearest)]
    if not len(finite):
        return 0.0, float("nan")
    median = float(np.median(finite))
    return ratio * median, median


def signature_neighbours(thumbs: np.ndarray, image_ids: np.ndarray, item_of: dict[int, int], *, k: int,
                         n_trees: int = 10) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of images of different items among each other's ``k`` nearest by descriptor.

    ``thumbs`` holds one signature per entry of ``image_ids``. An in-memory Annoy
    forest (angular) over :func:`core.signatures.descriptors`: about a second per 10k
    photos to build, nothing to keep, since the signatures are what is stored.
    """
    if len(image_ids) < 2 or k < 1:
        return set()
    vectors = descriptors(thumbs)
    forest = AnnoyIndex(vectors.shape[1], "angular")
    for row, vector in enumerate(vectors):
        forest.add_item(row, vector)
    forest.build(n_trees, n_jobs=1)
    ids = image_ids.tolist()
    found: set[tuple[int, int]] = set()
    for row, image in enumerate(ids):
        own = item_of[image]
        for other_row in forest.get_nns_by_item(row, k + 1):
            other = ids[other_row]
            if item_of[other] != own:
                found.add((min(image, other), max(image, other)))
    forest.unload()
    return found


@dataclass(frozen=True)
class Detection:
    """Every candidate pair of a scan, verified: what :func:`group_pairs` groups at any similarity bar."""

    scan: NeighbourScan
    threshold: float
    median_distance: float
    candidates: list[DuplicatePair]
    """Pairs below ``threshold`` from either source, each with its photo similarity (NaN: not verified)."""


def _distances(index: VectorIndex, rows: np.ndarray, image_ids: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
    """Distances in the index's metric between the images ``a[i]`` and ``b[i]`` (vectorised, exact)."""
    vectors = np.stack([index.vector(int(i)) for i in image_ids]).astype(np.float64)
    va, vb = vectors[rows[a]], vectors[rows[b]]
    if index.manifest.metric is Metric.ANGULAR:  # Annoy's angular distance: sqrt(2 - 2 cos)
        cos = (va * vb).sum(1) / np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12)
        return np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
    return np.linalg.norm(va - vb, axis=1)


def detect(index: VectorIndex, image_ids: np.ndarray, item_of: dict[int, int], thumbs: np.ndarray,
           valid: np.ndarray, *, ratio: float, threshold: float | None, k: int, signature_k: int,
           min_similarity: float, search_k: int = -1, progress: Progress = _no_progress) -> Detection:
    """Both candidate stages and the verification over ``image_ids`` (ascending, all in ``index``).

    ``thumbs``/``valid`` are the images' signatures (core/signature_store.py); an image
    without one is only an embedding candidate and never verifies (similarity NaN).
    A pair is searched for its best alignment only while below ``min_similarity``, so
    similarities above that bar are lower bounds (grouping at a higher bar needs a new call).
    """
    progress(ScanStage.CANDIDATES, 0, len(image_ids))
    scan = scan_neighbours(index, image_ids, item_of, k=k, search_k=search_k)
    limit, median = calibrated_threshold(scan.nearest, ratio)
    used = limit if threshold is None else threshold
    distance = {(p.image_a, p.image_b): p.distance for p in scan.pairs}
    row = np.full(int(image_ids.max()) + 1 if len(image_ids) else 0, -1, np.int64)
    row[image_ids] = np.arange(len(image_ids))
    extra = sorted(signature_neighbours(thumbs[valid], image_ids[valid], item_of, k=signature_k) - distance.keys())
    if extra:
        ea, eb = np.array(extra, np.int64).T
        distance.update(zip(extra, _distances(index, row, image_ids, ea, eb).tolist(), strict=True))
    close = sorted(key for key, d in distance.items() if d < used)
    a = np.array([row[x] for x, _ in close], np.int64)
    b = np.array([row[y] for _, y in close], np.int64)
    checkable = valid[a] & valid[b] if len(close) else np.zeros(0, bool)
    progress(ScanStage.VERIFYING, 0, int(checkable.sum()))
    similarity = np.full(len(close), np.nan, np.float32)
    if min_similarity > -1.0:  # -1: the embedding alone decides, nothing to verify
        similarity[checkable] = aligned_similarity(thumbs, a[checkable], b[checkable], enough=min_similarity)
    pairs = [DuplicatePair(x, y, distance[(x, y)], float(sim)) for (x, y), sim in zip(close, similarity, strict=True)]
    progress(ScanStage.VERIFYING, int(checkable.sum()), int(checkable.sum()))
    return Detection(scan, used, median, pairs)


def group_pairs(pairs: list[DuplicatePair], item_of: dict[int, int], external_of: dict[int, str],
                threshold: float, min_similarity: float | None = None) -> tuple[DuplicateGroup, ...]:
    """Connected components (union-find) of items over the pairs below ``threshold``, sorted.

    With ``min_similarity`` a pair must also have a photo similarity of at least that.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    close = [p for p in pairs if p.distance < threshold and (min_similarity is None or p.similarity >= min_similarity)]
    for p in close:
        ra, rb = find(item_of[p.image_a]), find(item_of[p.image_b])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, set[int]] = {}
    edges: dict[int, list[DuplicatePair]] = {}
    for p in close:
        root = find(item_of[p.image_a])
        members.setdefault(root, set()).update((item_of[p.image_a], item_of[p.image_b]))
        edges.setdefault(root, []).append(p)
    groups = [DuplicateGroup(tuple(sorted(external_of[i] for i in members[root])),
                             tuple(sorted(edges[root], key=lambda p: (p.distance, p.image_a, p.image_b))))
              for root in members]
    return tuple(sorted(groups, key=lambda g: (-len(g.items), g.min_distance, g.items)))


def _servable_images(session: Session) -> tuple[dict[int, int], dict[int, str], dict[int, str]]:
    rows = session.execute(
        select(ItemImage.id, ItemImage.item_id, ItemImage.media_key, Item.external_id)
        .join(Item, Item.id == ItemImage.item_id)
        .where(ItemImage.status == ImageStatus.ACTIVE, Item.status == ItemStatus.ACTIVE)
    ).all()
    return ({r.id: r.item_id for r in rows}, {r.item_id: r.external_id for r in rows},
            {r.id: r.media_key for r in rows})


def find_duplicates(sessions: sessionmaker[Session], store: MediaStore, *, ratio: float,
                    threshold: float | None = None, min_similarity: float, k: int = 20, signature_k: int = 20,
                    search_k: int = -1, progress: Progress = _no_progress) -> DuplicateReport:
    """Near-duplicate groups among the servable images of the active index.

    ``threshold`` (a distance in the index's metric) overrides the calibrated
    candidate cutoff; ``min_similarity`` is what a candidate's photo similarity must
    reach (-1 accepts every candidate: the embedding alone decides). Photos without a
    stored signature are read from ``store`` once. Raises :class:`NoActiveIndex` when
    nothing is published. ``progress`` hears of each :class:`ScanStage` as it starts and ends.
    """
    if ratio <= 0 or (threshold is not None and threshold < 0):
        raise ValueError("ratio must be > 0 and threshold >= 0")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError("min_similarity must be in [-1, 1]")
    with session_scope(sessions) as session:
        row = active_index_row(session)
        if row is None:
            raise NoActiveIndex("no index is published yet: run `lookalike reindex`")
        version, path = row.version, Path(row.path)
        item_of, external_of, key_of = _servable_images(session)
    with VectorIndex.load(path) as index:
        # images deleted since the build are still in the index: not scanned, not matched
        ids = np.sort(index.ids[np.fromiter((int(i) in item_of for i in index.ids), bool, len(index.ids))])
        progress(ScanStage.SIGNATURES, 0, len(ids))
        thumbs, valid, computed = load_signatures(sessions, store, [key_of[int(i)] for i in ids])
        progress(ScanStage.SIGNATURES, len(ids), len(ids))
        found = detect(index, ids, item_of, thumbs, valid, ratio=ratio, threshold=threshold, k=k,
                       signature_k=signature_k, min_similarity=min_similarity, search_k=search_k,
                       progress=progress)
        metric = index.manifest.metric
    groups = group_pairs(found.candidates, item_of, external_of, found.threshold,
                         None if min_similarity <= -1.0 else min_similarity)
    return DuplicateReport(index_version=version, metric=metric, threshold=found.threshold,
                           calibrated=threshold is None, median_distance=found.median_distance, images=len(ids),
                           groups=groups, min_similarity=min_similarity, candidates=len(found.candidates),
                           signatures_computed=computed)


def find_duplicates_with(settings: Settings, sessions: sessionmaker[Session], *, ratio: float | None = None,
                         threshold: float | None = None, min_similarity: float | None = None,
                         progress: Progress = _no_progress) -> DuplicateReport:
    """:func:`find_duplicates` with the settings' defaults and media store (CLI, API and UI)."""
    bar = settings.duplicate_min_similarity if min_similarity is None else min_similarity
    return find_duplicates(sessions, MediaStore.from_settings(settings, fsync=False),
                           ratio=ratio or settings.duplicate_ratio, threshold=threshold, min_similarity=bar,
                           k=settings.duplicate_k, signature_k=settings.duplicate_k,
                           search_k=settings.duplicate_search_k, progress=progress)


def report_to_dict(report: DuplicateReport, limit: int | None = None) -> dict[str, Any]:
    """The JSON form (CLI ``--json`` and the API): the first ``limit`` groups, and how many there are."""
    groups = report.groups if limit is None else report.groups[:limit]
    median = None if np.isnan(report.median_distance) else report.median_distance
    return {
        "index_version": report.index_version, "metric": report.metric.value,
        "threshold": report.threshold, "calibrated": report.calibrated, "median_distance": median,
        "min_similarity": None if np.isnan(report.min_similarity) else report.min_similarity,
        "candidates": report.candidates, "signatures_computed": report.signatures_computed,
        "images": report.images, "group_count": len(report.groups),
        "groups": [{"items": list(g.items),
                    "pairs": [{"image_a": p.image_a, "image_b": p.image_b, "distance": p.distance,
                               "similarity": None if np.isnan(p.similarity) else p.similarity}
                              for p in g.pairs]} for g in groups],
    }
