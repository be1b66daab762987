"""Reading and soft-deleting catalog items: what the API and the CLI call.

These functions work inside the caller's session and never commit: the caller
owns the transaction (``session_scope`` in the service and the CLI).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from core.db import Item, ItemStatus
from core.db.types import utcnow

MAX_PAGE_SIZE = 1000
_BATCH = 500


class DeleteOutcome(str, enum.Enum):
    DELETED = "deleted"
    ALREADY_DELETED = "already_deleted"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class ItemPage:
    """One page of items (ordered by id, images loaded) and how many match in total."""

    items: list[Item]
    total: int
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


def list_items(
    session: Session,
    *,
    category: str | None = None,
    status: ItemStatus | None = ItemStatus.ACTIVE,
    limit: int = 50,
    offset: int = 0,
) -> ItemPage:
    """Items filtered by category and status (None = any status), oldest first."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    conditions = []
    if category is not None:
        conditions.append(Item.category == category)
    if status is not None:
        conditions.append(Item.status == ItemStatus(status))
    total = session.scalar(select(func.count()).select_from(Item).where(*conditions)) or 0
    items = session.scalars(
        select(Item).where(*conditions).order_by(Item.id).limit(limit).offset(offset)
        .options(selectinload(Item.images))
    ).all()
    return ItemPage(items=list(items), total=total, limit=limit, offset=offset)


def get_item(session: Session, external_id: str, *, include_deleted: bool = True) -> Item | None:
    """The item with this external id (images loaded), or None."""
    query = select(Item).where(Item.external_id == external_id).options(selectinload(Item.images))
    if not include_deleted:
        query = query.where(Item.status == ItemStatus.ACTIVE)
    return session.scalars(query).one_or_none()


def delete_item(session: Session, external_id: str) -> DeleteOutcome:
    """Soft-delete one item (status ``deleted``); its rows and images are kept."""
    return delete_items(session, [external_id])[external_id]


def delete_items(session: Session, external_ids: Iterable[str]) -> dict[str, DeleteOutcome]:
    """Soft-delete several items; says for each external id what happened."""
    wanted = list(dict.fromkeys(external_ids))
    outcomes = {external_id: DeleteOutcome.NOT_FOUND for external_id in wanted}
    to_delete: list[int] = []
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start:start + _BATCH]
        for row in session.execute(select(Item.id, Item.external_id, Item.status)
                                   .where(Item.external_id.in_(batch))):
            if row.status is ItemStatus.DELETED:
                outcomes[row.external_id] = DeleteOutcome.ALREADY_DELETED
            else:
                outcomes[row.external_id] = DeleteOutcome.DELETED
                to_delete.append(row.id)
    _mark_deleted(session, to_delete)
    return outcomes


def soft_delete_missing(session: Session, present: Collection[str]) -> int:
    """Soft-delete every active item whose external id is not in ``present``; returns how many."""
    active = session.execute(select(Item.id, Item.external_id).where(Item.status == ItemStatus.ACTIVE))
    gone = [row.id for row in active if row.external_id not in present]
    _mark_deleted(session, gone)
    return len(gone)


def _mark_deleted(session: Session, item_ids: list[int]) -> None:
    now = utcnow()
    for start in range(0, len(item_ids), _BATCH):
        batch = item_ids[start:start + _BATCH]
        session.execute(update(Item).where(Item.id.in_(batch))
                        .values(status=ItemStatus.DELETED, updated_at=now))
