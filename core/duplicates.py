"""Near-duplicate items: the same product photographed or uploaded twice under different ids.

Byte-identical photos are merged at import; this finds the rest under the active
model. Every image of the active index is queried for its nearest neighbours in
that index (the same Annoy forest search serves, so the vectors and the metric are
the served ones); a pair of images of *different* items is a near duplicate when
its distance is below a threshold, and pairs are joined into groups of items
(connected components). The threshold is calibrated on the catalog itself:
``ratio`` x the median distance from an image to its nearest other item
(docs/ARCHITECTURE.md, "Near-duplicate detection"). The median is robust to the
duplicates it is meant to expose (they are a small minority) and scale-free, so one
ratio suits any model; an explicit threshold overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import ImageStatus, Item, ItemImage, ItemStatus, session_scope
from core.index import Metric, VectorIndex
from core.registry import active_index_row


class NoActiveIndex(LookupError):
    """There is no published index to measure distances in."""


@dataclass(frozen=True)
class DuplicatePair:
    """Two images of different items closer than the threshold."""

    image_a: int
    image_b: int
    distance: float


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
    calibrated: bool
    """True when the threshold came from the catalog (ratio x median), False when given."""
    median_distance: float
    """Median distance from an image to its nearest image of another item (NaN: fewer than two items)."""
    images: int
    groups: tuple[DuplicateGroup, ...]
    """Largest group first, then the closest pair, then the first external id."""


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


def group_pairs(pairs: list[DuplicatePair], item_of: dict[int, int], external_of: dict[int, str],
                threshold: float) -> tuple[DuplicateGroup, ...]:
    """Connected components (union-find) of items over the pairs below ``threshold``, sorted."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    close = [p for p in pairs if p.distance < threshold]
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


def _servable_images(session: Session) -> tuple[dict[int, int], dict[int, str]]:
    rows = session.execute(
        select(ItemImage.id, ItemImage.item_id, Item.external_id)
        .join(Item, Item.id == ItemImage.item_id)
        .where(ItemImage.status == ImageStatus.ACTIVE, Item.status == ItemStatus.ACTIVE)
    ).all()
    return {r.id: r.item_id for r in rows}, {r.item_id: r.external_id for r in rows}


def find_duplicates(sessions: sessionmaker[Session], *, ratio: float, threshold: float | None = None,
                    k: int = 10, search_k: int = -1) -> DuplicateReport:
    """Near-duplicate groups among the servable images of the active index.

    ``threshold`` (a distance in the index's metric) overrides the calibrated one.
    Raises :class:`NoActiveIndex` when nothing is published.
    """
    if ratio <= 0 or (threshold is not None and threshold < 0):
        raise ValueError("ratio must be > 0 and threshold >= 0")
    with session_scope(sessions) as session:
        row = active_index_row(session)
        if row is None:
            raise NoActiveIndex("no index is published yet: run `lookalike reindex`")
        version, path = row.version, Path(row.path)
        item_of, external_of = _servable_images(session)
    with VectorIndex.load(path) as index:
        # images deleted since the build are still in the index: not scanned, not matched
        ids = np.sort(index.ids[np.fromiter((int(i) in item_of for i in index.ids), bool, len(index.ids))])
        scan = scan_neighbours(index, ids, item_of, k=k, search_k=search_k)
        metric = index.manifest.metric
    limit, median = calibrated_threshold(scan.nearest, ratio)
    used = limit if threshold is None else threshold
    return DuplicateReport(index_version=version, metric=metric, threshold=used, calibrated=threshold is None,
                           median_distance=median, images=len(ids),
                           groups=group_pairs(scan.pairs, item_of, external_of, used))


def report_to_dict(report: DuplicateReport, limit: int | None = None) -> dict[str, Any]:
    """The JSON form (CLI ``--json`` and the API): the first ``limit`` groups, and how many there are."""
    groups = report.groups if limit is None else report.groups[:limit]
    median = None if np.isnan(report.median_distance) else report.median_distance
    return {
        "index_version": report.index_version, "metric": report.metric.value,
        "threshold": report.threshold, "calibrated": report.calibrated, "median_distance": median,
        "images": report.images, "group_count": len(report.groups),
        "groups": [{"items": list(g.items),
                    "pairs": [{"image_a": p.image_a, "image_b": p.image_b, "distance": p.distance}
                              for p in g.pairs]} for g in groups],
    }
