"""Upsert rules: image list changes, soft delete and revival, full sync, chunking, DB refusals."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import (
    CatalogRow,
    DeleteOutcome,
    ImageRef,
    RowError,
    delete_item,
    import_catalog,
    import_rows,
)
from core.config import Settings
from core.db import Item, session_scope
from core.media import MediaStore, StoredImage
from tests.fixtures.catalog import active_keys, snapshot, write_csv, write_image
from tests.fixtures.images import encode, gradient_image


@pytest.fixture
def store(any_db_settings: Settings) -> MediaStore:
    return MediaStore.from_settings(any_db_settings, fsync=False)


def _csv(path: Path, rows: list[list[str]]) -> Path:
    return write_csv(path, ["external_id", "title", "images"], rows)


def _image_ids(state: dict, external_id: str) -> dict[str, int]:
    return {image["key"]: image["id"] for image in state[external_id]["images"]}


def test_image_list_changes(tmp_path: Path, sessions: sessionmaker[Session], store: MediaStore) -> None:
    keys = {n: write_image(tmp_path / f"{n}.png", seed) for seed, n in enumerate("abcd")}
    path = tmp_path / "c.csv"
    _csv(path, [["x", "X", "a.png|b.png"]])
    import_catalog(path, sessions=sessions, store=store)
    first = snapshot(sessions)
    ids = _image_ids(first, "x")

    _csv(path, [["x", "X", "c.png|b.png|c.png"]])  # a dropped, c added (listed twice), b moves
    report = import_catalog(path, sessions=sessions, store=store)
    second = snapshot(sessions)
    assert (report.updated, report.unchanged) == (1, 0)
    assert active_keys(second, "x") == [keys["c"], keys["b"]]
    removed = [i for i in second["x"]["images"] if i["status"] == "removed"]
    assert [(i["id"], i["key"]) for i in removed] == [(ids[keys["a"]], keys["a"])]
    assert report.new_image_ids == [_image_ids(second, "x")[keys["c"]]]
    assert second["x"]["updated_at"] > first["x"]["updated_at"]

    _csv(path, [["x", "X", "a.png|d.png"]])  # a comes back as the same row; b, c removed
    report = import_catalog(path, sessions=sessions, store=store)
    third = snapshot(sessions)
    assert active_keys(third, "x") == [keys["a"], keys["d"]]
    assert _image_ids(third, "x")[keys["a"]] == ids[keys["a"]]
    assert sorted(report.new_image_ids) == sorted([ids[keys["a"]], _image_ids(third, "x")[keys["d"]]])
    assert {i["key"] for i in third["x"]["images"] if i["status"] == "removed"} == {keys["b"], keys["c"]}


def test_soft_delete_and_revival_by_import(tmp_path: Path, sessions: sessionmaker[Session],
                                           store: MediaStore) -> None:
    write_image(tmp_path / "a.png", 1)
    path = _csv(tmp_path / "c.csv", [["x", "X", "a.png"], ["y", "Y", "a.png"]])
    import_catalog(path, sessions=sessions, store=store)
    with session_scope(sessions) as session:
        assert delete_item(session, "x") is DeleteOutcome.DELETED
        assert delete_item(session, "x") is DeleteOutcome.ALREADY_DELETED
        assert delete_item(session, "nope") is DeleteOutcome.NOT_FOUND
    deleted = snapshot(sessions)
    assert deleted["x"]["status"] == "deleted"
    assert deleted["y"]["status"] == "active"

    report = import_catalog(path, sessions=sessions, store=store)
    revived = snapshot(sessions)
    assert (report.updated, report.unchanged, report.new_image_ids) == (1, 1, [])
    assert revived["x"]["status"] == "active"
    assert revived["x"]["id"] == deleted["x"]["id"]
    assert revived["x"]["updated_at"] > deleted["x"]["updated_at"]


def test_delete_missing_soft_deletes_what_the_source_no_longer_lists(
    tmp_path: Path, sessions: sessionmaker[Session], store: MediaStore
) -> None:
    write_image(tmp_path / "a.png", 1)
    path = _csv(tmp_path / "c.csv", [["x", "X", "a.png"], ["y", "Y", "a.png"], ["z", "Z", "a.png"]])
    import_catalog(path, sessions=sessions, store=store)
    _csv(path, [["x", "X", "a.png"], ["z", "Z", "missing.png"]])  # z rejected: must not be deleted
    report = import_catalog(path, sessions=sessions, store=store, delete_missing=True)
    assert (report.unchanged, report.deleted, len(report.errors)) == (1, 1, 1)
    assert {k: v["status"] for k, v in snapshot(sessions).items()} == {
        "x": "active", "y": "deleted", "z": "active"}

    path.write_text("external_id,title,images\nx,X,a.png\n,nameless,a.png\n", encoding="utf-8")
    report = import_catalog(path, sessions=sessions, store=store, delete_missing=True)
    assert report.deleted == 0
    assert report.warnings and "delete_missing skipped" in report.warnings[0]
    assert snapshot(sessions)["z"]["status"] == "active"


def _rows(n: int, data: bytes, *, duplicate_of: int | None = None) -> list[CatalogRow | RowError]:
    rows: list[CatalogRow | RowError] = [
        CatalogRow(line=i + 1, external_id=f"item-{i}", title=f"Item {i}", category="c",
                   images=[ImageRef(uri=f"mem:{i}", data=data)])
        for i in range(n)
    ]
    if duplicate_of is not None:
        rows.append(CatalogRow(line=n + 1, external_id=f"item-{duplicate_of}", title="dup",
                               images=[ImageRef(uri="mem:dup", data=data)]))
    return rows


def test_chunks_progress_and_duplicates_across_chunks(sessions: sessionmaker[Session], store: MediaStore) -> None:
    data = encode(gradient_image(8, 8), "PNG")
    seen: list[int] = []
    report = import_rows(_rows(7, data, duplicate_of=1), sessions=sessions, store=store,
                         chunk_size=3, progress=seen.append)
    assert report.created == 7
    assert sum(seen) == 8 and len(seen) >= 3
    assert [(e.line, e.external_id) for e in report.errors] == [(8, "item-1")]
    state = snapshot(sessions)
    assert state["item-1"]["title"] == "Item 1"  # the first occurrence won
    assert len({image["key"] for item in state.values() for image in item["images"]}) == 1
    assert len(report.new_image_ids) == 7


class _RacingStore(MediaStore):
    """A real store that, while the import stores images, lets another writer create an item."""

    def __init__(self, base: MediaStore, sessions: sessionmaker[Session], external_id: str) -> None:
        super().__init__(base.root, max_pixels=base.max_pixels, max_bytes=base.max_bytes)
        self._sessions, self._external_id = sessions, external_id
        self._lock = threading.Lock()  # the import stores images from several threads

    def put_bytes(self, data: bytes) -> StoredImage:
        with self._lock:
            if self._external_id:
                with session_scope(self._sessions) as other:
                    other.add(Item(external_id=self._external_id, title="got there first"))
                self._external_id = ""
        return super().put_bytes(data)


def test_a_row_the_database_refuses_does_not_lose_the_others(
    sessions: sessionmaker[Session], store: MediaStore
) -> None:
    data = encode(gradient_image(8, 8), "PNG")
    racing = _RacingStore(store, sessions, external_id="item-2")
    report = import_rows(_rows(5, data), sessions=sessions, store=racing, chunk_size=10)
    assert report.created == 4
    assert [(e.line, e.external_id) for e in report.errors] == [(3, "item-2")]
    assert "the database refused the row" in report.errors[0].reason
    state = snapshot(sessions)
    assert set(state) == {f"item-{i}" for i in range(5)}
    assert state["item-2"]["title"] == "got there first"
    assert all(len(state[f"item-{i}"]["images"]) == 1 for i in (0, 1, 3, 4))
    assert len(report.new_image_ids) == 4
