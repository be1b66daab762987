"""Batch-all mining: every valid triplet of the batch that still has a non-zero loss."""

from __future__ import annotations

from torch import Tensor

from trainer.miners.base import MiningStats, TripletBlock
from trainer.miners.triplet_base import TripletMiner, anchor_negative_rows, block_stats


class BatchAllMiner(TripletMiner):
    """Every (a, p, n) with p of a's class and n of another class.

    With ``only_active`` (the default) only triplets whose hinge loss
    ``d(a,p) - d(a,n) + margin`` is > 0 are returned: the others add nothing to a
    mean over active triplets.  Pass ``only_active=False`` to get every valid
    triplet (e.g. for a soft-margin loss, which is non-zero everywhere).

    Work and memory are O(#positive pairs x B) = O(B^2 K) for K images per class,
    never a dense B x B x B tensor; a loss consumes the selection in that row
    form (``TripletBlock``) without expanding it.  ``mine`` expands it into
    index triplets sorted by (anchor, positive, negative).
    """

    def __init__(self, margin: float = 0.2, squared: bool = False, only_active: bool = True) -> None:
        super().__init__(margin, squared)
        self.only_active = bool(only_active)

    def _select(
        self, dist: Tensor, positive: Tensor, negative: Tensor, candidates: int
    ) -> tuple[TripletBlock, MiningStats]:
        anchor, pos = positive.nonzero(as_tuple=True)
        d_ap = dist[anchor, pos]
        d_an = anchor_negative_rows(dist, negative, anchor)
        if self.only_active:
            mask = d_an < (d_ap + self.margin)[:, None]
        else:
            mask = negative.index_select(0, anchor)
        stats = block_stats(d_ap, d_an, mask, self.margin, candidates, all_active=self.only_active)
        return TripletBlock(anchor, pos, mask), stats
