"""From a :class:`DataConfig` to the training set and the held-out evaluation set.

Which images train and which evaluate:

- classes are split into training and holdout classes (:mod:`trainer.data.split`);
- the training set is the training classes of ``data.path`` (the catalog for the
  catalog, pairs and triplets sources);
- the evaluation set is the holdout classes of ``data.eval_path`` when given, else
  of ``data.path``; with ``eval_path`` and no holdout at all (fraction 0, no explicit
  classes) it is the whole of ``eval_path`` (closed-set evaluation, e.g. a test split
  of the same categories);
- pairs / triplets train on exactly the CSV's tuples, minus any tuple that touches
  an item of a held-out class, so evaluation still sees only unseen classes;
- catalog training also reads the feedback table (when ``feedback`` is given and
  enabled): its resolved pairs of *training* images (:mod:`trainer.data.feedback`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.embedding import ModelSpec
from core.media import MediaStore
from trainer.augment import eval_pipeline, train_pipeline
from trainer.config import DataConfig, DataSource, FeedbackConfig
from trainer.data.catalog import catalog_images, catalog_list
from trainer.data.feedback import FeedbackPairs, catalog_feedback
from trainer.data.folder import scan_folder
from trainer.data.idx import load_idx_images
from trainer.data.images import ImageDataset, ImageList, MediaList, preload
from trainer.data.split import ClassSplit, select, split_classes, validation_classes
from trainer.data.tuples import TupleDataset, check_known, index_by_item, read_tuples_csv

log = logging.getLogger(__name__)
TUPLE_SOURCES = frozenset({DataSource.PAIRS, DataSource.TRIPLETS})


@dataclass
class TrainingData:
    source: DataSource
    train: ImageDataset | TupleDataset
    eval: ImageDataset | None
    summary: dict[str, Any] = field(default_factory=dict)
    feedback: FeedbackPairs | None = None
    """Feedback pairs among the training images (catalog training with feedback enabled)."""

    @property
    def tuples(self) -> bool:
        return self.source in TUPLE_SOURCES


@dataclass(frozen=True)
class DataContext:
    """What some sources need: settings (image limits, media store) and SQL sessions."""

    settings: Settings
    sessions: sessionmaker[Session] | None = None

    def need_sessions(self, source: DataSource) -> sessionmaker[Session]:
        if self.sessions is None:
            raise ValueError(f"data.source {source.value!r} reads the catalog and needs a database")
        return self.sessions


def build_training_data(cfg: DataConfig, spec: ModelSpec, ctx: DataContext,
                        feedback: FeedbackConfig | None = None) -> TrainingData:
    """The training and evaluation sets; with ``feedback`` (enabled) and the catalog, its feedback pairs."""
    if cfg.source in TUPLE_SOURCES:
        return _tuple_data(cfg, spec, ctx)
    train_all = _load_list(cfg, ctx, cfg.path)
    eval_all = _eval_source(cfg, ctx)
    split = _split(cfg, train_all, eval_all)
    train_idx = select(train_all.labels, split.train, max_per_class=cfg.max_per_class,
                       min_per_class=cfg.min_images_per_class)
    if not train_idx:
        raise ValueError(f"no training class has {cfg.min_images_per_class} or more images")
    train_list = train_all.subset(train_idx)
    eval_list = _eval_list(cfg, split, train_all, eval_all)
    extra: dict[str, Any] = {"validation": True} if cfg.validation_fraction > 0 else {}
    pairs = None
    if feedback is not None and feedback.enabled and cfg.source is DataSource.CATALOG:
        assert isinstance(train_list, MediaList)  # the catalog's images
        pairs = catalog_feedback(ctx.need_sessions(cfg.source), train_list, feedback.sources)
        extra["feedback"] = pairs.summary()
    data = _finish(cfg, spec, train_list, eval_list, split, **extra)
    data.feedback = pairs
    return data


def build_eval_data(cfg: DataConfig, spec: ModelSpec, ctx: DataContext) -> ImageDataset | None:
    """Only the held-out evaluation set (for ``lookalike evaluate``): the same split as training."""
    if cfg.source in TUPLE_SOURCES:
        train_all: ImageList = catalog_list(ctx.need_sessions(cfg.source), MediaStore.from_settings(ctx.settings),
                                            cfg.label)
        eval_all = None
    else:
        train_all = _load_list(cfg, ctx, cfg.path)
        eval_all = _eval_source(cfg, ctx)
    eval_list = _eval_list(cfg, _split(cfg, train_all, eval_all), train_all, eval_all)
    if eval_list is None:
        return None
    if cfg.preload:
        eval_list = preload(eval_list, spec.input_size, spec.resize)
    return ImageDataset(eval_list, eval_pipeline(spec))


def _eval_source(cfg: DataConfig, ctx: DataContext) -> ImageList | None:
    """``eval_path``'s images; never read when validating on training classes."""
    if not cfg.eval_path or cfg.validation_fraction > 0:
        return None
    return _load_list(cfg, ctx, cfg.eval_path)


