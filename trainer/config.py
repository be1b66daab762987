"""Training configuration: one dataclass tree, loaded from YAML, overridable from the CLI.

``TrainConfig.from_yaml(path, overrides=["optim.lr=3e-4", "epochs=5"])`` reads a file
and applies ``dotted.key=value`` overrides (values parsed as YAML, so ``[6, 7]``,
``true`` and ``1e-3`` mean what they look like). Every value is checked against the
field's type; an unknown key or a bad value fails with the key named and, for a
fixed set of options, the allowed values listed. ``to_dict()`` gives the resolved,
JSON-safe config that is saved beside the checkpoint and in the model registry.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.atomic_files import replacing
from core.config import DeviceChoice
from core.embedding.spec import Backbone, Distance, ModelSpec, Pretrained, ResizeMode
from trainer.config_tree import ConfigError, apply_overrides, build, plain
from trainer.miner_modes import PairStrategy, SemiHardMode

__all__ = [
    "AugmentPolicy", "ConfigError", "DataConfig", "DataSource", "FeedbackConfig", "LabelKind", "LossConfig",
    "LossKind", "LrSchedule", "MemoryConfig", "MinerKind", "ModelConfig", "OptimConfig", "SourceWeights",
    "TrainConfig", "apply_overrides",
]


class DataSource(str, enum.Enum):
    CATALOG = "catalog"  # items and images in SQL (the media store holds the pixels)
    FOLDER = "folder"  # root/<class name>/<image files>
    IDX = "idx"  # MNIST-format gzip files (Fashion-MNIST), decoded once into memory
    PAIRS = "pairs"  # CSV of external ids: a, b, y (0 similar, 1 dissimilar)
    TRIPLETS = "triplets"  # CSV of external ids: anchor, positive, negative


class LabelKind(str, enum.Enum):
    """What makes two catalog images "the same" for training and evaluation."""

    ITEM = "item"  # photos of one product
    GROUP = "group"  # products of one family / style (items.group_key)
    CATEGORY = "category"


class AugmentPolicy(str, enum.Enum):
    NONE = "none"
    LIGHT = "light"  # mild crops and flips: small or centred images (Fashion-MNIST)
    CROP_FLIP = "crop_flip"  # crops keeping >= half the photo, flips; colours untouched
    PRODUCT = "product"  # crop_flip plus light photometric jitter, no hue shift


class LossKind(str, enum.Enum):
    TRIPLET = "triplet"
    CONTRASTIVE = "contrastive"


class MinerKind(str, enum.Enum):
    NONE = "none"  # every valid triplet / pair of the batch (or the given tuples)
    BATCH_ALL = "batch_all"
    BATCH_HARD = "batch_hard"
    SEMI_HARD = "semi_hard"
    HARD_PAIRS = "hard_pairs"  # contrastive only


class LrSchedule(str, enum.Enum):
    COSINE = "cosine"  # linear warm-up, then cosine down to lr * min_lr_ratio
    CONSTANT = "constant"  # linear warm-up, then lr until the end


@dataclass
class DataConfig:
    source: DataSource = DataSource.FOLDER
    path: str = ""
    """Folder root, idx images file, or pairs/triplets CSV (catalog: unused)."""
    eval_path: str = ""
    """Separate evaluation set (folder or idx file); empty: the held-out classes of ``path``."""
    label: LabelKind = LabelKind.ITEM
    holdout_fraction: float = 0.2
    """Share of classes held out for evaluation (by a stable hash of the class name)."""
    holdout_classes: list[str] = field(default_factory=list)
    """Explicit held-out classes; overrides ``holdout_fraction``."""
    validation_fraction: float = 0.0
    """> 0: evaluate on this share of the *training* classes instead (class-disjoint, by a stable
    hash with its own salt), train on the rest, and never read the holdout or ``eval_path``.
    The recipe search compares its candidates this way, so the promotion gate's holdout stays unseen."""
    min_images_per_class: int = 2
    max_per_class: int = 0
    """Cap on training images per class (0: all), for quick runs."""
    eval_max_per_class: int = 0
    """Cap on evaluation images per class (0: all)."""
    augment: AugmentPolicy = AugmentPolicy.PRODUCT
    preload: bool = False
    """Decode and resize every image once and keep the pixels in memory."""
    num_workers: int = 0


