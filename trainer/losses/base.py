"""What every loss returns and the reduction they share.

Reduction: the mean over the *active* terms (those with a non-zero loss),
like pytorch-metric-learning's ``AvgNonZeroReducer``.  Averaging over all terms
would let the many easy, already-satisfied tuples dilute the gradient towards
zero as training progresses.  A batch with no active term gives a zero loss that
is still connected to the graph, so ``backward()`` works and nothing is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.miners.base import MiningStats


@dataclass(frozen=True)
class LossOutput:
    """The scalar to back-propagate, with the counts the training loop logs.

    ``total``: loss terms evaluated (pairs or triplets); ``active``: those with
    a non-zero loss (for a soft-margin triplet loss: those violating the margin,
    since softplus is never exactly 0); ``mining``: the miner's stats when a
    miner picked the tuples, else None.
    """

    loss: Tensor
    active: int
    total: int
    mining: MiningStats | None = None

    @property
    def active_fraction(self) -> float:
        """Share of the evaluated terms that are active (0.0 when there were none)."""
        return self.active / self.total if self.total else 0.0

    @property
    def candidates(self) -> int:
        """Valid tuples of the batch (with a cross-batch memory: against batch + memory)."""
        return self.mining.candidates if self.mining is not None else self.total

    @property
    def violating_fraction(self) -> float:
        """Share of all valid tuples of the batch that violate the margin *before* mining.

        Unlike ``active_fraction`` (1.0 by construction for miners that return only
        active tuples) this falls as the embedding learns.  Without a miner every valid
        tuple is evaluated, so it is the active fraction.
        """
        if self.mining is not None and self.mining.violating_fraction is not None:
            return self.mining.violating_fraction
        return self.active_fraction

    @property
    def selected_fraction(self) -> float:
        """Share of all valid tuples of the batch that were evaluated (1.0 without a miner)."""
        if self.mining is not None:
            return self.mining.selected_fraction
        return 1.0 if self.total else 0.0


def zero_loss(source: Tensor) -> Tensor:
    """A 0 that back-propagates (zero gradients) into whatever produced ``source``."""
    return source.sum() * 0.0


def mean_over_active(terms: Tensor) -> tuple[Tensor, int]:
    """Mean of the strictly positive ``terms`` (the others must be 0) and their count.

    ``terms`` must be connected to the embeddings (even when empty: indexing a
    distance matrix with empty indices still is), so the zero loss of a batch
    without active terms back-propagates zeros.
    """
    count = int(torch.count_nonzero(terms).item()) if terms.numel() else 0
    if count == 0:
        return zero_loss(terms), 0
    return terms.sum() / count, count


def check_embeddings(embeddings: Tensor, name: str = "embeddings") -> None:
    """Embeddings must be a 2-D floating-point (batch, dim) tensor."""
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"{name} must be a 2-D (batch, dim) tensor, got {shape}")
    if not torch.is_floating_point(embeddings):
        raise TypeError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")


def check_index_tuple(indices: tuple[Tensor, ...], batch_size: int, what: str) -> None:
    """Index tuples must be 1-D integer tensors pointing inside the batch."""
    for t in indices:
        if not isinstance(t, Tensor) or t.ndim != 1 or torch.is_floating_point(t):
            raise ValueError(f"{what} must be 1-D integer tensors")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= batch_size):
            raise IndexError(f"{what} index out of range for a batch of {batch_size}")
