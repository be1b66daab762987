"""Batch-all mining: every valid triplet of the batch that still has a non-zero loss."""

from __future__ import annotations

from torch import Tensor

from trainer.miners.base import (
    MinedTriplets,
    TripletIndices,
    TripletMiner,
    count_valid_triplets,
    label_masks,
)


class BatchAllMiner(TripletMiner):
    """Every (a, p, n) with p of a's class and n of another class.

    With ``only_active`` (the default) only triplets whose hinge loss
    ``d(a,p) - d(a,n) + margin`` is > 0 are returned: the others add nothing to a
    mean over active triplets and would only cost memory.  Pass
    ``only_active=False`` to get every valid triplet (e.g. for a soft-margin loss,
    which is non-zero everywhere).

    Work and memory are O(#positive pairs x B) = O(B^2 K) for K images per class,
    not a dense B x B x B tensor; the output itself can be that large, which is
    what batch-all means.  Triplets come out sorted by (anchor, positive, negative).
    """

    def __init__(self, margin: float = 0.2, squared: bool = False, only_active: bool = True) -> None:
        super().__init__(margin, squared)
        self.only_active = bool(only_active)

    def _mine(self, dist: Tensor, labels: Tensor) -> MinedTriplets:
        positive, negative = label_masks(labels)
        anchor_of_pair, positive_of_pair = positive.nonzero(as_tuple=True)
        # One row per anchor-positive pair, one column per candidate negative.
        keep = negative[anchor_of_pair]
        if self.only_active:
            d_ap = dist[anchor_of_pair, positive_of_pair]
            keep &= dist[anchor_of_pair] < (d_ap + self.margin)[:, None]
        pair_row, neg = keep.nonzero(as_tuple=True)
        triplets = TripletIndices(anchor_of_pair[pair_row], positive_of_pair[pair_row], neg)
        return MinedTriplets(triplets, self._stats(dist, triplets, count_valid_triplets(positive, negative)))
