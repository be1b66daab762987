"""The metadata table of an index version: what SQL said at build, row by row, checksummed, refused when broken."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from core.atomic_files import sha256_file
from core.catalog.servable import servable_metadata
from core.db import ImageStatus, Item, ItemImage, ItemStatus
from core.index import IndexManifest, IndexMismatchError, Metric, build_index
from core.index.manifest import METADATA_FILE
from core.index.metadata_table import MetadataTable, add_metadata_table


def _catalog(engine: Engine) -> list[int]:
    """Six items (one deleted, one with a removed image, odd titles and attributes), their image ids."""
    with Session(engine) as s, s.begin():
        items = [Item(external_id=f"x-{i}", title=["", "Plain", "Ünïcode — \"quoted\"", "tab\tnew\nline", "t", "t"][i],
                      category=None if i == 1 else f"c{i}", group_key=None if i % 2 else f"g{i}",
                      attributes={"color": "rød", "size": i, "nested": {"b": [1, 2], "a": None}} if i else {},
                      status=ItemStatus.DELETED if i == 4 else ItemStatus.ACTIVE) for i in range(6)]
        s.add_all(items)
        s.flush()
        images = [ItemImage(item_id=item.id, position=p, media_key=f"{item.id:02d}{p:062x}", width=8, height=8,
                            status=ImageStatus.REMOVED if (n == 5 and p == 1) else ImageStatus.ACTIVE)
                  for n, item in enumerate(items) for p in range(2)]
        s.add_all(images)
        s.flush()
        return [img.id for img in images]


def test_table_holds_what_sql_serves_row_by_row(tmp_path: Path, engine: Engine) -> None:
    image_ids = _catalog(engine)
    ids = np.asarray(sorted(image_ids), dtype=np.int64)[::-1].copy()  # row order need not be id order
    directory = tmp_path / "v1"
    vectors = np.random.default_rng(0).standard_normal((len(ids), 4)).astype(np.float32)
    build_index(directory, ids, vectors, index_version="v1", model_version="m1", metric=Metric.EUCLIDEAN,
                n_trees=2, n_jobs=1)
    with engine.connect() as conn:
        manifest = add_metadata_table(directory, conn)
        expected = {m.image_id: m for m in servable_metadata(conn, ids.tolist())}
    assert IndexManifest.read(directory) == manifest
    assert manifest.metadata_checksum == sha256_file(directory / METADATA_FILE)
    table = MetadataTable.open(directory, manifest, verify_checksum=True)
    assert table is not None and table.count == len(ids)
    assert len(expected) == len(ids) - 3  # the deleted item's two images, the removed one
    for row, image_id in enumerate(ids.tolist()):
        meta = table.meta(row, image_id)
        assert meta == expected.get(image_id)
        if meta is not None:
            assert meta.attributes == expected[image_id].attributes


def test_broken_or_absent_tables_are_refused_or_none(tmp_path: Path, engine: Engine) -> None:
    ids = np.asarray(sorted(_catalog(engine)), dtype=np.int64)
    directory = tmp_path / "v1"
    manifest = build_index(directory, ids, np.eye(len(ids), 4, dtype=np.float32), index_version="v1",
                           model_version="m1", metric=Metric.EUCLIDEAN, n_trees=2, n_jobs=1)
    assert MetadataTable.open(directory, manifest) is None  # a version built before tables
    with engine.connect() as conn:
        manifest = add_metadata_table(directory, conn)
    path = directory / METADATA_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(IndexMismatchError, match="truncated"):
        MetadataTable.open(directory, manifest)
    with pytest.raises(IndexMismatchError, match="checksum"):
        MetadataTable.open(directory, manifest, verify_checksum=True)
    path.write_bytes(data)
    with pytest.raises(IndexMismatchError, match="rows"):
        MetadataTable.open(directory, replace(manifest, count=manifest.count + 1))
    path.unlink()
    with pytest.raises(FileNotFoundError):
        MetadataTable.open(directory, manifest)
