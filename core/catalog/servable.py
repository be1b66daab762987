"""What a search result shows of one image and its item, and when an image is servable.

One definition shared by the searcher's per-request metadata query
(service/searcher/metadata.py) and the metadata table published with each index
version (core/index/metadata_table.py), so both read the same columns the same way
and a result built from either serialises to the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, Text, cast, select

from core.db import ImageStatus, Item, ItemImage, ItemStatus

BUILD_CHUNK = 10_000
"""Image ids per query when reading many (a table build): bounds one expanding ``IN``."""


class ImageMeta(NamedTuple):
    """What a search answer shows of one image and its item (immutable)."""

    item_id: int
    external_id: str
    title: str
    category: str | None
    group_key: str | None
    attributes_json: str | None
    """The item's attributes as JSON text, as stored."""
    image_id: int
    media_key: str

    @property
    def attributes(self) -> dict[str, Any]:
        """The item's attributes (decoded on each access: an answer reads each once)."""
        return (json.loads(self.attributes_json) or {}) if self.attributes_json else {}


META_COLUMNS = (Item.id, Item.external_id, Item.title, Item.category, Item.group_key, cast(Item.attributes, Text),
                ItemImage.id, ItemImage.media_key)
"""The columns of an :class:`ImageMeta`, in its field order (``attributes`` as its stored JSON text)."""


def servable_clauses() -> tuple[ColumnElement[bool], ...]:
    """An image is servable while it and its item are active (deletions apply through this)."""
    return (ItemImage.status == ImageStatus.ACTIVE, Item.status == ItemStatus.ACTIVE)


def meta_of_row(row: Sequence[Any]) -> ImageMeta:
    """An :class:`ImageMeta` from a row of :data:`META_COLUMNS`."""
    return ImageMeta(row[0], row[1], row[2] or "", row[3], row[4], row[5], row[6], row[7])


def servable_metadata(conn: Connection, image_ids: Sequence[int]) -> Iterator[ImageMeta]:
    """The metadata of the servable images among ``image_ids`` (any order; chunked for large lists)."""
    base = select(*META_COLUMNS).join(Item, Item.id == ItemImage.item_id).where(*servable_clauses())
    ids = [int(i) for i in image_ids]
    for start in range(0, len(ids), BUILD_CHUNK):
        for row in conn.execute(base.where(ItemImage.id.in_(ids[start:start + BUILD_CHUNK]))):
            yield meta_of_row(row)
