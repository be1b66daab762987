"""Explicit pairs / triplets CSVs of external ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.embedding import ModelSpec
from tests.trainer.test_data import make_catalog
from trainer.config import AugmentPolicy, DataConfig, DataSource, LabelKind
from trainer.data import DataContext, build_training_data, read_tuples_csv


def test_pairs_csv_parsing_and_errors(tmp_path: Path):
    good = tmp_path / "pairs.csv"
    good.write_text("a,b,y\nsku-1,sku-2,0\n sku-1 , sku-3 ,1\n")
    rows = read_tuples_csv(good, DataSource.PAIRS)
    assert rows.ids == [("sku-1", "sku-2"), ("sku-1", "sku-3")] and rows.y == [0, 1]

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,y\nsku-1,sku-2,2\nsku-1,,0\nsku-4,sku-4,1\nsku-1,sku-2,1\n")
    with pytest.raises(ValueError) as info:
        read_tuples_csv(bad, DataSource.PAIRS)
    message = str(info.value)
    assert "3 bad row(s)" in message and "line 2: y must be 0" in message
    assert "line 3: empty external id" in message and "line 4: the same item appears twice" in message

    headerless = tmp_path / "headerless.csv"
    headerless.write_text("sku-1,sku-2,0\n")
    with pytest.raises(ValueError, match="header must name the columns a,b,y"):
        read_tuples_csv(headerless, DataSource.PAIRS)


def test_triplets_csv(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("Anchor,Positive,Negative\nsku-1,sku-2,sku-3\n")
    assert read_tuples_csv(path, DataSource.TRIPLETS).ids == [("sku-1", "sku-2", "sku-3")]


def test_tuple_training_data_drops_holdout_and_checks_ids(
    tmp_path: Path, any_db_settings: Settings, sessions: sessionmaker[Session]
):
    make_catalog(any_db_settings, sessions, n_items=8, photos=2)  # categories cat-0..cat-3
    pairs = tmp_path / "pairs.csv"
    # sku-3 and sku-7 are in category cat-3, which is held out
    pairs.write_text("a,b,y\nsku-0,sku-4,0\nsku-0,sku-1,1\nsku-1,sku-3,1\nsku-2,sku-6,0\nsku-7,sku-3,0\n")
    cfg = DataConfig(source=DataSource.PAIRS, path=str(pairs), label=LabelKind.CATEGORY, holdout_classes=["cat-3"],
                     augment=AugmentPolicy.NONE)
    ctx = DataContext(any_db_settings, sessions)
    data = build_training_data(cfg, ModelSpec(input_size=32), ctx)
    assert data.summary["train_tuples"] == 3 and data.summary["dropped_tuples"] == 2
    assert set(data.eval.labels) == {"cat-3"} and len(data.eval) == 4
    a, b, y = data.train[1]
    assert a.shape == b.shape == (3, 32, 32) and int(y) == 1
    # each draw picks one of the item's photos
    torch.manual_seed(0)
    views = {data.train[0][0].numpy().tobytes() for _ in range(12)}
    assert len(views) == 2

    triplets = tmp_path / "triplets.csv"
    triplets.write_text("anchor,positive,negative\nsku-0,sku-4,sku-1\nsku-0,sku-4,nope\n")
    cfg = DataConfig(source=DataSource.TRIPLETS, path=str(triplets), label=LabelKind.CATEGORY,
                     holdout_classes=["cat-3"])
    with pytest.raises(ValueError, match="line 3: unknown external id 'nope'"):
        build_training_data(cfg, ModelSpec(input_size=32), ctx)
