"""What every miner returns, the checks they share, and their base classes.

A miner looks at one batch (embeddings + class labels) and picks the index
tuples a loss should be computed on.  Triplet miners return
``TripletIndices(anchor, positive, negative)``; pair miners return
``PairIndices(a1, p, a2, n)`` (positive pairs ``(a1, p)``, negative pairs
``(a2, n)``), the same layouts as pytorch-metric-learning.  Next to the indices
comes a ``MiningStats``, because easy tuples carry no signal and the training
loop wants to log how many were still active.

All miners work on the whole B x B distance matrix with masks; none loops over
anchors in Python.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from trainer.distances import distance_matrix, safe_sqrt, squared_distance_matrix


class TripletIndices(NamedTuple):
    """Batch positions of anchors, positives and negatives (LongTensors, equal length)."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


class PairIndices(NamedTuple):
    """Positive pairs ``(a1[i], p[i])`` and negative pairs ``(a2[j], n[j])``."""

    a1: Tensor
    p: Tensor
    a2: Tensor
    n: Tensor


@dataclass(frozen=True)
class MiningStats:
    """How much signal a miner found in one batch.

    ``candidates``: valid tuples the miner chose from (all valid triplets for a
    triplet miner, all positive + negative pairs for a pair miner);
    ``selected``: tuples returned; ``active``: returned tuples with a non-zero
    loss under the miner's margin.  ``mean_ap`` / ``mean_an`` are the mean
    anchor-positive / anchor-negative distance over the returned tuples, in the
    miner's distance form (squared or not), or None when there are none.
    """

    candidates: int
    selected: int
    active: int
    mean_ap: float | None
    mean_an: float | None

    @property
    def active_fraction(self) -> float:
        """Share of the returned tuples that are active (0.0 when none returned)."""
        return self.active / self.selected if self.selected else 0.0


class TripletBlock(NamedTuple):
    """Triplets in row form: ``(anchor[i], positive[i], n)`` for every n with ``mask[i, n]``.

    Batch-all style selections are large (up to B^2 K triplets) but have this
    structure: one row per anchor-positive pair, one column per batch item.  A
    loss can evaluate them densely on the distance matrix without gathering
    millions of index triples; ``to_indices`` expands them when indices are needed.
    """

    anchor: Tensor
    positive: Tensor
    mask: Tensor

    def to_indices(self) -> TripletIndices:
        """Expand to index triplets, sorted by (anchor, positive, negative) if the rows are."""
        row, negative = self.mask.nonzero(as_tuple=True)
        return TripletIndices(self.anchor[row], self.positive[row], negative)


TripletSelection = TripletIndices | TripletBlock


class MinedTriplets(NamedTuple):
    indices: TripletIndices
    stats: MiningStats


class MinedPairs(NamedTuple):
    indices: PairIndices
    stats: MiningStats


def check_margin(margin: float) -> float:
    """Validate a margin: finite and >= 0 (0 is allowed)."""
    margin = float(margin)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    return margin


def check_labels(labels: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Labels must be a 1-D integer tensor with one entry per batch row."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"labels must be a 1-D tensor of length {batch_size} (one per embedding), "
            f"got shape {tuple(labels.shape)}"
        )
    if torch.is_floating_point(labels) or torch.is_complex(labels):
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    return labels.to(device)


def check_distance_matrix(dist: Tensor, labels: Tensor) -> Tensor:
    """A miner's distance matrix must be square and match the labels."""
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"distance matrix must be square (B, B), got {tuple(dist.shape)}")
    return check_labels(labels, dist.shape[0], dist.device)


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) B x B boolean masks: same class off the diagonal / other class."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return positive, ~same


def count_valid_triplets(positive: Tensor, negative: Tensor) -> int:
    """Number of (a, p, n) with p a positive and n a negative of a."""
    per_anchor = positive.sum(dim=1) * negative.sum(dim=1)
    return int(per_anchor.sum().item())


def mean_or_none(values: Tensor) -> float | None:
    return float(values.mean().item()) if values.numel() else None


def empty_index(device: torch.device) -> Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


