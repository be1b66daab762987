"""P x K batch sampler: P classes x K images per class in every batch.

Online mining needs positives in every batch: with plain random batches over
many classes most anchors have no other image of their class.  Use as
``DataLoader(dataset, batch_sampler=PKBatchSampler(labels, p=..., k=...))``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class PKBatchSampler(Sampler[list[int]]):
    """Yields lists of P*K dataset indices: K of each of P distinct classes.

    Decisions (documented for the training loop):

    - Classes with fewer than ``min_class_size`` images (default 2) are never
      drawn: a class with a single image gives no positive pair.
    - A class with at least ``min_class_size`` but fewer than K images gives all
      its images plus random repeats to reach K (sampling with replacement, as
      pytorch-metric-learning's ``MPerClassSampler``); a repeated image is a
      valid, if easy, positive (augmentations usually make the copies differ).
    - Within an epoch, classes are visited in a shuffled round-robin (every
      eligible class once before any class twice) and each class hands out its
      images from a shuffled queue, so an epoch covers the data evenly.
    - An epoch is ``max(1, eligible_images // (P*K))`` batches (``len``).
    - The order depends only on ``seed`` and the epoch (``set_epoch``, as
      ``DistributedSampler``); the epoch advances by itself after each full pass.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        seed: int = 0,
        min_class_size: int = 2,
    ) -> None:
        labels_array = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels_array.ndim != 1:
            raise ValueError(f"labels must be 1-D (one class id per dataset item), got shape {labels_array.shape}")
        if not np.issubdtype(labels_array.dtype, np.integer):
            raise TypeError(f"labels must be integer class ids, got dtype {labels_array.dtype}")
        if p < 1:
            raise ValueError(f"p (classes per batch) must be >= 1, got {p}")
        if k < 2:
            raise ValueError(f"k (images per class) must be >= 2 so batches hold positive pairs, got {k}")
        if min_class_size < 1:
            raise ValueError(f"min_class_size must be >= 1, got {min_class_size}")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        classes, inverse = np.unique(labels_array, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1])
        self._members = [m for m in members if len(m) >= min_class_size]
        if len(self._members) < self.p:
            raise ValueError(
                f"need at least p={self.p} classes with >= {min_class_size} images, "
                f"found {len(self._members)} (of {len(classes)} classes)"
            )
        self._eligible = int(sum(len(m) for m in self._members))
        self._epoch = 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return max(1, self._eligible // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._epoch += 1
        queues = [rng.permutation(m) for m in self._members]
        cursors = [0] * len(self._members)
        class_order: list[int] = []
        for _ in range(len(self)):
            chosen = self._next_classes(rng, class_order)
            batch: list[int] = []
            for c in chosen:
                batch.extend(self._draw(rng, c, queues, cursors))
            yield batch

    def _next_classes(self, rng: np.random.Generator, class_order: list[int]) -> list[int]:
        """Take P distinct classes from the shuffled round-robin, refilling it as needed."""
        chosen: list[int] = []
        deferred: list[int] = []
        while len(chosen) < self.p:
            if not class_order:
                class_order.extend(rng.permutation(len(self._members)).tolist())
            c = class_order.pop()
            if c in chosen:
                # Only across a refill boundary: serve it first in the next batch.
                deferred.append(c)
                continue
            chosen.append(c)
        class_order.extend(deferred)
        return chosen

    def _draw(self, rng: np.random.Generator, c: int, queues: list[np.ndarray], cursors: list[int]) -> list[int]:
        members = self._members[c]
        if len(members) < self.k:
            extra = rng.choice(members, size=self.k - len(members), replace=True)
            return np.concatenate([rng.permutation(members), extra]).tolist()
        if cursors[c] + self.k > len(members):
            queues[c] = rng.permutation(members)
            cursors[c] = 0
        start = cursors[c]
        cursors[c] += self.k
        return queues[c][start : start + self.k].tolist()
