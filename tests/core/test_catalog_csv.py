"""CSV import: good rows kept, every bad row reported with its line; re-import is a no-op."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CatalogFormatError, ImportFormat, import_catalog
from core.config import Settings
from core.media import MediaStore
from tests.fixtures.catalog import active_keys, snapshot, write_bad_images, write_csv, write_image

HEADER = ["external_id", "title", "category", "group", "attributes", "images", "color"]


@pytest.fixture
def store(any_db_settings: Settings) -> MediaStore:
    return MediaStore.from_settings(any_db_settings.replace(max_image_pixels=100_000))


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, object]:
    """A CSV with good and bad rows, next to its images."""
    root = tmp_path / "shop"
    keys = {name: write_image(root / "img" / f"{name}.png", seed) for seed, name in enumerate("abcd")}
    write_bad_images(root / "bad")
    absolute_uri = (root / "img" / "c.png").as_uri()
    rows = [
        ["sku-1", "Röck — ドレス 👗", "dress", "g1", '{"size": "M"}', "img/a.png|img/b.png", "red"],  # 2
        ["sku-2", "Shirt", "shirt", "", "", "img/c.png", ""],                                     # 3
        ["sku-3", "Missing image", "shirt", "", "", "img/nope.png", ""],                          # 4
        ["sku-4", "Corrupt", "shirt", "", "", "bad/corrupt.jpg", ""],                             # 5
        ["sku-5", "Text", "shirt", "", "", "bad/notes.txt", ""],                                  # 6
        ["sku-6", "Bomb", "shirt", "", "", "bad/bomb.png", ""],                                   # 7
        ["sku-7", "Too many pixels", "shirt", "", "", "bad/big.png", ""],                         # 8
        ["sku-1", "Duplicate", "dress", "", "", "img/d.png", ""],                                 # 9
        ["", "No id", "shirt", "", "", "img/a.png", ""],                                          # 10
        ["sku-9", "Web", "shirt", "", "", "https://example.com/x.jpg", ""],                      # 11
        ["sku-10", "Bad attributes", "shirt", "", "{not json", "img/a.png", ""],                  # 12
        ["sku-11", "Conflict", "shirt", "", '{"color": "blue"}', "img/a.png", "red"],             # 13
        ["sku-12", "Two\nlines", "shoes", "", "", absolute_uri, "green"],                         # 14-15
        ["sku-13", "", "", "", "", "", ""],                                                       # 16
    ]
    path = write_csv(root / "catalog.csv", HEADER, rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("sku-14,too,few\n")                                                            # 17
        fh.write(f"sku-15,,,,,{root / 'img' / 'd.png'},\n")                                     # 18
    return {"path": path, "keys": keys, "root": root}


EXPECTED_ERRORS = [
    (4, "sku-3", "file not found"),
    (5, "sku-4", "truncated or corrupt"),
    (6, "sku-5", "not an image"),
    (7, "sku-6", "1600000000 pixels"),
    (8, "sku-7", "120,000 pixels"),
    (9, "sku-1", "duplicate external_id: line 2"),
    (10, None, "missing external_id"),
    (11, "sku-9", "never download"),
    (12, "sku-10", "attributes is not valid JSON"),
    (13, "sku-11", "'color' is given both"),
    (16, "sku-13", "no images"),
    (17, "sku-14", "3 fields, but the header has 7"),
]


def _check_errors(report, expected=EXPECTED_ERRORS) -> None:  # type: ignore[no-untyped-def]
    got = [(e.line, e.external_id, e.reason) for e in report.errors]
    assert [(line, ext) for line, ext, _ in got] == [(line, ext) for line, ext, _ in expected]
    for (_, _, reason), (_, _, fragment) in zip(got, expected):
        assert fragment in reason


def test_good_rows_are_kept_and_bad_rows_reported(sessions: sessionmaker[Session], store: MediaStore,
                                                  shop: dict) -> None:
    report = import_catalog(shop["path"], sessions=sessions, store=store)
    _check_errors(report)
    assert (report.created, report.updated, report.unchanged) == (4, 0, 0)
    state = snapshot(sessions)
    assert set(state) == {"sku-1", "sku-2", "sku-12", "sku-15"}
    keys = shop["keys"]
    one = state["sku-1"]
    assert one["title"] == "Röck — ドレス 👗"
    assert (one["category"], one["group"], one["status"]) == ("dress", "g1", "active")
    assert one["attributes"] == {"size": "M", "color": "red"}
    assert [(i["key"], i["position"], i["source_uri"]) for i in one["images"]] == [
        (keys["a"], 0, "img/a.png"), (keys["b"], 1, "img/b.png")]
    assert state["sku-2"]["attributes"] == {}  # empty extra cells are left out
    assert state["sku-2"]["group"] is None
    assert state["sku-12"]["title"] == "Two\nlines"
    assert state["sku-12"]["attributes"] == {"color": "green"}
    assert active_keys(state, "sku-12") == [keys["c"]]
    all_image_ids = sorted(i["id"] for item in state.values() for i in item["images"])
    assert report.new_image_ids == all_image_ids
    assert active_keys(state, "sku-15") == [keys["d"]]
    for name, key in keys.items():
        assert store.path(key).read_bytes() == (shop["root"] / "img" / f"{name}.png").read_bytes()


def test_second_import_changes_nothing(sessions: sessionmaker[Session], store: MediaStore, shop: dict) -> None:
    import_catalog(shop["path"], sessions=sessions, store=store)
    before = snapshot(sessions)
    report = import_catalog(shop["path"], sessions=sessions, store=store, fmt=ImportFormat.CSV)
    assert (report.created, report.updated, report.unchanged) == (0, 0, 4)
    assert report.new_image_ids == []
    _check_errors(report)
    assert snapshot(sessions) == before  # same ids, same updated_at everywhere


def test_changed_rows_are_updated_and_only_they(sessions: sessionmaker[Session], store: MediaStore,
                                                tmp_path: Path) -> None:
    keys = {name: write_image(tmp_path / f"{name}.png", seed) for seed, name in enumerate("abc")}
    path = tmp_path / "c.csv"
    write_csv(path, ["external_id", "title", "images"], [["x", "X", "a.png"], ["y", "Y", "b.png"]])
    import_catalog(path, sessions=sessions, store=store)
    before = snapshot(sessions)
    write_csv(path, ["external_id", "title", "images"], [["x", "X2", "a.png"], ["y", "Y", "b.png"]])
    report = import_catalog(path, sessions=sessions, store=store)
    assert (report.created, report.updated, report.unchanged, report.new_image_ids) == (0, 1, 1, [])
    after = snapshot(sessions)
    assert after["y"] == before["y"]
    assert after["x"]["title"] == "X2"
    assert after["x"]["updated_at"] > before["x"]["updated_at"]
    assert after["x"]["created_at"] == before["x"]["created_at"]
    assert after["x"]["images"] == before["x"]["images"]
    assert active_keys(after, "x") == [keys["a"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("title,images\nx,a.png\n", "no external_id column"),
        ("external_id,title,title\nx,a,b\n", "appears twice"),
    ],
)
def test_unreadable_files_raise_before_any_row(tmp_path: Path, sessions: sessionmaker[Session],
                                               store: MediaStore, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogFormatError, match=message):
        import_catalog(path, sessions=sessions, store=store)
    assert snapshot(sessions) == {}


def test_bom_invalid_utf8_and_blank_lines(tmp_path: Path, sessions: sessionmaker[Session], store: MediaStore) -> None:
    write_image(tmp_path / "a.png", 1)
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffexternal_id,title,images\n".encode() + b"\n" + b"ok,Caf\xc3\xa9,a.png\n"
                     + b"bad,Caf\xe9,a.png\n")
    report = import_catalog(path, sessions=sessions, store=store)
    assert report.created == 1
    assert [(e.line, e.external_id, e.reason) for e in report.errors] == [(4, "bad", "not valid UTF-8")]
    assert snapshot(sessions)["ok"]["title"] == "Café"