class TripletMiner(ABC):
    """Base class: picks triplets from a distance matrix in the miner's own form.

    ``margin`` and ``squared`` say in which distance form (plain or squared
    Euclidean) "active" and, for semi-hard mining, the selection are judged.
    Give a miner the same ``margin`` and ``squared`` as its loss unless you mean
    to mine with a different margin on purpose.
    """

    def __init__(self, margin: float = 0.2, squared: bool = False) -> None:
        self.margin = check_margin(margin)
        self.squared = bool(squared)

    def __call__(self, embeddings: Tensor, labels: Tensor) -> MinedTriplets:
        """Mine a batch of (B, D) embeddings with their B class labels."""
        with torch.no_grad():
            dist = distance_matrix(embeddings.detach(), squared=self.squared)
            return self.mine(dist, labels)

    def mine(self, dist: Tensor, labels: Tensor) -> MinedTriplets:
        """Mine from a precomputed (B, B) distance matrix in this miner's form."""
        selection, stats = self.select(dist, labels)
        if isinstance(selection, TripletBlock):
            selection = selection.to_indices()
        return MinedTriplets(selection, stats)

    def select(self, dist: Tensor, labels: Tensor) -> tuple[TripletSelection, MiningStats]:
        """Like ``mine``, but may answer in the compact ``TripletBlock`` form (losses use this)."""
        with torch.no_grad():
            dist = dist.detach()
            labels = check_distance_matrix(dist, labels)
            positive, negative = label_masks(labels)
            selection = self._select(dist, positive, negative)
            return selection, self._stats(dist, selection, count_valid_triplets(positive, negative))

    @abstractmethod
    def _select(self, dist: Tensor, positive: Tensor, negative: Tensor) -> TripletSelection:
        """Select triplets from a detached matrix and the label masks of ``label_masks``."""

    def _stats(self, dist: Tensor, selection: TripletSelection, candidates: int) -> MiningStats:
        if isinstance(selection, TripletBlock):
            d_ap = dist[selection.anchor, selection.positive]
            d_an = dist.index_select(0, selection.anchor).masked_fill_(~selection.mask, torch.inf)
            per_row = selection.mask.sum(dim=1)
            selected = int(per_row.sum().item())
            active = int((d_an < (d_ap + self.margin)[:, None]).sum().item())
            if not selected:
                return MiningStats(candidates, 0, 0, None, None)
            mean_ap = float((d_ap * per_row).sum().item()) / selected
            mean_an = float(d_an.masked_fill_(~selection.mask, 0.0).sum().item()) / selected
            return MiningStats(candidates, selected, active, mean_ap, mean_an)
        d_ap = dist[selection.anchor, selection.positive]
        d_an = dist[selection.anchor, selection.negative]
        return MiningStats(
            candidates=candidates,
            selected=int(d_ap.numel()),
            active=int((d_ap - d_an + self.margin > 0).sum().item()),
            mean_ap=mean_or_none(d_ap),
            mean_an=mean_or_none(d_an),
        )


class PairMiner(ABC):
    """Base class for pair miners (for the contrastive loss), on Euclidean distance.

    Pair mining only compares distances with thresholds, so it works on squared
    distances (``d > t`` iff ``d^2 > t^2``): the loss then needs square roots for
    the selected dissimilar pairs only, not for the whole B x B matrix.
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

    def mine_squared(self, squared: Tensor, labels: Tensor) -> MinedPairs:
        """Mine from a precomputed (B, B) squared Euclidean distance matrix."""
        with torch.no_grad():
            squared = squared.detach()
            labels = check_distance_matrix(squared, labels)
            positive, negative = label_masks(labels)
            indices = self._select(squared, positive, negative)
            a1, p, a2, n = indices
            candidates = int((positive.sum() + negative.sum()).item()) // 2  # unordered pairs
            stats = MiningStats(
                candidates=candidates,
                selected=int(a1.numel() + a2.numel()),
                active=int((squared[a1, p] > 0).sum().item() + (squared[a2, n] < self.margin**2).sum().item()),
                mean_ap=mean_or_none(safe_sqrt(squared[a1, p])),
                mean_an=mean_or_none(safe_sqrt(squared[a2, n])),
            )
            return MinedPairs(indices, stats)

    @abstractmethod
    def _select(self, squared: Tensor, positive: Tensor, negative: Tensor) -> PairIndices:
        """Select pairs from a detached squared-distance matrix and the label masks."""
