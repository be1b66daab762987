"""Training images from the SQL catalog, labelled by item, group or category."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import ImageStatus, Item, ItemImage, ItemStatus, session_scope
from core.media import MediaStore
from trainer.config import LabelKind
from trainer.data.images import MediaList


@dataclass(frozen=True)
class CatalogImage:
    image_id: int
    media_key: str
    external_id: str
    group_key: str | None
    category: str | None

    def label(self, kind: LabelKind) -> str | None:
        if kind is LabelKind.ITEM:
            return self.external_id
        value = self.group_key if kind is LabelKind.GROUP else self.category
        return value or None


def catalog_images(sessions: sessionmaker[Session]) -> list[CatalogImage]:
    """Every active image of every active item, in image id order."""
    query = (
        select(ItemImage.id, ItemImage.media_key, Item.external_id, Item.group_key, Item.category)
        .join(Item, ItemImage.item_id == Item.id)
        .where(Item.status == ItemStatus.ACTIVE, ItemImage.status == ImageStatus.ACTIVE)
        .order_by(ItemImage.id)
    )
    with session_scope(sessions) as s:
        return [CatalogImage(*row) for row in s.execute(query)]


def item_of_images(sessions: sessionmaker[Session]) -> dict[int, str]:
    """The external id of every image's item, whatever their status (an image never changes item)."""
    query = select(ItemImage.id, Item.external_id).join(Item, ItemImage.item_id == Item.id)
    with session_scope(sessions) as s:
        return {image_id: external_id for image_id, external_id in s.execute(query)}


def catalog_list(sessions: sessionmaker[Session], store: MediaStore, label: LabelKind) -> MediaList:
    """The catalog's images labelled by ``label``; images whose item has no such label are left out."""
    rows = [(r, r.label(label)) for r in catalog_images(sessions)]
    rows = [(r, lab) for r, lab in rows if lab is not None]
    if not rows:
        raise ValueError(
            f"the catalog has no active images with a {label.value} label "
            "(import a catalog first, or choose another data.label)"
        )
    return MediaList(store, [r.media_key for r, _ in rows], [lab for _, lab in rows], [r.image_id for r, _ in rows])