@dataclass
class ModelConfig:
    backbone: Backbone = Backbone.SMALL_CNN
    embedding_dim: int = 128
    input_size: int = 0
    """0: the backbone's natural input size."""
    pretrained: Pretrained = Pretrained.NONE
    distance: Distance = Distance.EUCLIDEAN
    head_batchnorm: bool = False
    resize: ResizeMode = ResizeMode.SQUASH
    """Input geometry (squash / center_crop / pad), carried in the spec and so in the checkpoint."""
    freeze: list[str] = field(default_factory=list)
    """Parameter-name prefixes to freeze, e.g. ``backbone.body._blocks.0.``."""
    init_checkpoint: str = ""
    """Start from these weights (a checkpoint with the same spec) instead of a fresh network."""

    def spec(self) -> ModelSpec:
        overrides: dict[str, Any] = {
            "embedding_dim": self.embedding_dim, "pretrained": self.pretrained,
            "distance": self.distance, "head_batchnorm": self.head_batchnorm, "resize": self.resize,
        }
        if self.input_size:
            overrides["input_size"] = self.input_size
        return ModelSpec.for_backbone(self.backbone, **overrides)


@dataclass
class LossConfig:
    """The loss and its miner, every option they have (``trainer.losses``, ``trainer.miners``)."""

    kind: LossKind = LossKind.TRIPLET
    miner: MinerKind = MinerKind.BATCH_HARD
    margin: float = 0.2
    squared: bool = False
    """Triplet: the FaceNet form on squared distances (loss and miner alike)."""
    soft_margin: bool = False
    """Triplet: softplus instead of the hinge, averaged over every selected triplet."""
    only_active: bool = True
    """batch_all: keep only triplets with a non-zero hinge (false: every valid triplet)."""
    semi_hard_mode: SemiHardMode = SemiHardMode.HARDEST
    """semi_hard: the closest semi-hard negative per (a, p) (hardest), or every one (all)."""
    pair_strategy: PairStrategy = PairStrategy.ACTIVE
    """hard_pairs: every active pair (active), or each anchor's hardest positive and negative (hardest)."""
    pos_threshold: float = 0.0
    """hard_pairs: similar pairs closer than this are dropped as already learnt."""


@dataclass
class MemoryConfig:
    """Cross-batch memory (Wang et al. 2020; ``trainer.losses.memory``): the last ``size``
    embeddings of earlier batches, detached, as extra positives and negatives for the
    loss and its miner."""

    size: int = 0
    """Embeddings kept (0: no memory). Class-labelled data only (not pairs / triplets CSVs)."""
    warmup_steps: int = 0
    """Training steps before the memory is used (it fills meanwhile), so the embedding has settled."""


@dataclass
class SourceWeights:
    """How much one judgement of each feedback source counts (times the judgement's own weight).

    A merchandiser's mark is a decision, a click or a skip a noisy signal; 0 leaves a source
    out of training altogether. Which source wins a conflict is a fixed rank, not these
    weights (docs/ARCHITECTURE.md, "Feedback in training")."""

    merchandiser: float = 1.0
    click: float = 0.3
    skip: float = 0.1


@dataclass
class FeedbackConfig:
    """Judgements of the ``feedback`` table as extra contrastive pairs next to the class batches
    (catalog training only; ``trainer.data.feedback``). No feedback rows: training is unchanged."""

    enabled: bool = True
    weight: float = 1.0
    """Weight of the pair term in each step's loss: class loss + weight * contrastive loss of the pairs."""
    pairs_per_step: int = 16
    """Feedback pairs drawn per training step, with probability proportional to their weight."""
    margin: float = 1.0
    """Contrastive margin of the pair term: dissimilar pairs are pushed at least this far apart."""
    sources: SourceWeights = field(default_factory=SourceWeights)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    backbone_lr: float = 0.0
    """Learning rate of the backbone trunk; 0: the same as ``lr``."""
    weight_decay: float = 1e-4
    schedule: LrSchedule = LrSchedule.COSINE
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    """The cosine schedule ends at ``lr * min_lr_ratio`` (unused by ``constant``)."""
    grad_clip: float = 5.0
    """Max global gradient norm; 0 disables clipping."""


