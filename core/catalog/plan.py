"""What an upsert changes for one row: the pure comparison of a row with its stored item.

No I/O here: :mod:`core.catalog.upsert` loads the stored state, stores the images,
and writes the :class:`ItemPlan` this module computes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from core.catalog.rows import CatalogRow
from core.db import ImageStatus, ItemStatus


class Outcome(str, enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class KnownImage:
    id: int
    position: int
    source_uri: str
    status: ImageStatus
    width: int
    height: int


@dataclass
class KnownItem:
    id: int
    values: dict[str, Any]
    images: dict[str, KnownImage] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacedImage:
    key: str
    width: int
    height: int
    uri: str
    position: int


@dataclass
class ItemPlan:
    row: CatalogRow
    known: KnownItem | None
    values: dict[str, Any]
    outcome: Outcome = Outcome.CREATED
    inserts: list[PlacedImage] = field(default_factory=list)
    image_updates: list[dict[str, Any]] = field(default_factory=list)
    reactivated: list[int] = field(default_factory=list)


def plan_item(row: CatalogRow, item: KnownItem | None, images: list[PlacedImage]) -> ItemPlan:
    """Compare ``row`` (with its stored ``images``, in order) to the stored ``item``."""
    values = item_values(row.title, row.category, row.group, row.attributes, ItemStatus.ACTIVE)
    if item is None:
        return ItemPlan(row, None, values, Outcome.CREATED, inserts=images)
    plan = ItemPlan(row, item, values, Outcome.UNCHANGED)
    for image in images:
        old = item.images.get(image.key)
        if old is None:
            plan.inserts.append(image)
        elif (old.status, old.position, old.source_uri) != (ImageStatus.ACTIVE, image.position, image.uri):
            plan.image_updates.append({"id": old.id, "status": ImageStatus.ACTIVE,
                                       "position": image.position, "source_uri": image.uri})
            if old.status is not ImageStatus.ACTIVE:
                plan.reactivated.append(old.id)
    wanted = {image.key for image in images}
    for key, old in item.images.items():
        if key not in wanted and old.status is ImageStatus.ACTIVE:
            plan.image_updates.append({"id": old.id, "status": ImageStatus.REMOVED,
                                       "position": old.position, "source_uri": old.source_uri})
    if item.values != values or plan.inserts or plan.image_updates:
        plan.outcome = Outcome.UPDATED
    return plan


def item_values(title: str, category: str | None, group: str | None, attributes: dict[str, Any],
                status: ItemStatus) -> dict[str, Any]:
    """The item columns an import compares and writes."""
    return {"title": title, "category": category, "group_key": group, "attributes": attributes,
            "status": status}
