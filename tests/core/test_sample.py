"""The Fashion-MNIST sample catalog, checked against a plain reading of the idx files."""

from __future__ import annotations

import gzip
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CatalogFormatError, Split, fashion_mnist_source, import_fashion_mnist
from core.catalog.sample import CLASSES, balanced_subset, png_bytes, read_idx
from core.config import Settings
from core.media import MediaStore
from tests.fixtures.catalog import snapshot


def _reference(dataset_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force idx reading: fixed 16/8-byte headers as documented for MNIST."""
    images = np.frombuffer(gzip.open(dataset_dir / f"{prefix}-images-idx3-ubyte.gz").read()[16:], np.uint8)
    labels = np.frombuffer(gzip.open(dataset_dir / f"{prefix}-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    return images.reshape(-1, 28, 28), labels


def test_balanced_subset_matches_a_round_robin_loop() -> None:
    labels = np.random.default_rng(0).integers(0, 4, 200)
    labels[labels == 3] = 2  # an unbalanced mix: class 2 is twice as common
    for limit in (1, 7, 50, 130, 199):
        queues = {c: [i for i in range(len(labels)) if labels[i] == c] for c in sorted(set(labels.tolist()))}
        picked: list[int] = []
        while len(picked) < limit:
            for c in queues:
                if queues[c] and len(picked) < limit:
                    picked.append(queues[c].pop(0))
        assert balanced_subset(labels, limit).tolist() == sorted(picked)
    assert balanced_subset(labels, None).tolist() == list(range(200))


def test_source_rows_match_the_dataset(fashion_mnist_dir: Path) -> None:
    images, labels = _reference(fashion_mnist_dir, "t10k")
    rows = list(fashion_mnist_source(fashion_mnist_dir, split=Split.TEST, limit=25).rows)
    assert len(rows) == 25
    counts = Counter(row.category for row in rows)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    assert set(counts) == {slug for slug, _ in CLASSES}
    for row in rows:
        index = row.attributes["index"]
        assert row.external_id == f"fmnist-test-{index:05d}"
        assert row.attributes == {"split": "test", "label": int(labels[index]),
                                  "label_name": CLASSES[labels[index]][1], "index": index}
        assert row.category == CLASSES[labels[index]][0]
        assert row.title == f"{CLASSES[labels[index]][1]} #{index}"
    assert [row.attributes["index"] for row in rows] == sorted(row.attributes["index"] for row in rows)


def test_import_sample_is_idempotent_and_pixels_survive(
    fashion_mnist_dir: Path, any_db_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store = MediaStore.from_settings(any_db_settings)
    images, labels = _reference(fashion_mnist_dir, "train")
    report = import_fashion_mnist(sessions=sessions, store=store, dataset_dir=fashion_mnist_dir, limit=20)
    assert (report.created, report.errors, len(report.new_image_ids)) == (20, [], 20)
    state = snapshot(sessions)
    assert sorted(state) == [f"fmnist-train-{i:05d}" for i in balanced_subset(labels, 20)]
    for external_id, item in state.items():
        index = int(external_id.rsplit("-", 1)[1])
        (image,) = item["images"]
        assert image["size"] == (28, 28)
        opened = np.asarray(store.open(image["key"]))
        assert opened.shape == (28, 28, 3)
        assert np.array_equal(opened[:, :, 0], images[index])
        assert item["category"] == CLASSES[labels[index]][0]

    again = import_fashion_mnist(sessions=sessions, store=store, dataset_dir=fashion_mnist_dir, limit=20)
    assert (again.created, again.updated, again.unchanged, again.new_image_ids) == (0, 0, 20, [])
    assert snapshot(sessions) == state


def test_all_split_takes_from_both(fashion_mnist_dir: Path) -> None:
    source = fashion_mnist_source(fashion_mnist_dir, split=Split.ALL)
    assert source.total_hint == 70_000
    ids = [row.external_id for row in fashion_mnist_source(fashion_mnist_dir, split="all", limit=10).rows]  # type: ignore[arg-type]
    assert len(ids) == 10 and all(i.startswith("fmnist-train-") for i in ids)


def test_broken_dataset_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CatalogFormatError, match="not found"):
        fashion_mnist_source(tmp_path)
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3]))
    with pytest.raises(CatalogFormatError, match="header says"):
        read_idx(bad)
    bad.write_bytes(b"plain text")
    with pytest.raises(CatalogFormatError, match="gzip"):
        read_idx(bad)


def test_png_bytes_decode_to_the_same_pixels_with_pillow() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (28, 31), dtype=np.uint8)
    data = png_bytes(pixels)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", "L", (31, 28))
        assert np.array_equal(np.asarray(image), pixels)
    assert png_bytes(pixels.copy()) == data
