"""Semi-hard mining: negatives farther than the positive but still inside the margin."""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

from trainer.miners.base import (
    MinedTriplets,
    TripletIndices,
    TripletMiner,
    count_valid_triplets,
    label_masks,
)


class SemiHardMode(StrEnum):
    """Which semi-hard triplets to return.

    ``HARDEST``: for every anchor-positive pair, the closest semi-hard negative
    (FaceNet, Schroff et al. 2015): at most one triplet per pair, so the output
    stays O(B K).  ``ALL``: every semi-hard triplet, as pytorch-metric-learning's
    ``TripletMarginMiner(type_of_triplets="semihard")``; its output can grow like
    B^2 K, so it is kept for comparisons and small batches.
    """

    HARDEST = "hardest"
    ALL = "all"


class SemiHardMiner(TripletMiner):
    """Triplets with ``d(a,p) < d(a,n) < d(a,p) + margin`` (strict on both sides).

    The negative is harder than nothing (inside the margin, so the loss is
    non-zero) but not harder than the positive, which avoids the collapsed
    solutions that the very hardest negatives lead to early in training.
    Anchor-positive pairs without any semi-hard negative contribute nothing
    (no fallback to hard or easy negatives).  With margin 0 the band is empty.

    The default ``HARDEST`` mode sorts each anchor's negative distances once and
    binary-searches every d(a,p) in them: O(B^2 log B) time, O(B^2) memory, no
    B x B x B tensor.  Triplets come out sorted by (anchor, positive).
    """

    def __init__(
        self,
        margin: float = 0.2,
        squared: bool = False,
        mode: SemiHardMode = SemiHardMode.HARDEST,
    ) -> None:
        super().__init__(margin, squared)
        self.mode = SemiHardMode(mode)

    def _mine(self, dist: Tensor, labels: Tensor) -> MinedTriplets:
        positive, negative = label_masks(labels)
        if self.mode is SemiHardMode.HARDEST:
            triplets = self._hardest(dist, positive, negative)
        else:
            triplets = self._all(dist, positive, negative)
        return MinedTriplets(triplets, self._stats(dist, triplets, count_valid_triplets(positive, negative)))

    def _hardest(self, dist: Tensor, positive: Tensor, negative: Tensor) -> TripletIndices:
        # Row a: the distances from a to its negatives in increasing order, then +inf.
        neg_sorted, neg_order = dist.masked_fill(~negative, torch.inf).sort(dim=1)
        # For every (a, j): position of the first negative strictly farther than d(a, j).
        first_farther = torch.searchsorted(neg_sorted, dist.contiguous(), right=True)
        first_farther = first_farther.clamp_(max=dist.shape[1] - 1)
        d_an = neg_sorted.gather(1, first_farther)
        # +inf (no such negative) never passes the margin test, margin being finite.
        keep = positive & (d_an < dist + self.margin)
        anchor, pos = keep.nonzero(as_tuple=True)
        neg = neg_order[anchor, first_farther[anchor, pos]]
        return TripletIndices(anchor, pos, neg)

    def _all(self, dist: Tensor, positive: Tensor, negative: Tensor) -> TripletIndices:
        # One row per anchor-positive pair, one column per candidate negative: O(B^2 K).
        anchor_of_pair, positive_of_pair = positive.nonzero(as_tuple=True)
        d_ap = dist[anchor_of_pair, positive_of_pair][:, None]
        d_an = dist[anchor_of_pair]
        keep = negative[anchor_of_pair] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        pair_row, neg = keep.nonzero(as_tuple=True)
        return TripletIndices(anchor_of_pair[pair_row], positive_of_pair[pair_row], neg)