def _load_list(cfg: DataConfig, ctx: DataContext, path: str) -> ImageList:
    if cfg.source is DataSource.CATALOG:
        return catalog_list(ctx.need_sessions(cfg.source), MediaStore.from_settings(ctx.settings), cfg.label)
    if not path:
        raise ValueError(f"data.path is required for data.source {cfg.source.value!r}")
    if cfg.source is DataSource.IDX:
        return load_idx_images(Path(path))
    s = ctx.settings
    return scan_folder(Path(path), max_pixels=s.max_image_pixels, max_bytes=s.max_image_bytes)


def _split(cfg: DataConfig, train_all: ImageList, eval_all: ImageList | None) -> ClassSplit:
    """Training vs evaluation classes; with ``validation_fraction`` the evaluation classes are a
    validation share of the training classes and the holdout is left out altogether."""
    classes = set(train_all.labels) | (set(eval_all.labels) if eval_all is not None else set())
    split = split_classes(classes, fraction=cfg.holdout_fraction, explicit=cfg.holdout_classes)
    if cfg.validation_fraction <= 0:
        return split
    trainable = {c for c in split.train if c in set(train_all.labels)}
    return validation_classes(trainable, cfg.validation_fraction)


def _eval_list(
    cfg: DataConfig, split: ClassSplit, train_all: ImageList, eval_all: ImageList | None
) -> ImageList | None:
    source = eval_all if eval_all is not None else train_all
    keep = split.holdout if split.holdout else (set(source.labels) if eval_all is not None else set())
    if not keep:
        log.warning("no held-out classes and no data.eval_path: training without evaluation")
        return None
    idx = select(source.labels, keep, max_per_class=cfg.eval_max_per_class)
    return source.subset(idx) if idx else None


def _finish(cfg: DataConfig, spec: ModelSpec, train_list: ImageList, eval_list: ImageList | None,
            split: ClassSplit, **extra: Any) -> TrainingData:
    if cfg.preload:
        train_list = preload(train_list, spec.input_size, spec.resize)
        eval_list = preload(eval_list, spec.input_size, spec.resize) if eval_list is not None else None
    train = ImageDataset(train_list, train_pipeline(spec, cfg.augment))
    evaluation = ImageDataset(eval_list, eval_pipeline(spec)) if eval_list is not None else None
    summary = {
        "train_images": len(train_list), "train_classes": len(set(train_list.labels)),
        "eval_images": len(eval_list) if eval_list is not None else 0,
        "eval_classes": len(set(eval_list.labels)) if eval_list is not None else 0,
        "holdout_classes": sorted(split.holdout)[:50], **extra,
    }
    return TrainingData(cfg.source, train, evaluation, summary)


def _tuple_data(cfg: DataConfig, spec: ModelSpec, ctx: DataContext) -> TrainingData:
    if cfg.validation_fraction > 0:
        raise ValueError("data.validation_fraction needs class-labelled data (folder, idx or catalog), "
                         f"not {cfg.source.value} tuples")
    if not cfg.path:
        raise ValueError(f"data.path must name the {cfg.source.value} CSV")
    sessions = ctx.need_sessions(cfg.source)
    store = MediaStore.from_settings(ctx.settings)
    rows = read_tuples_csv(Path(cfg.path), cfg.source)
    images = catalog_images(sessions)
    every = MediaList(store, [r.media_key for r in images], [r.external_id for r in images],
                      [r.image_id for r in images])
    images_of = index_by_item([r.external_id for r in images])
    check_known(rows, set(images_of), Path(cfg.path))

    labelled = catalog_list(sessions, store, cfg.label)
    split = split_classes(labelled.labels, fraction=cfg.holdout_fraction, explicit=cfg.holdout_classes)
    class_of = {r.external_id: r.label(cfg.label) for r in images}
    kept = rows.keep(lambda ids: not any(class_of[i] in split.holdout for i in ids))
    if not len(kept):
        raise ValueError(f"every {cfg.source.value[:-1]} touches a held-out class; lower data.holdout_fraction")
    eval_idx = select(labelled.labels, split.holdout, max_per_class=cfg.eval_max_per_class)
    eval_list = labelled.subset(eval_idx) if eval_idx else None
    if cfg.preload:
        every = preload(every, spec.input_size, spec.resize)
        eval_list = preload(eval_list, spec.input_size, spec.resize) if eval_list is not None else None
    train = TupleDataset(kept, every, images_of, train_pipeline(spec, cfg.augment))
    evaluation = ImageDataset(eval_list, eval_pipeline(spec)) if eval_list is not None else None
    summary = {
        "train_tuples": len(kept), "dropped_tuples": len(rows) - len(kept),
        "train_images": len(every),
        "eval_images": len(eval_list) if eval_list is not None else 0,
        "eval_classes": len(set(eval_list.labels)) if eval_list is not None else 0,
        "holdout_classes": sorted(split.holdout)[:50],
    }
    return TrainingData(cfg.source, train, evaluation, summary)
