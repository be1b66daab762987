"""Hard pair mining for the contrastive loss: the pairs whose loss is not zero."""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.miner_modes import PairStrategy
from trainer.miners.base import PairIndices, check_margin
from trainer.miners.pair_base import PairMiner


class HardPairMiner(PairMiner):
    """Positive pairs farther apart than ``pos_threshold`` and negative pairs
    closer than ``margin`` (both in plain Euclidean distance).

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

    def _select(self, squared: Tensor, positive: Tensor, negative: Tensor) -> PairIndices:
        pos_active = positive & (squared > self.pos_threshold**2)
        neg_active = negative & (squared < self.margin**2)
        if self.strategy is PairStrategy.ACTIVE:
            upper = torch.ones_like(positive).triu_(diagonal=1)
            a1, p = (pos_active & upper).nonzero(as_tuple=True)
            a2, n = (neg_active & upper).nonzero(as_tuple=True)
            return PairIndices(a1, p, a2, n)
        hardest_pos = torch.where(positive, squared, -torch.inf).argmax(dim=1)
        hardest_neg = torch.where(negative, squared, torch.inf).argmin(dim=1)
        a1 = pos_active.gather(1, hardest_pos[:, None]).squeeze(1).nonzero(as_tuple=True)[0]
        a2 = neg_active.gather(1, hardest_neg[:, None]).squeeze(1).nonzero(as_tuple=True)[0]
        return PairIndices(a1, hardest_pos[a1], a2, hardest_neg[a2])
