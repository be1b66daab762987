"""Feedback in the training loop: a pair term next to each class batch, and never-positive pairs.

Each training step's loss is the class-labelled P x K batch's loss, as without feedback,
plus ``feedback.weight`` times the contrastive loss (trainer/losses/contrastive.py, the
notes' convention: y = 0 pulls, y = 1 pushes beyond ``feedback.margin``) of
``feedback.pairs_per_step`` feedback pairs drawn with probability proportional to their
weight (:class:`FeedbackTerm`). Items marked dissimilar that share a class label are never
an anchor-positive pair of the class batch (:class:`NeverPositive`). Without feedback pairs
neither exists and the loop is exactly the one without feedback.

Both draw only from their own generators and the epoch's seed, so an epoch's pairs depend
only on the run's seed and the epoch, and a resumed run replays them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.embedding import ModelSpec
from trainer.batches import batch_loss
from trainer.config import DataSource, FeedbackConfig
from trainer.data import ImageDataset, TrainingData
from trainer.data.feedback import FeedbackPairs
from trainer.data.tuples import pick_image
from trainer.losses import ContrastiveLoss, LossOutput
from trainer.run_dir import epoch_seed

_PAIR_STREAM = 0x46454544  # keeps the pair draws' seeds apart from the other per-epoch streams


class NeverPositive:
    """Pairs of training images (dataset positions) that a class batch never uses as positives:
    every photo of one item against every photo of the other, for each dissimilar pair of
    items that share a class label."""

    def __init__(self, pairs: FeedbackPairs, size: int) -> None:
        self.size = int(size)
        codes: set[int] = set()
        for pair in pairs.never_positive:
            for i in pairs.images_of[pair.a]:
                for j in pairs.images_of[pair.b]:
                    codes.update((i * self.size + j, j * self.size + i))
        self.codes = torch.tensor(sorted(codes), dtype=torch.int64)

    def __bool__(self) -> bool:
        return bool(self.codes.numel())

    def mask(self, rows: Tensor, columns: Tensor | None = None) -> Tensor:
        """(B, N) boolean: whether the images at ``rows[i]`` and ``columns[j]`` (dataset
        positions; the rows themselves by default, (B, B)) form a never-positive pair.
        A negative position (an image not recorded, e.g. in a memory) is never masked."""
        rows = torch.as_tensor(rows, dtype=torch.int64).cpu()
        columns = rows if columns is None else torch.as_tensor(columns, dtype=torch.int64).cpu()
        codes = torch.isin(rows[:, None] * self.size + columns[None, :], self.codes)
        return codes & (rows[:, None] >= 0) & (columns[None, :] >= 0)


class PositionedImages(Dataset[tuple[Tensor, int, int]]):
    """``dataset``'s ``(pixels, class index)`` with the dataset position appended, so a batch
    says which images it holds (for :meth:`NeverPositive.mask`)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        pixels, target = self.dataset[index]
        return pixels, target, index


class FeedbackTerm:
    """Draws each step's feedback pairs and scores them with the contrastive loss."""

    def __init__(self, pairs: FeedbackPairs, dataset: ImageDataset, cfg: FeedbackConfig, seed: int) -> None:
        if not len(pairs):
            raise ValueError("a feedback term needs at least one feedback pair")
        self.pairs, self.dataset, self.cfg, self.seed = pairs, dataset, cfg, seed
        self.weights = torch.tensor([p.weight for p in pairs.pairs], dtype=torch.float64)
        self.y = torch.tensor([p.y for p in pairs.pairs], dtype=torch.long)
        self.loss = ContrastiveLoss(cfg.margin)
        self._generator = torch.Generator()

    @classmethod
    def build(cls, data: TrainingData, cfg: FeedbackConfig, seed: int) -> FeedbackTerm | None:
        """The term for ``data``'s feedback pairs; None without pairs or with ``weight`` 0."""
        if data.feedback is None or not len(data.feedback) or cfg.weight == 0:
            return None
        assert isinstance(data.train, ImageDataset)  # feedback comes with class-labelled catalog data
        return cls(data.feedback, data.train, cfg, seed)

    def start_epoch(self, epoch: int) -> None:
        self._generator.manual_seed(epoch_seed(self.seed, epoch) ^ _PAIR_STREAM)

    def draw(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(pixels_a, pixels_b, y)`` of ``pairs_per_step`` pairs, drawn with replacement
        with probability proportional to their weight, one random photo per item."""
        chosen = torch.multinomial(self.weights, self.cfg.pairs_per_step, replacement=True,
                                   generator=self._generator)
        views: tuple[list[Tensor], list[Tensor]] = ([], [])
        for index in chosen.tolist():
            pair = self.pairs.pairs[index]
            for side, item in zip(views, (pair.a, pair.b), strict=True):
                position = pick_image(self.pairs.images_of[item], self._generator)
                side.append(self.dataset[position][0])
        return torch.stack(views[0]), torch.stack(views[1]), self.y[chosen]

    def step_loss(self, model: torch.nn.Module, *, spec: ModelSpec, device: torch.device, channels_last: bool,
                  autocast_dtype: torch.dtype | None) -> tuple[LossOutput, int]:
        """The pair term of one step (unweighted) and the number of images it embedded."""
        return batch_loss(model, self.loss, self.draw(), DataSource.PAIRS, spec=spec, device=device,
                          channels_last=channels_last, autocast_dtype=autocast_dtype)


def never_positive(data: TrainingData) -> NeverPositive | None:
    """The never-positive pairs of ``data``'s feedback; None when there are none."""
    if data.feedback is None:
        return None
    never = NeverPositive(data.feedback, len(data.train))
    return never if never else None
