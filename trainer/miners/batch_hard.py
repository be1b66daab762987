"""Batch-hard mining: the hardest positive and the hardest negative of every anchor."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.miners.base import MiningStats, TripletIndices
from trainer.miners.triplet_base import TripletMiner, index_stats


class BatchHardMiner(TripletMiner):
    """One triplet per anchor: its farthest positive and its closest negative.

    Anchors without a positive (singleton class in the batch) or without a
    negative (single-class batch) are skipped.  All such triplets are returned
    even when their loss is already 0; ``stats.active`` counts the ones that are
    not.  The margin only affects that count.  Ties go to the lowest index.
    """

    def _select(
        self, dist: Tensor, positive: Tensor, negative: Tensor, candidates: int
    ) -> tuple[TripletIndices, MiningStats]:
        hardest_pos = torch.where(positive, dist, -torch.inf).argmax(dim=1)
        hardest_neg = torch.where(negative, dist, torch.inf).argmin(dim=1)
        anchors = (positive.any(dim=1) & negative.any(dim=1)).nonzero(as_tuple=True)[0]
        triplets = TripletIndices(anchors, hardest_pos[anchors], hardest_neg[anchors])
        return triplets, index_stats(dist, triplets, self.margin, candidates)
