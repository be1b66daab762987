"""Batches for one epoch, and the loss of one batch.

Class-labelled data is drawn P x K (``trainer.samplers.PKBatchSampler``) so every
batch has positives to mine; pairs and triplets are shuffled tuples, and the loss
is computed on exactly those tuples. Both streams depend only on the run's seed and
the epoch number (see :mod:`trainer.run_dir`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from core.embedding import ModelSpec
from trainer.augment import normalize_batch
from trainer.config import DataSource, TrainConfig
from trainer.data import TrainingData
from trainer.data.images import ImageDataset
from trainer.losses import ContrastiveLoss, LossOutput, TripletLoss
from trainer.losses.memory import MemoryLoss
from trainer.run_dir import epoch_seed
from trainer.samplers import PKBatchSampler

log = logging.getLogger(__name__)


def classes_per_batch(targets: Sequence[int], wanted: int) -> int:
    """P for these training labels: ``wanted``, or every class that has a positive pair when
    there are fewer (a catalog with few categories, or a search's validation split taking some
    of them, still trains; the batch is then smaller). Fewer than two such classes cannot train."""
    available = int((np.bincount(np.asarray(targets, dtype=np.int64)) >= 2).sum()) if len(targets) else 0
    if available < 2:
        raise ValueError(f"training needs at least 2 classes with >= 2 images, found {available}")
    if available < wanted:
        log.warning("classes_per_batch=%d but the training data has %d classes with >= 2 images: "
                    "batches hold %d classes", wanted, available, available)
    return min(wanted, available)


class EpochBatches:
    """``batches(epoch)`` yields the epoch's training batches; ``len()`` is the steps per epoch.

    ``dataset``: what the loader reads instead of ``data.train`` (the same images in the same
    order, e.g. ``trainer.feedback.PositionedImages``, whose batches also say where each image is).
    """

    def __init__(self, data: TrainingData, cfg: TrainConfig, *, pin_memory: bool = False,
                 dataset: Dataset[Any] | None = None):
        self.seed = cfg.seed
        self._generator = torch.Generator()
        if isinstance(data.train, ImageDataset):
            self._pk: PKBatchSampler | None = PKBatchSampler(
                data.train.targets, p=classes_per_batch(data.train.targets, cfg.classes_per_batch),
                k=cfg.images_per_class, seed=cfg.seed,
            )
            batch_sampler = self._pk
        else:
            self._pk = None
            drop_last = len(data.train) >= cfg.batch_size  # a tiny CSV still gives one batch
            batch_sampler = BatchSampler(RandomSampler(data.train, generator=self._generator),
                                         batch_size=cfg.batch_size, drop_last=drop_last)
        self.loader = DataLoader(data.train if dataset is None else dataset, batch_sampler=batch_sampler,
                                 num_workers=cfg.data.num_workers, pin_memory=pin_memory)
        full = len(self.loader)
        self.steps = min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        if self._pk is not None:
            self._pk.set_epoch(epoch)
        self._generator.manual_seed(epoch_seed(self.seed, epoch) ^ 0x5DEECE66D)
        return islice(iter(self.loader), self.steps)


def batch_loss(
    model: torch.nn.Module,
    loss_fn: TripletLoss | ContrastiveLoss | MemoryLoss,
    batch: tuple[Tensor, ...],
    source: DataSource,
    *,
    spec: ModelSpec,
    device: torch.device,
    channels_last: bool,
    autocast_dtype: torch.dtype | None,
    not_positive: Tensor | None = None,
    positions: Tensor | None = None,
) -> tuple[LossOutput, int]:
    """The loss of one batch and the number of images it held.

    Class batches are ``(pixels, labels[, positions])``; pairs ``(a, b, y)``; triplets ``(a, p, n)``.
    Tuple members are embedded in one forward pass (concatenated), then split again.
    ``not_positive``: a class batch's (B, B) pairs that are never positives (trainer.feedback);
    ``positions``: the batch's dataset positions, which a cross-batch memory records to mask
    its own columns the same way.
    """
    if source is DataSource.PAIRS:
        pixels, n_parts = torch.cat(batch[:2]), 2
    elif source is DataSource.TRIPLETS:
        pixels, n_parts = torch.cat(batch[:3]), 3
    else:
        pixels, n_parts = batch[0], 1
    x = normalize_batch(pixels, spec, device=device, channels_last=channels_last)
    if autocast_dtype is not None:
        with torch.autocast(device.type, dtype=autocast_dtype):
            embeddings = model(x)
    else:
        embeddings = model(x)
    embeddings = embeddings.float()  # losses in float32 whatever the forward precision
    if n_parts == 1:
        if not_positive is None:
            return loss_fn(embeddings, batch[1].to(device)), len(pixels)
        if isinstance(loss_fn, MemoryLoss):
            return loss_fn(embeddings, batch[1].to(device), not_positive=not_positive.to(device),
                           positions=positions), len(pixels)
        return loss_fn(embeddings, batch[1].to(device), not_positive=not_positive.to(device)), len(pixels)
    parts = embeddings.chunk(n_parts)
    if isinstance(loss_fn, ContrastiveLoss):
        return loss_fn.forward_pairs(parts[0], parts[1], batch[2].to(device)), len(pixels)
    return loss_fn.forward_triplets(*parts), len(pixels)