def _feedback_checks(cfg: FeedbackConfig) -> list[tuple[bool, str]]:
    finite = math.isfinite
    return [
        (finite(cfg.weight) and cfg.weight >= 0, "feedback.weight must be a finite number >= 0 (0: no pair term)"),
        (cfg.pairs_per_step >= 1, "feedback.pairs_per_step must be >= 1"),
        (finite(cfg.margin) and cfg.margin > 0, "feedback.margin must be a finite number > 0"),
        *((finite(getattr(cfg.sources, f.name)) and getattr(cfg.sources, f.name) >= 0,
           f"feedback.sources.{f.name} must be a finite number >= 0 (0: leave that source out)")
          for f in dataclasses.fields(cfg.sources)),
    ]


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    epochs: int = 10
    classes_per_batch: int = 8
    images_per_class: int = 4
    """P x K batches; pairs / triplets training uses P*K tuples per batch."""
    steps_per_epoch: int = 0
    """Batches per epoch: 0 (or anything larger) means one pass over the training images or tuples."""
    seed: int = 0
    device: DeviceChoice = DeviceChoice.AUTO
    amp: bool = True
    """Mixed precision on CUDA (bfloat16 where supported, else float16 with loss scaling); ignored on CPU."""
    channels_last: bool = True
    """NHWC memory layout for the convolutions, on CPU as on CUDA (faster on both here)."""
    compile: bool = False
    eval_every: int = 1
    eval_batch_size: int = 256
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    progress: bool = True
    notes: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.classes_per_batch >= 2, "classes_per_batch must be >= 2 (negatives need another class)"),
            (self.images_per_class >= 2, "images_per_class must be >= 2 (positives need a second image)"),
            (self.steps_per_epoch >= 0, "steps_per_epoch must be >= 0"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: never)"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (all(k >= 1 for k in self.ks), "ks must be positive"),
            (0.0 <= self.data.holdout_fraction < 1.0, "data.holdout_fraction must be in [0, 1)"),
            (0.0 <= self.data.validation_fraction < 1.0, "data.validation_fraction must be in [0, 1)"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            (self.data.min_images_per_class >= 1, "data.min_images_per_class must be >= 1"),
            (self.optim.lr > 0 and self.optim.backbone_lr >= 0, "optim.lr must be > 0, optim.backbone_lr >= 0"),
            (self.optim.warmup_epochs >= 0 and self.optim.grad_clip >= 0,
             "optim.warmup_epochs and grad_clip must be >= 0"),
            (0.0 <= self.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]"),
            (self.loss.margin >= 0, "loss.margin must be >= 0"),
            (self.loss.pos_threshold >= 0, "loss.pos_threshold must be >= 0"),
            (self.memory.size >= 0, "memory.size must be >= 0 (0: no cross-batch memory)"),
            (self.memory.warmup_steps >= 0, "memory.warmup_steps must be >= 0"),
            *_feedback_checks(self.feedback),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        triplet_miners = {MinerKind.NONE, MinerKind.BATCH_ALL, MinerKind.BATCH_HARD, MinerKind.SEMI_HARD}
        pair_miners = {MinerKind.NONE, MinerKind.HARD_PAIRS}
        allowed = triplet_miners if self.loss.kind is LossKind.TRIPLET else pair_miners
        if self.loss.miner not in allowed:
            raise ConfigError(
                f"loss.miner {self.loss.miner.value!r} does not go with loss.kind {self.loss.kind.value!r}; "
                f"choose one of {sorted(m.value for m in allowed)}"
            )
        if self.loss.soft_margin and self.loss.kind is not LossKind.TRIPLET:
            raise ConfigError("loss.soft_margin is a triplet-loss option; set loss.kind=triplet or soft_margin=false")
        if self.loss.soft_margin and self.loss.miner is MinerKind.BATCH_ALL and self.loss.only_active:
            # softplus is never 0: filtering on the hinge would drop triplets that still pull.
            raise ConfigError("loss.soft_margin scores every triplet; with loss.miner=batch_all set "
                              "loss.only_active=false")
        tuple_loss = {DataSource.PAIRS: LossKind.CONTRASTIVE, DataSource.TRIPLETS: LossKind.TRIPLET}
        needed = tuple_loss.get(self.data.source)
        if needed is not None and self.loss.kind is not needed:
            raise ConfigError(
                f"data.source {self.data.source.value!r} trains on exactly the given tuples with the "
                f"{needed.value} loss; set loss.kind={needed.value}"
            )
        if needed is not None and self.memory.size:
            raise ConfigError(
                f"memory.size needs class-labelled data; data.source {self.data.source.value!r} trains on "
                "exactly the given tuples (set memory.size=0)"
            )

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        return build(cls, data or {})

    @classmethod
    def from_yaml(cls, path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read ``path`` (None: all defaults) and apply ``key=value`` overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"cannot read config {path}: {exc}") from exc
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"config {path} must be a mapping at the top level")
            data = loaded or {}
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    def save_yaml(self, path: Path) -> None:
        """Write the resolved config atomically (temp file + rename)."""
        with replacing(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
