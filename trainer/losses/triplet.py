"""Triplet loss (DESIGN.md section 5), plain or squared, hinge or soft margin."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.distances import distance_matrix, paired_distances
from trainer.losses.base import (
    LossOutput,
    check_embeddings,
    check_index_tuple,
    mean_over_active,
    zero_loss,
)
from trainer.miners.base import (
    MiningStats,
    TripletBlock,
    TripletIndices,
    TripletSelection,
    check_labels,
    check_margin,
    label_masks,
)
from trainer.miners.triplet_base import TripletMiner, all_triplets_block


class TripletLoss(nn.Module):
    """``max(0, d(a,p) - d(a,n) + m)``, or with ``squared`` the FaceNet form
    ``max(0, d(a,p)^2 - d(a,n)^2 + m)``; Euclidean distance.

    ``soft_margin`` replaces the hinge ``max(0, x)`` by ``log(1 + exp(x))``
    (Hermans et al. 2017), which never stops pulling; it is averaged over all
    triplets, since none is ever exactly 0.  The hinge form is averaged over the
    active (non-zero) triplets.

    Triplets come, in order of precedence, from explicit ``triplets`` passed to
    ``forward``, from the ``miner`` given here, or else every valid triplet of
    the batch.  The miner mines on this loss's own distance matrix, so distances
    are computed once; it must use the same ``squared`` form (its margin may differ).
    Embeddings are used as given: L2-normalise them first (the embedding head
    does) if the margin is meant on the unit sphere.
    """

    def __init__(
        self,
        margin: float = 0.2,
        squared: bool = False,
        soft_margin: bool = False,
        miner: TripletMiner | None = None,
    ) -> None:
        super().__init__()
        self.margin = check_margin(margin)
        self.squared = bool(squared)
        self.soft_margin = bool(soft_margin)
        if miner is not None and not isinstance(miner, TripletMiner):
            raise TypeError(f"miner must be a TripletMiner, got {type(miner).__name__}")
        if miner is not None and miner.squared != self.squared:
            # A margin means different things on d and on d^2: mining on one and
            # training on the other is a configuration mistake, not a variant.
            raise ValueError(
                f"miner mines on {'squared' if miner.squared else 'plain'} distances but the loss "
                f"uses {'squared' if self.squared else 'plain'} ones; give both the same `squared`"
            )
        self.miner = miner

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        triplets: TripletIndices | TripletBlock | None = None,
    ) -> LossOutput:
        """Loss over a (B, D) batch; needs ``labels`` (B class ids) unless ``triplets`` is given."""
        check_embeddings(embeddings)
        batch = embeddings.shape[0]
        dist = distance_matrix(embeddings, squared=self.squared)
        mining: MiningStats | None = None
        selection: TripletSelection
        if triplets is not None:
            selection = triplets if isinstance(triplets, TripletBlock) else TripletIndices(*triplets)
            check_index_tuple(selection[:2] if isinstance(selection, TripletBlock) else selection, batch, "triplets")
        elif labels is None:
            raise ValueError("TripletLoss needs labels or explicit triplets")
        elif self.miner is not None:
            selection, mining = self.miner.select(dist.detach(), labels)
        else:
            selection = all_triplets_block(*label_masks(check_labels(labels, batch, embeddings.device)))
        if isinstance(selection, TripletBlock):
            return self._reduce_block(dist, selection, mining)
        anchor, positive, negative = selection
        return self._reduce(dist[anchor, positive], dist[anchor, negative], mining)

    def forward_triplets(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> LossOutput:
        """Loss over explicit rows: ``anchor[i], positive[i], negative[i]`` form triplet i."""
        for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
            check_embeddings(t, name)
        d_ap = paired_distances(anchor, positive, squared=self.squared)
        d_an = paired_distances(anchor, negative, squared=self.squared)
        return self._reduce(d_ap, d_an, None)

    def _reduce(self, d_ap: Tensor, d_an: Tensor, mining: MiningStats | None) -> LossOutput:
        violation = d_ap - d_an + self.margin
        total = int(violation.numel())
        if self.soft_margin:
            active = int(torch.count_nonzero(violation > 0).item())
            loss = F.softplus(violation).mean() if total else zero_loss(violation)
            return LossOutput(loss, active, total, mining)
        loss, active = mean_over_active(F.relu(violation))
        return LossOutput(loss, active, total, mining)

    def _reduce_block(self, dist: Tensor, block: TripletBlock, mining: MiningStats | None) -> LossOutput:
        """Same as ``_reduce`` on every triplet of the block, evaluated densely row by row."""
        if block.mask.shape != (block.anchor.numel(), dist.shape[1]):
            raise ValueError(
                f"triplet block mask must be (rows, B) = ({block.anchor.numel()}, {dist.shape[1]}), "
                f"got {tuple(block.mask.shape)}"
            )
        violation = (dist[block.anchor, block.positive] + self.margin)[:, None] - dist.index_select(0, block.anchor)
        total = int(torch.count_nonzero(block.mask).item())
        if self.soft_margin:
            active = int(torch.count_nonzero(block.mask & (violation > 0)).item())
            terms = torch.where(block.mask, F.softplus(violation), 0.0)
            loss = terms.sum() / total if total else zero_loss(terms)
            return LossOutput(loss, active, total, mining)
        loss, active = mean_over_active(torch.where(block.mask, F.relu(violation), 0.0))
        return LossOutput(loss, active, total, mining)


__all__ = ["TripletLoss"]
