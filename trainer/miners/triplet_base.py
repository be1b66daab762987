"""Base class of the triplet miners and the stats they report."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace

import torch
from torch import Tensor

from trainer.distances import distance_matrix
from trainer.miners.base import (
    MinedTriplets,
    MiningStats,
    TripletBlock,
    TripletIndices,
    TripletSelection,
    check_distance_matrix,
    check_margin,
    count_valid_triplets,
    label_masks,
    mean_or_none,
)


class TripletMiner(ABC):
    """Base class: picks triplets from a distance matrix in the miner's own form.

    ``margin`` and ``squared`` say in which distance form (plain or squared
    Euclidean) "active" and, for semi-hard mining, the selection are judged.
    Give a miner the same ``margin`` and ``squared`` as its loss unless you mean
    to mine with a different margin on purpose.
    """

    def __init__(self, margin: float = 0.2, squared: bool = False) -> None:
        self.margin = check_margin(margin)
        self.squared = bool(squared)

    def __call__(self, embeddings: Tensor, labels: Tensor) -> MinedTriplets:
        """Mine a batch of (B, D) embeddings with their B class labels."""
        with torch.no_grad():
            dist = distance_matrix(embeddings.detach(), squared=self.squared)
            return self.mine(dist, labels)

    def mine(self, dist: Tensor, labels: Tensor) -> MinedTriplets:
        """Mine from a precomputed (B, B) distance matrix in this miner's form."""
        selection, stats = self.select(dist, labels)
        if isinstance(selection, TripletBlock):
            selection = selection.to_indices()
        return MinedTriplets(selection, stats)

    def select(
        self, dist: Tensor, labels: Tensor, candidate_labels: Tensor | None = None,
        not_positive: Tensor | None = None,
    ) -> tuple[TripletSelection, MiningStats]:
        """Like ``mine``, but may answer in the compact ``TripletBlock`` form (losses use this).

        With ``candidate_labels``, ``dist`` is (B, N): the batch's anchors against the batch
        then N - B extra candidates (``check_distance_matrix``); positives and negatives are
        column indices into those N. ``not_positive``: pairs that are never anchor-positive
        (``label_masks``), whichever miner selects.
        """
        with torch.no_grad():
            dist = dist.detach()
            labels, candidate_labels = check_distance_matrix(dist, labels, candidate_labels)
            positive, negative = label_masks(labels, candidate_labels, not_positive)
            selection, stats = self._select(dist, positive, negative, count_valid_triplets(positive, negative))
            return selection, replace(stats, violating=count_violating(dist, positive, negative, self.margin))

    @abstractmethod
    def _select(
        self, dist: Tensor, positive: Tensor, negative: Tensor, candidates: int
    ) -> tuple[TripletSelection, MiningStats]:
        """Select triplets from a detached matrix and the label masks of ``label_masks``;
        build the stats with ``index_stats`` / ``block_stats`` from what is at hand."""


# Up to this many (anchor-positive pair x column) elements the count is dense (one
# comparison each); above it each anchor's negatives are sorted once instead.
VIOLATING_DENSE_MAX_ELEMENTS = 1 << 22


def count_violating(dist: Tensor, positive: Tensor, negative: Tensor, margin: float) -> int:
    """Valid triplets (a, p, n) with ``d(a,p) - d(a,n) + margin > 0``, counted without listing them.

    Dense (one comparison per anchor-positive pair and column) while that is small; else
    each anchor's negative distances are sorted once and every ``d(a,p) + margin`` is
    binary-searched in them: O(B N log N) for a (B, N) matrix, whatever K.  Measured with a
    4,096-row memory at batch 32 (bench/bench_mining.py): dense 1 ms, sorted 13 ms.
    """
    anchor, pos = positive.nonzero(as_tuple=True)
    if anchor.numel() * dist.shape[1] <= VIOLATING_DENSE_MAX_ELEMENTS:
        bound = (dist[anchor, pos] + margin)[:, None]
        return int(torch.count_nonzero(anchor_negative_rows(dist, negative, anchor) < bound).item())
    neg_sorted = torch.where(negative, dist, torch.inf).sort(dim=1).values
    # Non-positives get a bound of -inf, below every distance: they count nothing.
    bounds = torch.where(positive, dist + margin, -torch.inf)
    return int(torch.searchsorted(neg_sorted, bounds.contiguous()).sum().item())


def index_stats(dist: Tensor, triplets: TripletIndices, margin: float, candidates: int) -> MiningStats:
    """Stats of index triplets; active means ``d(a,p) - d(a,n) + margin > 0``."""
    d_ap = dist[triplets.anchor, triplets.positive]
    d_an = dist[triplets.anchor, triplets.negative]
    return MiningStats(
        candidates=candidates,
        selected=int(d_ap.numel()),
        active=int(torch.count_nonzero(d_ap - d_an + margin > 0).item()),
        mean_ap=mean_or_none(d_ap),
        mean_an=mean_or_none(d_an),
    )


def block_stats(
    d_ap: Tensor, d_an: Tensor, mask: Tensor, margin: float, candidates: int, *, all_active: bool
) -> MiningStats:
    """Stats of a ``TripletBlock`` from its rows' d(a,p) and (rows, B) d(a,n).

    ``all_active``: the miner selected only triplets with a non-zero loss under
    its margin, so the count need not be recomputed.
    """
    per_row = torch.count_nonzero(mask, dim=1)
    selected = int(per_row.sum().item())
    if not selected:
        return MiningStats(candidates, 0, 0, None, None)
    if all_active:
        active = selected
    else:
        active = int(torch.count_nonzero(mask & (d_an < (d_ap + margin)[:, None])).item())
    mean_ap = float((d_ap * per_row).sum().item()) / selected
    # A product, not torch.where: where/masked_fill are several times slower on
    # CPU with irregular masks.  ``d_an`` must be finite (``anchor_negative_rows``).
    mean_an = float((d_an * mask).sum().item()) / selected
    return MiningStats(candidates, selected, active, mean_ap, mean_an)


def anchor_negative_rows(dist: Tensor, negative: Tensor, anchor: Tensor) -> Tensor:
    """(len(anchor), B) distances from each row's anchor, the dtype's largest
    finite value where not a negative.

    That value fails every "closer than" test, so callers need no separate label
    test; being finite, it multiplies by a 0/1 mask without NaN.
    """
    return torch.where(negative, dist, torch.finfo(dist.dtype).max).index_select(0, anchor)


def all_triplets_block(positive: Tensor, negative: Tensor) -> TripletBlock:
    """Every valid (a, p, n): one row per anchor-positive pair, its anchor's negatives as mask."""
    anchor, pos = positive.nonzero(as_tuple=True)
    return TripletBlock(anchor, pos, negative.index_select(0, anchor))
