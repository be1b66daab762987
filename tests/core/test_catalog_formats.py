"""JSONL and folder imports, format detection, and image-reference rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CatalogFormatError, CatalogRow, ImportFormat, import_catalog, open_source
from core.catalog.validate import RowInvalid, resolve_image_ref
from core.config import Settings
from core.media import MediaStore
from tests.fixtures.catalog import active_keys, snapshot, write_bad_images, write_image


@pytest.fixture
def store(any_db_settings: Settings) -> MediaStore:
    return MediaStore.from_settings(any_db_settings.replace(max_image_pixels=100_000))


def test_jsonl_import(tmp_path: Path, sessions: sessionmaker[Session], store: MediaStore) -> None:
    keys = {n: write_image(tmp_path / "pics" / f"{n}.png", seed) for seed, n in enumerate("ab")}
    bad = write_bad_images(tmp_path / "bad")
    lines = [
        json.dumps({"external_id": "j-1", "title": "Жакет 🧥", "category": "coat", "group": "style-9",
                    "attributes": {"size": ["S", "M"]}, "images": ["pics/a.png", "pics/b.png"],
                    "brand": {"name": "Ünïcode"}}, ensure_ascii=False),      # 1
        "",                                                                   # 2 blank
        '{"external_id": "j-2", "images": ["pics/a.png"]',                   # 3 invalid JSON
        json.dumps(["not", "an", "object"]),                                  # 4
        json.dumps({"external_id": 42, "images": [str(tmp_path / "pics" / "b.png")]}),  # 5
        json.dumps({"external_id": "j-3", "images": "pics/a.png"}),          # 6 images not a list
        json.dumps({"external_id": "j-4", "images": ["pics/a.png"], "attributes": {"x": float("nan")}}),  # 7
        json.dumps({"external_id": "j-5", "images": [str(bad["bomb"])]}),    # 8
        json.dumps({"external_id": "j-1", "images": ["pics/a.png"]}),        # 9 duplicate
        json.dumps({"external_id": "j-6", "title": 7, "images": ["pics/a.png"]}),  # 10
        json.dumps({"external_id": 1.5, "images": ["pics/a.png"]}),          # 11
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_catalog(path, sessions=sessions, store=store)
    assert [(e.line, e.external_id) for e in report.errors] == [
        (3, None), (4, None), (6, "j-3"), (7, "j-4"), (8, "j-5"), (9, "j-1"), (10, "j-6"), (11, None)]
    reasons = [e.reason for e in report.errors]
    assert "invalid JSON" in reasons[0]
    assert "expected a JSON object" in reasons[1]
    assert "images must be a list" in reasons[2]
    assert "plain JSON" in reasons[3]
    assert "decompression bomb" in reasons[4]
    assert "title must be a string" in reasons[6]
    assert "external_id must be a string or an integer, got a number" in reasons[7]
    state = snapshot(sessions)
    assert set(state) == {"j-1", "42"}
    assert state["j-1"]["title"] == "Жакет 🧥"
    assert state["j-1"]["group"] == "style-9"
    assert state["j-1"]["attributes"] == {"size": ["S", "M"], "brand": {"name": "Ünïcode"}}
    assert active_keys(state, "j-1") == [keys["a"], keys["b"]]
    assert active_keys(state, "42") == [keys["b"]]

    again = import_catalog(path, sessions=sessions, store=store)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)
    assert snapshot(sessions) == state


def test_folder_import(tmp_path: Path, sessions: sessionmaker[Session], store: MediaStore) -> None:
    root = tmp_path / "photos"
    keys = {
        "dress/a.png": write_image(root / "dress" / "a.png", 1),
        "dress/b.jpg": write_image(root / "dress" / "b.jpg", 2, fmt="JPEG"),
        "shirt/a.png": write_image(root / "shirt" / "a.png", 3),
        "top.png": write_image(root / "top.png", 4),
        "train/shoes/Ünï 1.png": write_image(root / "train" / "shoes" / "Ünï 1.png", 5),
    }
    write_image(root / ".hidden.png", 6)
    write_image(root / "dress" / ".thumbs" / "a.png", 7)
    bad = write_bad_images(root / "shirt")
    report = import_catalog(root, sessions=sessions, store=store)

    # sorted order: dress/a, dress/b, shirt/a, shirt/big, shirt/bomb, shirt/corrupt, shirt/notes, top, train/...
    assert [(e.line, e.external_id) for e in report.errors] == [
        (4, "shirt-big"), (5, "shirt-bomb"), (6, "shirt-corrupt"), (7, "shirt-notes")]
    assert "not an image" in report.errors[3].reason
    assert bad["text"].name in report.errors[3].reason
    state = snapshot(sessions)
    assert {k: (v["category"], v["title"]) for k, v in state.items()} == {
        "dress-a": ("dress", "a"), "dress-b": ("dress", "b"), "shirt-a": ("shirt", "a"),
        "top": (None, "top"), "train-shoes-Ünï 1": ("shoes", "Ünï 1"),
    }
    assert active_keys(state, "dress-b") == [keys["dress/b.jpg"]]
    assert state["dress-b"]["images"][0]["source_uri"] == "dress/b.jpg"
    assert report.created == 5
    assert import_catalog(root, sessions=sessions, store=store, fmt=ImportFormat.FOLDER).unchanged == 5


def test_format_detection_and_missing_sources(tmp_path: Path) -> None:
    (tmp_path / "a.CSV").write_text("external_id\n", encoding="utf-8")
    (tmp_path / "b.ndjson").write_text("", encoding="utf-8")
    (tmp_path / "c.xml").write_text("", encoding="utf-8")
    assert ImportFormat.detect(tmp_path / "a.CSV") is ImportFormat.CSV
    assert ImportFormat.detect(tmp_path / "b.ndjson") is ImportFormat.JSONL
    assert ImportFormat.detect(tmp_path) is ImportFormat.FOLDER
    with pytest.raises(CatalogFormatError, match="cannot tell the format"):
        open_source(tmp_path / "c.xml")
    with pytest.raises(CatalogFormatError, match="does not exist"):
        open_source(tmp_path / "nope.csv")
    with pytest.raises(CatalogFormatError, match="is a directory"):
        open_source(tmp_path, ImportFormat.CSV)
    assert list(open_source(tmp_path / "b.ndjson").rows) == []


def test_csv_total_hint_and_multiline_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('external_id,title,images\na,"one\ntwo\nthree",x.png\nb,B,y.png\n', encoding="utf-8")
    source = open_source(path)
    rows = list(source.rows)
    assert [(r.line, r.external_id) for r in rows] == [(2, "a"), (5, "b")]
    assert isinstance(rows[0], CatalogRow) and rows[0].title == "one\ntwo\nthree"
    assert source.total_hint == 4


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("img/a.png", "/base/img/a.png"),
        ("/abs/a.png", "/abs/a.png"),
        ("file:///abs/my%20photo.png", "/abs/my photo.png"),
        ("file://localhost/abs/a.png", "/abs/a.png"),
        ("file:rel/a.png", "/base/rel/a.png"),
    ],
)
def test_image_references_resolve(ref: str, expected: str) -> None:
    resolved = resolve_image_ref(ref, Path("/base"))
    assert (resolved.uri, str(resolved.path)) == (ref, expected)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("https://cdn.example.com/a.jpg", "never download"),
        ("HTTP://cdn.example.com/a.jpg", "never download"),
        ("ftp://host/a.jpg", "unsupported URI scheme"),
        ("file://otherhost/a.jpg", "this machine"),
        ("   ", "non-empty"),
    ],
)
def test_image_references_refused(ref: str, message: str) -> None:
    with pytest.raises(RowInvalid, match=message):
        resolve_image_ref(ref, Path("/base"))
