"""What every miner returns, and the checks and label masks they share.

A miner looks at one batch (embeddings + class labels) and picks the index
tuples a loss should be computed on.  Triplet miners return
``TripletIndices(anchor, positive, negative)``; pair miners return
``PairIndices(a1, p, a2, n)`` (positive pairs ``(a1, p)``, negative pairs
``(a2, n)``), the same layouts as pytorch-metric-learning.  Next to the indices
comes a ``MiningStats``, because easy tuples carry no signal and the training
loop wants to log how many were still active.

All miners work on the whole B x B distance matrix with masks; none loops over
anchors in Python.  The miner base classes live in ``triplet_base`` and
``pair_base``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


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
    violating: int | None = None
    """Candidates that violate the margin *before* mining (a non-zero loss under the
    miner's margin); None where not counted.  The miner base classes always count it."""

    @property
    def active_fraction(self) -> float:
        """Share of the returned tuples that are active (0.0 when none returned)."""
        return self.active / self.selected if self.selected else 0.0

    @property
    def violating_fraction(self) -> float | None:
        """Share of all valid tuples of the batch that violate the margin, before mining."""
        if self.violating is None:
            return None
        return self.violating / self.candidates if self.candidates else 0.0

    @property
    def selected_fraction(self) -> float:
        """Share of all valid tuples of the batch that the miner returned."""
        return self.selected / self.candidates if self.candidates else 0.0


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
    """A triplet miner's answer: what to train on, and how much signal there was."""

    indices: TripletIndices
    stats: MiningStats


class MinedPairs(NamedTuple):
    """A pair miner's answer: what to train on, and how much signal there was."""

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


def check_distance_matrix(
    dist: Tensor, labels: Tensor, candidate_labels: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """A miner's distance matrix must match the labels: (B, B) for a batch against itself,
    or (B, N) rows = the batch, columns = the batch then N - B extra candidates (a cross-batch
    memory) labelled by ``candidate_labels`` (N labels, the batch's own first)."""
    square = dist.ndim == 2 and dist.shape[0] == dist.shape[1]
    if candidate_labels is None and not square:
        raise ValueError(f"distance matrix must be square (B, B), got {tuple(dist.shape)}")
    if dist.ndim != 2 or dist.shape[1] < dist.shape[0]:
        raise ValueError(f"distance matrix must be (B, N) with N >= B, got {tuple(dist.shape)}")
    labels = check_labels(labels, dist.shape[0], dist.device)
    if candidate_labels is None:
        return labels, None
    return labels, check_labels(candidate_labels, dist.shape[1], dist.device)


def label_masks(
    labels: Tensor, candidate_labels: Tensor | None = None, not_positive: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean masks: same class off the diagonal / other class.

    B x B for the batch against itself; B x N against ``candidate_labels`` (the batch's
    own labels first, then extra candidates), where column i < B is row i itself.
    ``not_positive`` (a boolean mask of the same shape, see ``check_not_positive``) marks
    pairs that are never positives although they share a label (items a merchandiser marked
    dissimilar, trainer.feedback): they are then neither positive nor negative, since the
    class labels say "same" and the judgement "different", and the feedback's own pair
    term is what pushes them apart.
    """
    columns = labels if candidate_labels is None else candidate_labels
    same = labels[:, None] == columns[None, :]
    positive = same & ~torch.eye(*same.shape, dtype=torch.bool, device=labels.device)
    if not_positive is not None:
        positive &= ~check_not_positive(not_positive, tuple(same.shape), labels.device)
    return positive, ~same


def check_not_positive(mask: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """A ``not_positive`` mask must be boolean and shaped like the distance matrix (B, N)."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"not_positive must be a boolean mask of shape {shape}, got {got}")
    return mask.to(device)


def count_valid_triplets(positive: Tensor, negative: Tensor) -> int:
    """Number of (a, p, n) with p a positive and n a negative of a."""
    per_anchor = torch.count_nonzero(positive, dim=1) * torch.count_nonzero(negative, dim=1)
    return int(per_anchor.sum().item())


def mean_or_none(values: Tensor) -> float | None:
    """Mean as a float, None for an empty tensor (stats must stay JSON-friendly: no NaN)."""
    return float(values.mean().item()) if values.numel() else None
