"""Feedback as training pairs: the conflict rule, and which catalog pairs reach training."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import FeedbackJudgement, FeedbackSource, Item, ItemStatus, session_scope
from core.feedback import Judgement, record_feedback
from tests.trainer.test_data import make_catalog
from trainer.batches import EpochBatches
from trainer.config import ConfigError, SourceWeights, TrainConfig
from trainer.data import DataContext, build_training_data
from trainer.data.feedback import FeedbackPair, StoredJudgement, resolve
from trainer.feedback import FeedbackTerm, NeverPositive, PositionedImages

M, C, S = FeedbackSource.MERCHANDISER, FeedbackSource.CLICK, FeedbackSource.SKIP


def test_the_merchandiser_outranks_clicks_whatever_the_weights() -> None:
    weights = SourceWeights(merchandiser=1.0, click=5.0, skip=0.5)
    rows = [StoredJudgement("a", "b", 0, C, 3.0), StoredJudgement("b", "a", 1, M, 2.0),
            StoredJudgement("c", "a", 0, C, 1.0), StoredJudgement("a", "c", 1, S, 4.0),
            StoredJudgement("d", "e", 1, S, 2.0)]
    assert resolve(rows, weights) == [
        FeedbackPair("a", "b", 1, M, 1.0 * 2.0),  # both directions are one pair; the mark decides
        FeedbackPair("a", "c", 0, C, 5.0 * 1.0),  # a click outranks a skip
        FeedbackPair("d", "e", 1, S, 0.5 * 2.0),
    ]


def test_ordered_resolution_keeps_each_direction_apart() -> None:
    """What the shadow evaluation judges rankings by: a mark is about the query's answer."""
    weights = SourceWeights(merchandiser=1.0, click=5.0, skip=0.5)
    rows = [StoredJudgement("a", "b", 0, C, 3.0), StoredJudgement("b", "a", 1, M, 2.0),
            StoredJudgement("a", "b", 1, S, 1.0), StoredJudgement("c", "a", 0, C, 1.0)]
    assert resolve(rows, weights, ordered=True) == [
        FeedbackPair("a", "b", 0, C, 5.0 * 3.0),  # a -> b: the click outranks the skip
        FeedbackPair("b", "a", 1, M, 1.0 * 2.0),  # b -> a: its own mark
        FeedbackPair("c", "a", 0, C, 5.0 * 1.0),  # query first, whatever the names' order
    ]


def test_dissimilar_wins_within_the_deciding_source_and_a_zero_weight_source_is_left_out() -> None:
    rows = [StoredJudgement("a", "b", 0, M, 3.0), StoredJudgement("b", "a", 1, M, 1.5),
            StoredJudgement("a", "c", 1, M, 1.0), StoredJudgement("a", "c", 0, C, 1.0)]
    assert resolve(rows, SourceWeights()) == [FeedbackPair("a", "b", 1, M, 1.5), FeedbackPair("a", "c", 1, M, 1.0)]
    assert resolve(rows, SourceWeights(merchandiser=0.0)) == [FeedbackPair("a", "c", 0, C, 0.3)]


def test_feedback_config_is_checked_with_the_key_named() -> None:
    cfg = TrainConfig.from_yaml(None, ["feedback.weight=0.5", "feedback.sources.click=0"])
    assert cfg.feedback.weight == 0.5 and cfg.feedback.sources.click == 0.0 and cfg.feedback.enabled
    for bad, key in [("feedback.weight=-1", "feedback.weight"), ("feedback.pairs_per_step=0", "pairs_per_step"),
                     ("feedback.margin=0", "feedback.margin"), ("feedback.sources.skip=-0.1", "sources.skip"),
                     ("feedback.sources.shopper=1", "feedback.sources.shopper")]:
        with pytest.raises(ConfigError, match=key):
            TrainConfig.from_yaml(None, [bad])


def test_only_pairs_of_training_items_are_used(any_db_settings: Settings, sessions: sessionmaker[Session]) -> None:
    make_catalog(any_db_settings, sessions, n_items=12, photos=2)  # sku-i: category cat-(i % 4)
    with session_scope(sessions) as s:
        record_feedback(s, [
            Judgement("sku-0", "sku-4", FeedbackJudgement.DISSIMILAR, M),  # same category: never positives
            Judgement("sku-4", "sku-0", FeedbackJudgement.SIMILAR, C),  # outranked by the mark
            Judgement("sku-1", "sku-2", FeedbackJudgement.SIMILAR, C, weight=2.0),
            Judgement("sku-1", "sku-3", FeedbackJudgement.DISSIMILAR, S),  # sku-3: held-out cat-3
            Judgement("sku-2", "sku-5", FeedbackJudgement.DISSIMILAR, M),  # sku-5 is deleted below
        ])
        s.query(Item).filter(Item.external_id == "sku-5").update({"status": ItemStatus.DELETED})
    cfg = TrainConfig.from_yaml(None, ["data.source=catalog", "data.label=category", "data.holdout_classes=[cat-3]",
                                       "model.input_size=32", "classes_per_batch=2", "images_per_class=2",
                                       "data.augment=none"])
    data = build_training_data(cfg.data, cfg.model.spec(), DataContext(any_db_settings, sessions), cfg.feedback)
    assert data.feedback is not None
    assert [(p.a, p.b, p.y, p.source) for p in data.feedback.pairs] == [("sku-0", "sku-4", 1, M),
                                                                         ("sku-1", "sku-2", 0, C)]
    assert data.summary["feedback"] == {"pairs": 2, "similar": 1, "dissimilar": 1,
                                        "by_source": {"merchandiser": 1, "click": 1, "skip": 0},
                                        "never_positive": 1, "dropped": 1}
    # The never-positive images are exactly the photos of sku-0 against those of sku-4.
    never = NeverPositive(data.feedback, len(data.train))
    photos = data.feedback.images_of["sku-0"] + data.feedback.images_of["sku-4"]
    positions = torch.arange(len(data.train))
    expected = {(i, j) for i in data.feedback.images_of["sku-0"] for j in data.feedback.images_of["sku-4"]}
    expected |= {(j, i) for i, j in expected}
    assert set(map(tuple, never.mask(positions).nonzero().tolist())) == expected and len(photos) == 4
    # Rows against other columns (a cross-batch memory's images); -1 (not recorded) is never masked.
    rows, columns = positions[: len(positions) // 2], torch.cat([positions.flip(0), torch.tensor([-1])])
    got = never.mask(rows, columns)
    assert got.shape == (len(rows), len(columns))
    assert {(int(rows[i]), int(columns[j])) for i, j in got.nonzero().tolist()} == {
        (i, j) for i, j in expected if i in rows.tolist()}
    # Each step's pairs are drawn by weight from these pairs, reproducibly per epoch (no augmentation here).
    term = FeedbackTerm.build(data, cfg.feedback, seed=0)
    assert term is not None
    term.start_epoch(1)
    a, b, y = term.draw()
    term.start_epoch(1)
    again = term.draw()
    assert a.shape == b.shape == (16, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert torch.equal(a, again[0]) and torch.equal(y, again[2])

    # The class batches say which images they hold, so the loop can build the mask.
    pixels, targets, where = next(iter(EpochBatches(data, cfg, dataset=PositionedImages(data.train)).batches(1)))
    assert torch.equal(targets, torch.as_tensor(data.train.targets)[where])

    off = build_training_data(cfg.data, cfg.model.spec(), DataContext(any_db_settings, sessions))
    assert off.feedback is None and "feedback" not in off.summary
