"""Cross-batch memory (Wang et al. 2020, "Cross-Batch Memory for Embedding Learning").

A FIFO queue of the last ``size`` embeddings (detached) and their labels.  A loss
given the queue's contents scores the current batch's anchors against the batch
*and* the memory: the memory only adds positive and negative candidates (columns of
the distance matrix), never anchors (rows).  The batch-against-batch block is the
same as without memory, gradients flowing into both ends as usual; the batch-against-
memory block carries gradients into the batch side only, since memory entries are
constants from earlier steps.  With an empty memory the loss is exactly the plain one.

``MemoryLoss`` wraps a loss: each call scores the batch against what is in the queue
(once ``warmup_steps`` calls have passed, so that the embedding has settled before
stale entries are trusted, as XBM starts its memory late), then enqueues the batch.
The queue fills during the warm-up too, so it is full when it is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from trainer.distances import safe_sqrt, squared_distance_matrix

if TYPE_CHECKING:  # the losses import this module; only the wrapper needs their types
    from trainer.losses.base import LossOutput
    from trainer.losses.contrastive import ContrastiveLoss
    from trainer.losses.triplet import TripletLoss


class MemoryContents(NamedTuple):
    """Embeddings (M, D), detached, their M class labels and, where known, the M images'
    dataset positions (-1: not recorded), in storage order."""

    embeddings: Tensor
    labels: Tensor
    positions: Tensor | None = None


def distances_with_memory(embeddings: Tensor, memory: MemoryContents | None, *, squared: bool) -> Tensor:
    """(B, B + M) distances: the batch against itself (exact 0 diagonal), then against the memory.

    Plain Euclidean, or squared with ``squared``; (B, B) when ``memory`` is None or empty.
    """
    d2 = squared_distance_matrix(embeddings)
    if memory is not None and memory.labels.numel():
        extra = memory.embeddings.to(device=embeddings.device, dtype=embeddings.dtype)
        d2 = torch.cat([d2, squared_distance_matrix(embeddings, extra)], dim=1)
    return d2 if squared else safe_sqrt(d2)


def labels_with_memory(labels: Tensor, memory: MemoryContents | None) -> Tensor | None:
    """The B + M column labels of ``distances_with_memory`` (None without memory: the batch's own)."""
    if memory is None or not memory.labels.numel():
        return None
    return torch.cat([torch.as_tensor(labels).to(memory.labels.device), memory.labels])


class CrossBatchMemory:
    """A ring buffer of the last ``size`` embeddings, labels and dataset positions, oldest
    overwritten first.

    Storage is allocated on the first ``enqueue`` with that batch's dimension, dtype
    and device.  A batch larger than the memory keeps only its last ``size`` rows.
    Positions (which training images the rows are) let a never-positive mask reach the
    memory's columns too; a batch enqueued without them records -1 (unknown).
    """

    def __init__(self, size: int) -> None:
        if int(size) < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self.size = int(size)
        self._embeddings: Tensor | None = None
        self._labels: Tensor | None = None
        self._positions: Tensor | None = None
        self._next = 0  # slot the next row goes to
        self._count = 0  # filled slots

    def __len__(self) -> int:
        return self._count

    def enqueue(self, embeddings: Tensor, labels: Tensor, positions: Tensor | None = None) -> None:
        """Append a batch (detached); the oldest rows make room once the memory is full."""
        embeddings = embeddings.detach()
        labels = torch.as_tensor(labels).detach().to(embeddings.device)
        if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"enqueue needs (B, D) embeddings and B labels, got {tuple(embeddings.shape)} "
                             f"and {tuple(labels.shape)}")
        if positions is None:
            positions = torch.full((len(labels),), -1, dtype=torch.int64)
        positions = torch.as_tensor(positions, dtype=torch.int64).detach().cpu()
        if positions.shape != labels.shape:
            raise ValueError(f"enqueue needs B positions, got {tuple(positions.shape)} for {len(labels)} rows")
        if self._embeddings is None:
            self._embeddings = embeddings.new_zeros((self.size, embeddings.shape[1]))
            self._labels = labels.new_zeros(self.size)
            self._positions = torch.full((self.size,), -1, dtype=torch.int64)
        assert self._labels is not None and self._positions is not None
        embeddings, labels, positions = embeddings[-self.size:], labels[-self.size:], positions[-self.size:]
        slots = (self._next + torch.arange(len(labels), device=embeddings.device)) % self.size
        # Out of place: the graph of the step that just used ``contents()`` still holds those
        # rows for its backward pass (a copy of M x D floats per step costs little).
        self._embeddings = self._embeddings.index_copy(0, slots, embeddings.to(self._embeddings.dtype))
        self._labels = self._labels.index_copy(0, slots, labels.to(self._labels.dtype))
        self._positions = self._positions.index_copy(0, slots.cpu(), positions)
        self._next = (self._next + len(labels)) % self.size
        self._count = min(self._count + len(labels), self.size)

    def contents(self) -> MemoryContents | None:
        """What the memory holds (storage order), or None while it is empty; later
        ``enqueue`` calls never change tensors already handed out."""
        if not self._count or self._embeddings is None or self._labels is None or self._positions is None:
            return None
        return MemoryContents(self._embeddings[: self._count], self._labels[: self._count],
                              self._positions[: self._count])

    def clear(self) -> None:
        self._next = self._count = 0


PairMask = Callable[[Tensor, Tensor], Tensor]
"""(row positions (B,), column positions (N,)) -> (B, N) boolean: pairs that are never positives."""


class MemoryLoss(nn.Module):
    """``loss`` with a cross-batch memory of ``size`` rows used from step ``warmup_steps`` on.

    ``step`` counts the calls (training steps); a resumed run sets it to the steps
    already taken, so the warm-up is not repeated (the queue itself starts empty).
    ``never_positive`` (trainer.feedback.NeverPositive.mask) masks the memory's columns
    by the images they hold, as the caller's ``not_positive`` masks the batch's.
    """

    def __init__(self, loss: TripletLoss | ContrastiveLoss, size: int, warmup_steps: int = 0,
                 never_positive: PairMask | None = None) -> None:
        super().__init__()
        if int(warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.loss = loss
        self.memory = CrossBatchMemory(size)
        self.warmup_steps = int(warmup_steps)
        self.never_positive = never_positive
        self.step = 0

    @property
    def active(self) -> bool:
        """Whether the next call scores against the memory (the warm-up is over)."""
        return self.step >= self.warmup_steps

    def forward(self, embeddings: Tensor, labels: Tensor, not_positive: Tensor | None = None,
                positions: Tensor | None = None) -> LossOutput:
        """``not_positive``: (B, B) pairs of the batch that are never positives; ``positions``:
        the batch's dataset positions, recorded in the memory and, with ``never_positive``,
        used to mask the memory's columns (entries without a position are not masked)."""
        memory = self.memory.contents() if self.active else None
        if not_positive is not None and memory is not None:
            block = not_positive.new_zeros((not_positive.shape[0], len(memory.labels)))
            if self.never_positive is not None and positions is not None and memory.positions is not None:
                block = self.never_positive(torch.as_tensor(positions), memory.positions).to(block.device)
            not_positive = torch.cat([not_positive, block], dim=1)
        out = self.loss(embeddings, labels, memory=memory, not_positive=not_positive)
        self.memory.enqueue(embeddings, labels, positions)
        self.step += 1
        return out


__all__ = ["CrossBatchMemory", "MemoryContents", "MemoryLoss", "PairMask", "distances_with_memory",
           "labels_with_memory"]
