"""Zip archives of a catalog and its images: what is refused before anything is unpacked."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from core.catalog import CatalogFormatError, ImportFormat
from core.catalog.archives import check_archive, extract_archive


def _zip(tmp_path: Path, members: dict[str, bytes], name: str = "up.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def test_a_catalog_and_its_images_unpack_below_the_folder_given(tmp_path: Path) -> None:
    path = _zip(tmp_path, {"shop.jsonl": b'{"external_id": "a", "images": ["img/a.png"]}\n', "img/a.png": b"png"})
    layout = check_archive(path)
    assert (layout.catalog, layout.format) == ("shop.jsonl", ImportFormat.JSONL)
    dest = tmp_path / "out"
    dest.mkdir()
    catalog, fmt = extract_archive(path, dest)
    assert catalog == dest.resolve() / "shop.jsonl" and fmt is ImportFormat.JSONL
    assert (dest / "img" / "a.png").read_bytes() == b"png"


@pytest.mark.parametrize("members, message", [
    ({"img/a.png": b"x"}, "exactly one catalog file .* found none"),
    ({"a.csv": b"x", "b.jsonl": b"y"}, "exactly one catalog file .* found a.csv, b.jsonl"),
    ({"sub/a.csv": b"x"}, "found none"),  # the catalog sits at the top level
    ({"a.csv": b"x", "../evil.png": b"y"}, "'../evil.png' is not a plain relative path"),
    ({"a.csv": b"x", "/etc/evil": b"y"}, "'/etc/evil' is not a plain relative path"),
    ({"a.csv": b"x", "c:/evil": b"y"}, "'c:/evil' is not a plain relative path"),
    ({"a.csv": b"x", "img\\evil.png": b"y"}, "is not a plain relative path"),
])
def test_a_bad_layout_is_refused_with_its_reason(tmp_path: Path, members: dict[str, bytes], message: str) -> None:
    with pytest.raises(CatalogFormatError, match=message):
        check_archive(_zip(tmp_path, members))


def test_not_a_zip_and_a_zip_that_claims_too_much_are_refused(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "x.zip").write_bytes(b"external_id\n1\n")
    with pytest.raises(CatalogFormatError, match="not a readable zip archive"):
        check_archive(tmp_path / "x.zip")
    monkeypatch.setattr("core.catalog.archives.MAX_UNPACKED_BYTES", 10)
    with pytest.raises(CatalogFormatError, match="unpacks to 11 bytes, the limit is 10"):
        check_archive(_zip(tmp_path, {"a.csv": b"x" * 11}))


def test_a_member_named_twice_is_refused_when_unpacked(tmp_path: Path) -> None:
    path = tmp_path / "twice.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", b"x")
        archive.writestr("img/x.png", b"first")
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("img/x.png", b"second")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CatalogFormatError, match="'img/x.png' collides with another"):
        extract_archive(path, dest)
