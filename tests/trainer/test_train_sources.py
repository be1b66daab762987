"""Training end to end from a folder, from the SQL catalog, and from explicit pairs / triplets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import make_session_factory
from core.embedding import load_model
from tests.trainer.test_data import make_catalog, make_folder
from tests.trainer.test_train import one_torch_thread  # noqa: F401 - autouse fixture
from trainer.augment import normalize_batch
from trainer.batches import EpochBatches, batch_loss
from trainer.components import build_loss, build_network
from trainer.config import DataSource, TrainConfig
from trainer.data import DataContext, build_training_data
from trainer.train import train

TINY = ["model.input_size=32", "model.embedding_dim=16", "device=cpu", "progress=false", "epochs=2",
        "classes_per_batch=3", "images_per_class=2", "data.augment=light"]


def test_train_from_folder(tmp_path: Path):
    root = make_folder(tmp_path / "photos", n_classes=6, per_class=4)
    cfg = TrainConfig.from_yaml(None, [*TINY, "data.source=folder", f"data.path={root}",
                                       "data.holdout_classes=[class_4, class_5]", "data.preload=true"])
    result = train(cfg, tmp_path / "run", DataContext(Settings()))
    assert result.summary["train_classes"] == 4 and result.summary["eval_images"] == 8
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert result.final_metrics["n_queries"] == 8 and 0.0 <= result.final_metrics["map_at_r"] <= 1.0
    model, ckpt = load_model(result.checkpoint)
    assert ckpt.spec.input_size == 32 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 16)


def test_train_from_catalog(tmp_path: Path, any_db_settings: Settings, sessions: sessionmaker[Session]):
    make_catalog(any_db_settings, sessions, n_items=12, photos=3)
    cfg = TrainConfig.from_yaml(None, [*TINY, "data.source=catalog", "data.label=item", "data.holdout_fraction=0.25"])
    result = train(cfg, tmp_path / "run", DataContext(any_db_settings, sessions))
    held_out = result.summary["holdout_classes"]
    assert held_out and all(h.startswith("sku-") for h in held_out)
    assert result.summary["eval_images"] == 3 * len(held_out)
    assert result.summary["train_images"] == 3 * (12 - len(held_out))
    assert result.final_metrics["n_queries"] == 3 * len(held_out)


def _pairs_setup(tmp_path: Path, settings: Settings, sessions: sessionmaker[Session], kind: DataSource) -> TrainConfig:
    make_catalog(settings, sessions, n_items=8, photos=2)  # sku-i has category cat-(i % 4)
    csv = tmp_path / f"{kind.value}.csv"
    if kind is DataSource.PAIRS:
        csv.write_text("a,b,y\nsku-0,sku-4,0\nsku-1,sku-5,0\nsku-0,sku-1,1\nsku-2,sku-5,1\nsku-2,sku-6,0\n")
        loss = ["loss.kind=contrastive", "loss.miner=none", "loss.margin=1.0"]
    else:
        csv.write_text("anchor,positive,negative\nsku-0,sku-4,sku-1\nsku-1,sku-5,sku-2\nsku-2,sku-6,sku-0\n")
        loss = ["loss.kind=triplet", "loss.miner=none"]
    return TrainConfig.from_yaml(None, [*TINY, f"data.source={kind.value}", f"data.path={csv}", "data.label=category",
                                        "data.holdout_classes=[cat-3]", "classes_per_batch=2", *loss])


def test_pairs_loss_is_computed_on_exactly_the_given_pairs(
    tmp_path: Path, any_db_settings: Settings, sessions: sessionmaker[Session]
):
    cfg = _pairs_setup(tmp_path, any_db_settings, sessions, DataSource.PAIRS)
    data = build_training_data(cfg.data, cfg.model.spec(), DataContext(any_db_settings, sessions))
    model = build_network(cfg.model).eval()
    batch = next(iter(EpochBatches(data, cfg).batches(1)))
    a, b, y = batch
    assert len(y) == 4  # batch of P*K = 4 pairs out of 5
    out, n_images = batch_loss(model, build_loss(cfg.loss), batch, DataSource.PAIRS, spec=cfg.model.spec(),
                               device=torch.device("cpu"), channels_last=False, autocast_dtype=None)
    assert out.total == 4 and n_images == 8
    # the source notes' formula, pair by pair: (1 - Y) D^2 + Y max(0, m - D)^2, mean over non-zero terms
    spec, cpu = cfg.model.spec(), torch.device("cpu")
    with torch.no_grad():
        ea, eb = model(normalize_batch(a, spec, device=cpu)), model(normalize_batch(b, spec, device=cpu))
    terms = []
    for i in range(4):
        d = float(torch.linalg.vector_norm(ea[i].double() - eb[i].double()))
        terms.append(d * d if int(y[i]) == 0 else max(0.0, 1.0 - d) ** 2)
    active = [t for t in terms if t > 0]
    assert out.active == len(active)
    assert float(out.loss.detach()) == pytest.approx(sum(active) / len(active), rel=1e-4)


def test_triplets_loss_is_computed_on_exactly_the_given_triplets(
    tmp_path: Path, any_db_settings: Settings, sessions: sessionmaker[Session]
):
    cfg = _pairs_setup(tmp_path, any_db_settings, sessions, DataSource.TRIPLETS)
    data = build_training_data(cfg.data, cfg.model.spec(), DataContext(any_db_settings, sessions))
    model = build_network(cfg.model).eval()
    batch = next(iter(EpochBatches(data, cfg).batches(1)))
    out, n_images = batch_loss(model, build_loss(cfg.loss), batch, DataSource.TRIPLETS, spec=cfg.model.spec(),
                               device=torch.device("cpu"), channels_last=False, autocast_dtype=None)
    assert out.total == 3 and n_images == 9  # the CSV has 3 triplets: one short batch
    spec, cpu = cfg.model.spec(), torch.device("cpu")
    with torch.no_grad():
        e = [model(normalize_batch(x, spec, device=cpu)).double() for x in batch]
    terms = [max(0.0, float(torch.dist(e[0][i], e[1][i]) - torch.dist(e[0][i], e[2][i])) + cfg.loss.margin)
             for i in range(3)]
    active = [t for t in terms if t > 0]
    assert out.active == len(active) and float(out.loss.detach()) == pytest.approx(sum(active) / len(active), rel=1e-4)


@pytest.mark.parametrize("kind", [DataSource.PAIRS, DataSource.TRIPLETS])
def test_train_on_tuples(tmp_path: Path, settings: Settings, sqlite_engine, kind: DataSource):
    sessions = make_session_factory(sqlite_engine)
    cfg = _pairs_setup(tmp_path, settings, sessions, kind)
    result = train(cfg, tmp_path / "run", DataContext(settings, sessions))
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert all(r["steps"] >= 1 and r["loss"] >= 0 for r in result.history[1:])
    assert result.summary["eval_classes"] == 1 and result.final_metrics["n_queries"] == 4  # cat-3: 2 items x 2
