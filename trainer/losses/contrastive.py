"""Contrastive (pairwise) loss (docs/ARCHITECTURE.md, "Losses"; Hadsell et al. 2006).

Label convention of the project's notes: ``Y = 0`` for a similar pair,
``Y = 1`` for a dissimilar pair; ``L(Y, D) = (1 - Y) D^2 + Y max(0, m - D)^2``
with ``D`` the Euclidean distance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.distances import paired_distances, safe_sqrt
from trainer.losses.base import LossOutput, check_embeddings, check_index_tuple, mean_over_active
from trainer.losses.memory import MemoryContents, distances_with_memory, labels_with_memory
from trainer.miners.base import MiningStats, PairIndices, check_labels, check_margin, label_masks
from trainer.miners.pair_base import PairMiner


class ContrastiveLoss(nn.Module):
    """Pulls similar pairs together (``D^2``) and pushes dissimilar pairs out to
    the margin (``max(0, m - D)^2``); averaged over the active (non-zero) terms,
    similar and dissimilar pairs together.

    Pairs come, in order of precedence, from explicit ``pairs`` passed to
    ``forward``, from the ``miner`` given here, or else every unordered pair of
    the batch (i < j).  For pairs labelled outside of classes (e.g. curated
    "looks alike" / "does not" pairs), use ``forward_pairs``.
    """

    def __init__(self, margin: float = 1.0, miner: PairMiner | None = None) -> None:
        super().__init__()
        self.margin = check_margin(margin)
        if miner is not None and not isinstance(miner, PairMiner):
            raise TypeError(f"miner must be a PairMiner, got {type(miner).__name__}")
        self.miner = miner

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        pairs: PairIndices | None = None,
        *,
        memory: MemoryContents | None = None,
        not_positive: Tensor | None = None,
    ) -> LossOutput:
        """Loss over a (B, D) batch; needs ``labels`` (B class ids) unless ``pairs`` is given.

        ``pairs``: ``PairIndices(a1, p, a2, n)``, where ``(a1[i], p[i])`` are
        similar (Y = 0) and ``(a2[j], n[j])`` dissimilar (Y = 1).
        ``memory``: a cross-batch memory's contents (``trainer.losses.memory``), extra
        pair partners for the batch's members (labels needed; ``p`` / ``n`` then index
        the batch followed by the memory).
        ``not_positive``: a (B, B + M) boolean mask of pairs never used as similar pairs
        although their labels match (``trainer.miners.base.label_masks``).
        """
        check_embeddings(embeddings)
        batch = embeddings.shape[0]
        if pairs is not None and (memory is not None or not_positive is not None):
            raise ValueError("explicit pairs are trained as given; they cannot be combined with a memory "
                             "or a not_positive mask")
        squared = distances_with_memory(embeddings, memory, squared=True)
        mining: MiningStats | None = None
        if pairs is not None:
            pairs = PairIndices(*pairs)
            check_index_tuple(pairs, batch, "pairs")
            if pairs.a1.numel() != pairs.p.numel() or pairs.a2.numel() != pairs.n.numel():
                raise ValueError("pairs: a1 and p, and a2 and n, must have equal lengths")
        elif labels is None:
            raise ValueError("ContrastiveLoss needs labels or explicit pairs")
        elif self.miner is not None:
            pairs, mining = self.miner.mine_squared(squared.detach(), labels, labels_with_memory(labels, memory),
                                                    not_positive)
        else:
            labels = check_labels(labels, batch, embeddings.device)
            pairs = _all_pairs(labels, labels_with_memory(labels, memory), not_positive)
        a1, p, a2, n = pairs
        # Square roots only for the dissimilar pairs; the similar term is D^2 itself.
        # (Evaluating all B^2 pairs densely instead measured no faster on CPU.)
        hinge = F.relu(self.margin - safe_sqrt(squared[a2, n])) ** 2
        terms = torch.cat([squared[a1, p], hinge])
        loss, active = mean_over_active(terms)
        return LossOutput(loss, active, int(terms.numel()), mining)

    def forward_pairs(self, x1: Tensor, x2: Tensor, y: Tensor) -> LossOutput:
        """Loss over explicit pairs ``(x1[i], x2[i])`` with ``y[i]`` 0 (similar) or 1 (dissimilar).

        For pairs given as batch positions ``(i, j)``, pass ``emb[i], emb[j]``.
        """
        check_embeddings(x1, "x1")
        check_embeddings(x2, "x2")
        y = torch.as_tensor(y, device=x1.device)
        if y.ndim != 1 or y.shape[0] != x1.shape[0]:
            raise ValueError(f"y must be a 1-D tensor of length {x1.shape[0]}, got shape {tuple(y.shape)}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("y must hold only 0 (similar pair) and 1 (dissimilar pair)")
        dissimilar = y.to(torch.bool)
        squared = paired_distances(x1, x2, squared=True)
        hinge = F.relu(self.margin - safe_sqrt(squared)) ** 2
        terms = torch.where(dissimilar, hinge, squared)
        loss, active = mean_over_active(terms)
        return LossOutput(loss, active, int(terms.numel()), None)


def _all_pairs(labels: Tensor, candidate_labels: Tensor | None = None,
               not_positive: Tensor | None = None) -> PairIndices:
    """Every unordered pair of the batch once (i < j), and with ``candidate_labels`` (the
    batch's then a memory's) every batch-memory pair too; split into similar and dissimilar."""
    positive, negative = label_masks(labels, candidate_labels, not_positive)
    upper = torch.ones_like(positive).triu_(diagonal=1)
    a1, p = (positive & upper).nonzero(as_tuple=True)
    a2, n = (negative & upper).nonzero(as_tuple=True)
    return PairIndices(a1, p, a2, n)


__all__ = ["ContrastiveLoss"]
