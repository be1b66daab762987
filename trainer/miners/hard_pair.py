"""Hard pair mining for the contrastive loss: the pairs whose loss is not zero."""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

from trainer.miners.base import (
    MinedPairs,
    MiningStats,
    PairIndices,
    PairMiner,
    check_margin,
    label_masks,
    mean_or_none,
)


class PairStrategy(StrEnum):
    """``ACTIVE``: every pair with a non-zero loss, each unordered pair once (i < j).
    ``HARDEST``: per anchor, its farthest positive and its closest negative, each
    kept only if active (so a pair may appear once per end)."""

    ACTIVE = "active"
    HARDEST = "hardest"


class HardPairMiner(PairMiner):
    """Positive pairs farther apart than ``pos_threshold`` and negative pairs
    closer than ``margin``, on plain Euclidean distance.

    With the contrastive loss ``(1-Y) D^2 + Y max(0, m - D)^2`` and the default
    ``pos_threshold=0`` these are exactly the pairs with a non-zero loss; a
    larger threshold drops positives that are already close.
    """

    def __init__(
        self,
        margin: float = 1.0,
        pos_threshold: float = 0.0,
        strategy: PairStrategy = PairStrategy.ACTIVE,
    ) -> None:
        super().__init__(margin)
        self.pos_threshold = check_margin(pos_threshold)
        self.strategy = PairStrategy(strategy)

    def _mine(self, dist: Tensor, labels: Tensor) -> MinedPairs:
        positive, negative = label_masks(labels)
        pos_active = positive & (dist > self.pos_threshold)
        neg_active = negative & (dist < self.margin)
        if self.strategy is PairStrategy.ACTIVE:
            upper = torch.ones_like(positive).triu_(diagonal=1)
            a1, p = (pos_active & upper).nonzero(as_tuple=True)
            a2, n = (neg_active & upper).nonzero(as_tuple=True)
        else:
            hardest_pos = dist.masked_fill(~positive, -torch.inf).argmax(dim=1)
            hardest_neg = dist.masked_fill(~negative, torch.inf).argmin(dim=1)
            a1 = pos_active.gather(1, hardest_pos[:, None]).squeeze(1).nonzero(as_tuple=True)[0]
            a2 = neg_active.gather(1, hardest_neg[:, None]).squeeze(1).nonzero(as_tuple=True)[0]
            p, n = hardest_pos[a1], hardest_neg[a2]
        # Unordered pairs: each pair of the batch counted once.
        candidates = int((positive.sum() + negative.sum()).item()) // 2
        stats = MiningStats(
            candidates=candidates,
            selected=int(a1.numel() + a2.numel()),
            active=int(a1.numel() + a2.numel()),
            mean_ap=mean_or_none(dist[a1, p]),
            mean_an=mean_or_none(dist[a2, n]),
        )
        return MinedPairs(PairIndices(a1, p, a2, n), stats)
