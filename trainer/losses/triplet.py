"""Triplet loss (docs/ARCHITECTURE.md, "Losses"), plain or squared, hinge or soft margin."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.distances import paired_distances
from trainer.losses.base import (
    LossOutput,
    check_embeddings,
    check_index_tuple,
    mean_over_active,
    zero_loss,
)
from trainer.losses.memory import MemoryContents, distances_with_memory, labels_with_memory
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
    triplets, since none is ever exactly 0 (so pair it with
    ``BatchAllMiner(only_active=False)`` or no miner, not with a filter on the
    hinge).  The hinge form is averaged over the active (non-zero) triplets.

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
        *,
        memory: MemoryContents | None = None,
        not_positive: Tensor | None = None,
    ) -> LossOutput:
        """Loss over a (B, D) batch; needs ``labels`` (B class ids) unless ``triplets`` is given.

        ``memory``: a cross-batch memory's contents (``trainer.losses.memory``), extra
        positive and negative candidates for the batch's anchors (labels needed).
        ``not_positive``: a (B, B + M) boolean mask of pairs never used as anchor-positive
        although their labels match (``trainer.miners.base.label_masks``).
        """
        check_embeddings(embeddings)
        batch = embeddings.shape[0]
        if triplets is not None and (memory is not None or not_positive is not None):
            raise ValueError("explicit triplets are trained as given; they cannot be combined with a memory "
                             "or a not_positive mask")
        dist = distances_with_memory(embeddings, memory, squared=self.squared)
        mining: MiningStats | None = None
        selection: TripletSelection
        if triplets is not None:
            selection = triplets if isinstance(triplets, TripletBlock) else TripletIndices(*triplets)
            _check_triplets(selection, batch)
        elif labels is None:
            raise ValueError("TripletLoss needs labels or explicit triplets")
        elif self.miner is not None:
            selection, mining = self.miner.select(dist.detach(), labels, labels_with_memory(labels, memory),
                                                  not_positive)
        else:
            labels = check_labels(labels, batch, embeddings.device)
            selection = all_triplets_block(*label_masks(labels, labels_with_memory(labels, memory), not_positive))
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
        if self.soft_margin:
            d_ap = dist[block.anchor, block.positive]
            violation = (d_ap + self.margin)[:, None] - dist.index_select(0, block.anchor)
            total = int(torch.count_nonzero(block.mask).item())
            active = int(torch.count_nonzero(block.mask & (violation > 0)).item())
            terms = F.softplus(violation) * block.mask  # not torch.where: slow on irregular masks
            loss = terms.sum() / total if total else zero_loss(terms)
            return LossOutput(loss, active, total, mining)
        # The hinge is piecewise linear: the mean over the active triplets equals
        # sum(dist * weights) / count + margin, where each active (a, p, n) adds +1 at
        # (a, p) and -1 at (a, n).  The (rows x B) work then runs without autograd and
        # the backward pass is one B x B product instead of a pass over every triplet.
        with torch.no_grad():
            d_ap = dist[block.anchor, block.positive]
            violation = (d_ap + self.margin)[:, None] - dist.index_select(0, block.anchor)
            active_mask = block.mask & (violation > 0)
            per_row = torch.count_nonzero(active_mask, dim=1)
            active = int(per_row.sum().item())
            total = int(torch.count_nonzero(block.mask).item())
            if active:
                active_weight = active_mask.to(dist.dtype)  # products beat where() on irregular masks
                value = (violation * active_weight).sum() / active
                weights = torch.zeros_like(dist).index_add_(0, block.anchor, active_weight, alpha=-1.0)
                weights.index_put_((block.anchor, block.positive), per_row.to(dist.dtype), accumulate=True)
                weights /= active
        if not active:
            return LossOutput(zero_loss(dist), 0, total, mining)
        # The value summed directly (no cancellation between the +/- weighted terms),
        # the gradient from the weights.
        linear = (dist * weights).sum()
        return LossOutput(value + (linear - linear.detach()), active, total, mining)


def _check_triplets(triplets: TripletSelection, batch: int) -> None:
    if isinstance(triplets, TripletBlock):
        check_index_tuple(triplets[:2], batch, "triplets")
        rows = triplets.anchor.numel()
        mask = triplets.mask
        if triplets.positive.numel() != rows or mask.shape != (rows, batch) or mask.dtype != torch.bool:
            raise ValueError(
                f"triplet block: positive must have one entry per anchor and mask must be boolean "
                f"(rows, B) = ({rows}, {batch}), got {mask.dtype} {tuple(mask.shape)}"
            )
        return
    check_index_tuple(triplets, batch, "triplets")
    if not triplets.anchor.numel() == triplets.positive.numel() == triplets.negative.numel():
        raise ValueError("triplets: anchor, positive and negative must have equal lengths")


__all__ = ["TripletLoss"]
