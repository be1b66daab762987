"""Training data: class holdout, idx / folder / catalog sources, pixel pipelines."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker
from torch.utils.data import DataLoader

from core.config import Settings
from core.db import ImageStatus, Item, ItemImage, ItemStatus, session_scope
from core.embedding import ModelSpec, images_to_batch
from core.embedding.preprocess import prepare_image
from core.media import MediaStore
from trainer.augment import eval_pipeline, normalize_batch, train_pipeline
from trainer.config import AugmentPolicy, DataConfig, DataSource, LabelKind
from trainer.data import DataContext, build_eval_data, build_training_data, split_classes
from trainer.data.catalog import catalog_list
from trainer.data.idx import load_idx_images, read_idx
from trainer.data.images import ImageDataset, preload
from trainer.data.split import class_hash, select

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 200, 30), (160, 40, 200), (30, 200, 210)]


def photo(colour: tuple[int, int, int], variant: int, size: tuple[int, int] = (40, 56)) -> Image.Image:
    """A synthetic "product photo": a coloured block on white, shifted a little per variant."""
    img = Image.new("RGB", size, (255, 255, 255))
    x0, y0 = 4 + variant % 5, 6 + (variant * 3) % 7
    img.paste(colour, (x0, y0, x0 + size[0] // 2, y0 + size[1] // 2))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, n_classes: int = 6, per_class: int = 6) -> Path:
    for c in range(n_classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for v in range(per_class):
            photo(COLOURS[c % len(COLOURS)], v + 7 * (c // len(COLOURS))).save(d / f"{v}.png")
    return root


def make_catalog(settings: Settings, sessions: sessionmaker[Session], n_items: int = 12, photos: int = 3) -> list[str]:
    """Items with ``photos`` images each; category = colour, group = item pair; returns external ids."""
    store = MediaStore.from_settings(settings)
    ids = []
    with session_scope(sessions) as s:
        for i in range(n_items):
            item = Item(external_id=f"sku-{i}", title=f"item {i}", category=f"cat-{i % 4}", group_key=f"g-{i // 2}")
            for p in range(photos):
                stored = store.put_bytes(png_bytes(photo(COLOURS[i % 4], p + 3 * i)))
                item.images.append(ItemImage(position=p, media_key=stored.key, width=stored.width,
                                             height=stored.height))
            s.add(item)
            ids.append(item.external_id)
    return ids


# ----------------------------------------------------------------------------- holdout split
def test_holdout_split_is_stable_and_by_class():
    classes = [f"c{i}" for i in range(200)]
    a = split_classes(classes, fraction=0.2)
    assert a == split_classes(list(reversed(classes)), fraction=0.2)
    assert not (a.train & a.holdout) and a.train | a.holdout == set(classes)
    assert 20 <= len(a.holdout) <= 60  # about 20 %
    # a growing catalog keeps its old classes where they were
    b = split_classes(classes + [f"new{i}" for i in range(100)], fraction=0.2)
    assert a.holdout <= b.holdout and a.train <= b.train
    assert {c for c in classes if class_hash(c) < 0.2} == a.holdout


def test_holdout_split_edges():
    assert len(split_classes(["a", "b", "c"], fraction=0.01).holdout) == 1  # never empty when asked for
    assert split_classes(["a", "b", "c"], fraction=0.0).holdout == frozenset()
    assert split_classes(["0", "1", "2"], fraction=0.5, explicit=["2"]).holdout == {"2"}
    with pytest.raises(ValueError, match="do not exist"):
        split_classes(["a", "b", "c"], fraction=0.2, explicit=["z"])
    with pytest.raises(ValueError, match="left for training"):
        split_classes(["a", "b"], fraction=0.2, explicit=["a"])


def test_select_caps_and_drops_small_classes():
    labels = ["a", "b", "a", "c", "a", "b"]
    assert select(labels, {"a", "b", "c"}, max_per_class=2, min_per_class=2) == [0, 1, 2, 5]


# ----------------------------------------------------------------------------- idx
def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_errors(tmp_path: Path):
    pixels = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    _write_idx(tmp_path / "x-images-idx3-ubyte.gz", pixels, 0x803)
    _write_idx(tmp_path / "x-labels-idx1-ubyte.gz", np.array([3, 1, 3, 0, 2]), 0x801)
    images = load_idx_images(tmp_path / "x-images-idx3-ubyte.gz")
    assert images.labels == ["3", "1", "3", "0", "2"]
    assert np.array_equal(images.load(4), pixels[4])
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")


def test_fashion_mnist_holdout_sets(fashion_mnist_dir: Path):
    cfg = DataConfig(source=DataSource.IDX, path=str(fashion_mnist_dir / "train-images-idx3-ubyte.gz"),
                     eval_path=str(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"),
                     holdout_classes=["6", "7", "8", "9"], eval_max_per_class=50, max_per_class=20)
    data = build_training_data(cfg, ModelSpec(input_size=28), DataContext(Settings()))
    assert set(data.train.labels) == {"0", "1", "2", "3", "4", "5"} and len(data.train) == 120
    assert set(data.eval.labels) == {"6", "7", "8", "9"} and len(data.eval) == 200
    pixels, target = data.train[0]
    assert pixels.shape == (3, 28, 28) and pixels.dtype == torch.uint8
    assert data.train.classes[target] == data.train.labels[0]


# ----------------------------------------------------------------------------- folder
def test_folder_source_splits_classes(tmp_path: Path):
    root = make_folder(tmp_path / "photos", n_classes=6, per_class=4)
    (root / "class_0" / "notes.txt").write_text("not an image")
    (root / "class_0" / ".hidden.png").write_bytes(b"")
    cfg = DataConfig(source=DataSource.FOLDER, path=str(root), holdout_classes=["class_4", "class_5"])
    data = build_training_data(cfg, ModelSpec(input_size=32), DataContext(Settings()))
    assert data.summary["train_images"] == 16 and data.summary["train_classes"] == 4
    assert set(data.eval.labels) == {"class_4", "class_5"} and len(data.eval) == 8
    # a separate evaluation folder without a holdout: closed-set evaluation on all of it
    other = make_folder(tmp_path / "test", n_classes=6, per_class=2)
    closed = DataConfig(source=DataSource.FOLDER, path=str(root), eval_path=str(other), holdout_fraction=0.0)
    data = build_training_data(closed, ModelSpec(input_size=32), DataContext(Settings()))
    assert data.summary["train_classes"] == 6 and len(data.eval) == 12
    with pytest.raises(ValueError, match="no images found"):
        build_training_data(DataConfig(source=DataSource.FOLDER, path=str(tmp_path / "test" / "class_0")),
                            ModelSpec(input_size=32), DataContext(Settings()))


def test_eval_pixels_match_serving_preprocessing(tmp_path: Path):
    """What the trainer evaluates on is exactly what the service would embed."""
    root = make_folder(tmp_path / "photos", n_classes=3, per_class=2)
    spec = ModelSpec(input_size=24)
    cfg = DataConfig(source=DataSource.FOLDER, path=str(root), holdout_classes=["class_2"])
    evaluation = build_eval_data(cfg, spec, DataContext(Settings()))
    pixels = torch.stack([evaluation[i][0] for i in range(len(evaluation))])
    ours = normalize_batch(pixels, spec, device=torch.device("cpu"))
    photos = [Image.open(p) for p in evaluation.images.paths]
    served_pixels = torch.stack([torch.from_numpy(np.array(prepare_image(im, 24))).permute(2, 0, 1) for im in photos])
    assert torch.equal(pixels, served_pixels)  # the same uint8 pixels ...
    assert torch.allclose(ours, images_to_batch(photos, spec), rtol=0, atol=1e-6)  # ... and normalisation
    # preloading decodes once and gives identical evaluation pixels
    preloaded = ImageDataset(preload(evaluation.images, spec.input_size), eval_pipeline(spec))
    assert all(torch.equal(preloaded[i][0], evaluation[i][0]) for i in range(len(evaluation)))


def test_pipelines_shapes_and_worker_loading(tmp_path: Path):
    root = make_folder(tmp_path / "photos", n_classes=2, per_class=3)
    spec = ModelSpec(input_size=32)
    cfg = DataConfig(source=DataSource.FOLDER, path=str(root), holdout_fraction=0.0)
    data = build_training_data(cfg, spec, DataContext(Settings()))
    img = Image.open(root / "class_0" / "0.png")
    for policy in AugmentPolicy:
        out = train_pipeline(spec, policy)(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(train_pipeline(spec, AugmentPolicy.NONE)(img), eval_pipeline(spec)(img))
    torch.manual_seed(0)
    augmented = [train_pipeline(spec, AugmentPolicy.PRODUCT)(img) for _ in range(4)]
    assert any(not torch.equal(augmented[0], a) for a in augmented[1:])  # it does augment
    # the same dataset loads in a worker process
    loader = DataLoader(data.train, batch_size=3, num_workers=1)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 6 and batches[0][0].shape == (3, 3, 32, 32)


# ----------------------------------------------------------------------------- catalog
def test_catalog_labels(any_db_settings: Settings, sessions: sessionmaker[Session]):
    make_catalog(any_db_settings, sessions, n_items=6, photos=2)
    with session_scope(sessions) as s:
        gone = s.query(Item).filter_by(external_id="sku-0").one()
        gone.status = ItemStatus.DELETED
        s.query(Item).filter_by(external_id="sku-5").one().group_key = None
        s.query(ItemImage).filter_by(item_id=s.query(Item).filter_by(external_id="sku-1").one().id,
                                     position=0).one().status = ImageStatus.REMOVED
    store = MediaStore.from_settings(any_db_settings)
    by_item = catalog_list(sessions, store, LabelKind.ITEM)
    assert sorted(set(by_item.labels)) == ["sku-1", "sku-2", "sku-3", "sku-4", "sku-5"]
    assert by_item.labels.count("sku-1") == 1 and len(by_item) == 9
    assert sorted(set(catalog_list(sessions, store, LabelKind.GROUP).labels)) == ["g-0", "g-1", "g-2"]
    by_category = catalog_list(sessions, store, LabelKind.CATEGORY)
    assert sorted(set(by_category.labels)) == ["cat-0", "cat-1", "cat-2", "cat-3"]
    assert by_category.load(0).size == (40, 56)
    cfg = DataConfig(source=DataSource.CATALOG, label=LabelKind.CATEGORY, holdout_classes=["cat-3"])
    data = build_training_data(cfg, ModelSpec(input_size=32), DataContext(any_db_settings, sessions))
    assert set(data.eval.labels) == {"cat-3"} and "cat-3" not in data.train.labels
    with pytest.raises(ValueError, match="needs a database"):
        build_training_data(cfg, ModelSpec(input_size=32), DataContext(any_db_settings))
