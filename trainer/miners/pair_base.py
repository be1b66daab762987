"""Base class of the pair miners (for the contrastive loss) and the stats they report."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace

import torch
from torch import Tensor

from trainer.distances import safe_sqrt, squared_distance_matrix
from trainer.miners.base import (
    MinedPairs,
    MiningStats,
    PairIndices,
    check_distance_matrix,
    check_margin,
    label_masks,
    mean_or_none,
)


class PairMiner(ABC):
    """Base class for pair miners (for the contrastive loss), on Euclidean distance.

    Pair mining only compares distances with thresholds, so it works on squared
    distances (``d > t`` iff ``d^2 > t^2``) and never needs a square root.
    """

    def __init__(self, margin: float = 1.0) -> None:
        self.margin = check_margin(margin)

    def __call__(self, embeddings: Tensor, labels: Tensor) -> MinedPairs:
        """Mine a batch of (B, D) embeddings with their B class labels."""
        with torch.no_grad():
            return self.mine_squared(squared_distance_matrix(embeddings.detach()), labels)

    def mine(self, dist: Tensor, labels: Tensor) -> MinedPairs:
        """Mine from a precomputed (B, B) plain Euclidean distance matrix."""
        with torch.no_grad():
            return self.mine_squared(dist.detach() ** 2, labels)

    def mine_squared(self, squared: Tensor, labels: Tensor, candidate_labels: Tensor | None = None,
                     not_positive: Tensor | None = None) -> MinedPairs:
        """Mine from a precomputed (B, B) squared Euclidean distance matrix, or a (B, N) one
        against the batch then extra candidates labelled ``candidate_labels`` (see
        ``check_distance_matrix``); ``not_positive``: pairs that are never similar pairs
        (``label_masks``)."""
        with torch.no_grad():
            squared = squared.detach()
            labels, candidate_labels = check_distance_matrix(squared, labels, candidate_labels)
            positive, negative = label_masks(labels, candidate_labels, not_positive)
            # Unordered pairs: within the batch i < j; every batch-candidate pair once.
            upper = torch.ones_like(positive).triu_(diagonal=1)
            candidates = int(torch.count_nonzero((positive | negative) & upper).item())
            # Before mining: the pairs whose contrastive term is not zero.
            violating = ((positive & (squared > 0)) | (negative & (squared < self.margin**2))) & upper
            pairs = self._select(squared, positive, negative)
            stats = pair_index_stats(squared, pairs, self.margin, candidates)
            return MinedPairs(pairs, replace(stats, violating=int(torch.count_nonzero(violating).item())))

    @abstractmethod
    def _select(self, squared: Tensor, positive: Tensor, negative: Tensor) -> PairIndices:
        """Select pairs from a detached squared-distance matrix and the label masks."""


def pair_index_stats(squared: Tensor, pairs: PairIndices, margin: float, candidates: int) -> MiningStats:
    """Stats of pairs; active: similar pairs apart, dissimilar pairs inside the margin."""
    pos, neg = squared[pairs.a1, pairs.p], squared[pairs.a2, pairs.n]
    return MiningStats(
        candidates=candidates,
        selected=int(pos.numel() + neg.numel()),
        active=int(torch.count_nonzero(pos > 0).item() + torch.count_nonzero(neg < margin**2).item()),
        mean_ap=mean_or_none(safe_sqrt(pos)),
        mean_an=mean_or_none(safe_sqrt(neg)),
    )
