"""Listing (filters, pagination), lookup and soft delete, as the API will call them."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import (
    CatalogRow,
    DeleteOutcome,
    ImageRef,
    delete_items,
    get_item,
    import_rows,
    list_items,
)
from core.config import Settings
from core.db import ItemStatus, session_scope
from core.media import MediaStore
from tests.fixtures.images import encode, gradient_image


@pytest.fixture
def catalog(any_db_settings: Settings, sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    """23 items over three categories; returns (external id, category) in import order."""
    store = MediaStore.from_settings(any_db_settings)
    items = [(f"sku-{i:02d}", ["dress", "shirt", "bag"][i % 3]) for i in range(23)]
    rows = [CatalogRow(line=i + 1, external_id=ext, title=f"T{i}", category=cat,
                       images=[ImageRef(uri=f"m:{i}", data=encode(gradient_image(4, 4, noise=True, seed=i), "PNG"))])
            for i, (ext, cat) in enumerate(items)]
    assert import_rows(rows, sessions=sessions, store=store).created == 23
    return items


def test_list_filters_and_paginates(sessions: sessionmaker[Session], catalog: list[tuple[str, str]]) -> None:
    with session_scope(sessions) as session:
        assert delete_items(session, ["sku-00", "sku-03", "nope"]) == {
            "sku-00": DeleteOutcome.DELETED, "sku-03": DeleteOutcome.DELETED, "nope": DeleteOutcome.NOT_FOUND}
    expected_active_dresses = [ext for ext, cat in catalog if cat == "dress" and ext not in {"sku-00", "sku-03"}]
    with session_scope(sessions) as session:
        pages, offset = [], 0
        while True:
            page = list_items(session, category="dress", limit=2, offset=offset)
            pages.append([item.external_id for item in page.items])
            assert page.total == len(expected_active_dresses)
            if not page.has_more:
                break
            offset += 2
        assert [ext for page_ids in pages for ext in page_ids] == expected_active_dresses
        assert all(len(p) == 2 for p in pages[:-1])

        deleted = list_items(session, status=ItemStatus.DELETED)
        assert [item.external_id for item in deleted.items] == ["sku-00", "sku-03"]
        everything = list_items(session, status=None, limit=1000)
        assert [item.external_id for item in everything.items] == [ext for ext, _ in catalog]
        assert all(len(item.images) == 1 for item in everything.items)
        with pytest.raises(ValueError, match="limit must be between"):
            list_items(session, limit=0)


def test_get_item(sessions: sessionmaker[Session], catalog: list[tuple[str, str]]) -> None:
    with session_scope(sessions) as session:
        item = get_item(session, "sku-04")
        assert item is not None and (item.title, item.category) == ("T4", "shirt")
        assert [image.source_uri for image in item.images] == ["m:4"]
        assert get_item(session, "missing") is None
        delete_items(session, ["sku-04"])
    with session_scope(sessions) as session:
        assert get_item(session, "sku-04", include_deleted=False) is None
        found = get_item(session, "sku-04")
        assert found is not None and found.status is ItemStatus.DELETED
