"""Semi-hard mining: negatives farther than the positive but still inside the margin."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.miner_modes import SemiHardMode
from trainer.miners.base import MiningStats, TripletBlock, TripletIndices, TripletSelection
from trainer.miners.triplet_base import TripletMiner, anchor_negative_rows, block_stats, index_stats


class SemiHardMiner(TripletMiner):
    """Triplets with ``d(a,p) < d(a,n) < d(a,p) + margin`` (strict on both sides).

    The negative is inside the margin (so the loss is non-zero) but not closer
    than the positive, which avoids the collapsed solutions that the very
    hardest negatives lead to early in training.  Anchor-positive pairs without
    any semi-hard negative contribute nothing (no fallback to hard or easy
    negatives).  With margin 0 the band is empty.

    ``HARDEST`` mode (default) never builds a B x B x B tensor; it takes the
    cheaper of two exact methods: a masked minimum over (#positive pairs x B)
    when classes are small in the batch (O(B^2 K)), otherwise it sorts each
    anchor's negative distances once and binary-searches every d(a,p) in them
    (O(B^2 log B)).  Ties go to the lowest index.  ``ALL`` mode returns a
    ``TripletBlock`` (O(B^2 K)).  Index output is sorted by (anchor, positive[, negative]).
    """

    # Average positives per anchor up to which the dense masked minimum beats
    # sorting (measured on CPU; both are exact), and its memory cap in elements.
    DENSE_MAX_POSITIVES_PER_ANCHOR = 14
    DENSE_MAX_ELEMENTS = 1 << 24

    def __init__(
        self,
        margin: float = 0.2,
        squared: bool = False,
        mode: SemiHardMode = SemiHardMode.HARDEST,
    ) -> None:
        super().__init__(margin, squared)
        self.mode = SemiHardMode(mode)

    def _select(
        self, dist: Tensor, positive: Tensor, negative: Tensor, candidates: int
    ) -> tuple[TripletSelection, MiningStats]:
        if self.mode is SemiHardMode.ALL:
            anchor, pos = positive.nonzero(as_tuple=True)
            d_ap = dist[anchor, pos]
            d_an = anchor_negative_rows(dist, negative, anchor)
            mask = (d_an > d_ap[:, None]) & (d_an < (d_ap + self.margin)[:, None])
            stats = block_stats(d_ap, d_an, mask, self.margin, candidates, all_active=True)
            return TripletBlock(anchor, pos, mask), stats
        anchors, columns = dist.shape
        pairs = int(torch.count_nonzero(positive).item())
        if pairs <= self.DENSE_MAX_POSITIVES_PER_ANCHOR * anchors and pairs * columns <= self.DENSE_MAX_ELEMENTS:
            triplets = self._hardest_dense(dist, positive, negative)
        else:
            triplets = self._hardest_sorted(dist, positive, negative)
        return triplets, index_stats(dist, triplets, self.margin, candidates)

    def _hardest_dense(self, dist: Tensor, positive: Tensor, negative: Tensor) -> TripletIndices:
        anchor, pos = positive.nonzero(as_tuple=True)
        d_ap = dist[anchor, pos][:, None]
        d_an = anchor_negative_rows(dist, negative, anchor)
        # Push negatives not farther than the positive out of reach; a product, as
        # masked_fill is several times slower on CPU with irregular masks.
        d_an += (d_an <= d_ap).to(d_an.dtype) * torch.finfo(d_an.dtype).max
        nearest, neg = d_an.min(dim=1)
        keep = nearest < d_ap[:, 0] + self.margin  # none farther (max / inf) never passes
        return TripletIndices(anchor[keep], pos[keep], neg[keep])

    def _hardest_sorted(self, dist: Tensor, positive: Tensor, negative: Tensor) -> TripletIndices:
        batch = dist.shape[1]  # columns: the batch, or the batch and a cross-batch memory
        # Row a: distances from a to its negatives in increasing order, then +inf.
        neg_sorted, neg_order = torch.where(negative, dist, torch.inf).sort(dim=1, stable=True)
        # Row a: its positives' distances (+inf padding), at most max-positives wide.
        width = max(int(torch.count_nonzero(positive, dim=1).max().item()), 1)
        d_ap, pos = torch.where(positive, dist, torch.inf).topk(width, dim=1, largest=False)
        # Position of the first negative strictly farther than each d(a, p).
        first = torch.searchsorted(neg_sorted, d_ap.contiguous(), right=True).clamp_(max=batch - 1)
        nearest = neg_sorted.gather(1, first)
        keep = torch.isfinite(d_ap) & (nearest < d_ap + self.margin)
        anchor, slot = keep.nonzero(as_tuple=True)
        pos = pos[anchor, slot]
        neg = neg_order[anchor, first[anchor, slot]]
        order = (anchor * batch + pos).argsort()
        return TripletIndices(anchor[order], pos[order], neg[order])
