"""data.validation_fraction: a class-disjoint validation split of the training classes.

The recipe search compares candidates on it, so the promotion gate's holdout (and a
separate test split) must never be read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.embedding import ModelSpec
from tests.trainer.test_data import make_folder
from trainer.config import DataConfig, DataSource
from trainer.data import DataContext, build_eval_data, build_training_data, split_classes
from trainer.data.split import validation_classes

SPEC = ModelSpec(input_size=16)


def ctx(tmp_path: Path) -> DataContext:
    return DataContext(Settings(home=tmp_path / "home"))


def test_validation_classes_are_stable_disjoint_and_sized() -> None:
    classes = [f"c{i}" for i in range(40)]
    split = validation_classes(classes, 0.25)
    assert split.train.isdisjoint(split.holdout) and split.train | split.holdout == set(classes)
    assert 4 <= len(split.holdout) <= 18  # about a quarter of 40, by hash
    assert validation_classes(reversed(classes), 0.25) == split  # order does not matter
    # The validation hash is independent of the holdout hash: not simply the same classes.
    holdout = split_classes(classes, fraction=0.25).holdout
    assert split.holdout != holdout
    assert validation_classes(classes[:5], 0.01).holdout.__len__() == 2  # at least two validate
    assert len(validation_classes(classes[:4], 0.9).train) == 2  # at least two train
    with pytest.raises(ValueError, match="at least 4 training classes"):
        validation_classes(classes[:3], 0.5)


def test_closed_set_config_validates_on_training_classes_and_never_reads_the_test_split(tmp_path: Path) -> None:
    train_dir = make_folder(tmp_path / "train", n_classes=6, per_class=4)
    test_dir = tmp_path / "test-that-must-not-be-read"  # does not even exist
    cfg = DataConfig(source=DataSource.FOLDER, path=str(train_dir), eval_path=str(test_dir),
                     holdout_fraction=0.0, validation_fraction=0.3)
    data = build_training_data(cfg, SPEC, ctx(tmp_path))
    train_classes, eval_classes = set(data.train.labels), set(data.eval.labels)
    assert train_classes.isdisjoint(eval_classes)
    assert train_classes | eval_classes == {f"class_{c}" for c in range(6)}
    assert eval_classes == validation_classes(train_classes | eval_classes, 0.3).holdout
    assert data.summary["validation"] is True
    assert set(build_eval_data(cfg, SPEC, ctx(tmp_path)).labels) == eval_classes


def test_open_set_config_leaves_the_holdout_out_entirely(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "all", n_classes=12, per_class=3)
    plain = DataConfig(source=DataSource.FOLDER, path=str(root), holdout_fraction=0.25)
    holdout = set(build_training_data(plain, SPEC, ctx(tmp_path)).eval.labels)
    cfg = DataConfig(source=DataSource.FOLDER, path=str(root), holdout_fraction=0.25, validation_fraction=0.25)
    data = build_training_data(cfg, SPEC, ctx(tmp_path))
    seen = set(data.train.labels) | set(data.eval.labels)
    assert holdout and seen.isdisjoint(holdout)
    assert seen | holdout == {f"class_{c}" for c in range(12)}
    assert set(data.train.labels).isdisjoint(data.eval.labels)
