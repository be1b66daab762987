"""Write catalog rows to SQL: upsert by external id, in chunks, without losing good rows.

Rows are taken in chunks (:data:`DEFAULT_CHUNK_SIZE`). For each chunk the existing
items and their images are loaded with two queries, every row's images are read,
hashed and stored (decoding is skipped for bytes the item already has), and the
differences are written with bulk statements inside a savepoint; the chunk is
then committed. If the database refuses the chunk, it is retried row by row,
each in its own savepoint, so only the offending rows are reported.

Rules (the docs repeat them):

* the first occurrence of an external id in a source wins; later occurrences are
  reported as duplicates and skipped, even when the first one was itself rejected;
* an unchanged row writes nothing (no ``updated_at`` bump) and counts as unchanged;
* a soft-deleted item that appears again is reactivated (counted as updated);
* the image list is authoritative: new bytes are added, images no longer listed are
  marked ``removed`` (kept, so their cached embeddings survive a later re-add), a
  re-listed removed image is reactivated; listing the same bytes twice keeps one;
* ``new_image_ids`` are the images that were inserted or reactivated: the ones the
  embedding step has to look at;
* ``delete_missing`` soft-deletes active items that the source does not mention.
  It is skipped (with a warning) when some rejected row had no readable external
  id, since that row might have been the missing item.

Image files written for a row that is then rejected stay in the media store: they
are content-addressed and harmless.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.catalog.queries import soft_delete_missing
from core.catalog.rows import CatalogRow, ImportReport, RowError
from core.db import ImageStatus, Item, ItemImage, ItemStatus
from core.db.types import utcnow
from core.media import MediaError, MediaStore, media_key

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 500
"""Rows per transaction; also keeps ``IN (...)`` lists well inside every backend's limits."""

Progress = Callable[[int], None]
"""Called with the number of rows just processed (``tqdm.update`` fits)."""


class _Rejected(Exception):
    """A row cannot be imported; the message is the reason reported for it."""


class Outcome(str, enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class _KnownImage:
    id: int
    position: int
    source_uri: str
    status: ImageStatus
    width: int
    height: int


@dataclass
class _KnownItem:
    id: int
    values: dict[str, Any]
    images: dict[str, _KnownImage] = field(default_factory=dict)


@dataclass(frozen=True)
class _Image:
    key: str
    width: int
    height: int
    uri: str
    position: int


@dataclass
class _Plan:
    row: CatalogRow
    known: _KnownItem | None
    values: dict[str, Any]
    outcome: Outcome = Outcome.CREATED
    inserts: list[_Image] = field(default_factory=list)
    image_updates: list[dict[str, Any]] = field(default_factory=list)
    reactivated: list[int] = field(default_factory=list)


def import_rows(
    rows: Iterable[CatalogRow | RowError],
    *,
    sessions: sessionmaker[Session],
    store: MediaStore,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    delete_missing: bool = False,
) -> ImportReport:
    """Upsert ``rows`` (as produced by a source reader) and report what happened."""
    started = time.perf_counter()
    report = ImportReport()
    claimed: dict[str, int] = {}
    chunk: list[CatalogRow] = []
    consumed = 0
    with sessions() as session:
        for row in rows:
            consumed += 1
            if row.external_id is not None:
                if row.external_id in claimed:
                    report.errors.append(RowError(
                        row.line, row.external_id,
                        f"duplicate external_id: line {claimed[row.external_id]} already has it; this row is skipped",
                    ))
                    continue
                claimed[row.external_id] = row.line
            if isinstance(row, RowError):
                report.errors.append(row)
                continue
            chunk.append(row)
            if len(chunk) >= chunk_size:
                _import_chunk(session, store, chunk, report)
                chunk = []
                if progress is not None:
                    progress(consumed)
                    consumed = 0
        if chunk:
            _import_chunk(session, store, chunk, report)
        if delete_missing:
            if any(error.external_id is None for error in report.errors):
                report.warnings.append("delete_missing skipped: some rejected rows had no readable external_id")
            else:
                report.deleted = soft_delete_missing(session, set(claimed))
                session.commit()
    if progress is not None and consumed:
        progress(consumed)
    report.errors.sort(key=lambda e: e.line)
    report.new_image_ids.sort()
    report.seconds = time.perf_counter() - started
    log.info("catalog import: %s", report.summary())
    return report


def _import_chunk(session: Session, store: MediaStore, rows: list[CatalogRow], report: ImportReport) -> None:
    known = _load_known(session, [row.external_id for row in rows])
    plans: list[_Plan] = []
    for row in rows:
        item = known.get(row.external_id)
        try:
            images = _store_images(row, item, store)
        except _Rejected as exc:
            report.errors.append(RowError(row.line, row.external_id, str(exc)))
            continue
        plans.append(_plan(row, item, images))
    if not store.fsync:
        store.sync()  # image files must be on disk before rows that point at them commit
    changed = [plan for plan in plans if plan.outcome is not Outcome.UNCHANGED]
    applied = _apply_isolated(session, changed, report)
    session.commit()
    report.unchanged += len(plans) - len(changed)
    report.created += sum(1 for plan in applied if plan.outcome is Outcome.CREATED)
    report.updated += sum(1 for plan in applied if plan.outcome is Outcome.UPDATED)


def _load_known(session: Session, external_ids: list[str]) -> dict[str, _KnownItem]:
    items: dict[str, _KnownItem] = {}
    by_id: dict[int, _KnownItem] = {}
    query = select(Item.id, Item.external_id, Item.title, Item.category, Item.group_key,
                   Item.attributes, Item.status).where(Item.external_id.in_(external_ids))
    for r in session.execute(query):
        item = _KnownItem(r.id, _item_values(r.title, r.category, r.group_key, r.attributes, r.status))
        items[r.external_id] = by_id[r.id] = item
    if by_id:
        images = select(ItemImage.id, ItemImage.item_id, ItemImage.media_key, ItemImage.position,
                        ItemImage.source_uri, ItemImage.status, ItemImage.width, ItemImage.height
                        ).where(ItemImage.item_id.in_(list(by_id)))
        for r in session.execute(images):
            by_id[r.item_id].images[r.media_key] = _KnownImage(
                r.id, r.position, r.source_uri, r.status, r.width, r.height)
    return items


def _item_values(title: str, category: str | None, group: str | None, attributes: dict[str, Any],
                 status: ItemStatus) -> dict[str, Any]:
    return {"title": title, "category": category, "group_key": group, "attributes": attributes,
            "status": status}


def _store_images(row: CatalogRow, item: _KnownItem | None, store: MediaStore) -> list[_Image]:
    """Read, validate and store a row's images; raises _Rejected naming the bad image."""
    images: list[_Image] = []
    seen: set[str] = set()
    for ref in row.images:
        try:
            data = ref.data if ref.data is not None else store.read_source(ref.path)  # type: ignore[arg-type]
            key = media_key(data)
            if key in seen:
                continue  # the same photo listed twice
            seen.add(key)
            old = item.images.get(key) if item is not None else None
            if old is not None and store.exists(key):
                width, height = old.width, old.height  # validated when it was first stored
            else:
                stored = store.put_bytes(data)
                width, height = stored.width, stored.height
        except MediaError as exc:
            raise _Rejected(f"image {ref.uri!r}: {exc}") from exc
        except OSError as exc:
            raise _Rejected(f"image {ref.uri!r}: cannot read {ref.path}: {exc.strerror or exc}") from exc
        images.append(_Image(key, width, height, ref.uri, len(images)))
    return images


def _plan(row: CatalogRow, item: _KnownItem | None, images: list[_Image]) -> _Plan:
    values = _item_values(row.title, row.category, row.group, row.attributes, ItemStatus.ACTIVE)
    if item is None:
        return _Plan(row, None, values, Outcome.CREATED, inserts=images)
    plan = _Plan(row, item, values, Outcome.UNCHANGED)
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


def _apply_isolated(session: Session, plans: list[_Plan], report: ImportReport) -> list[_Plan]:
    """Apply the plans in one savepoint; if the database refuses, retry them one by one."""
    if not plans:
        return []
    try:
        with session.begin_nested():
            new_ids = _apply(session, plans)
        report.new_image_ids.extend(new_ids)
        return plans
    except SQLAlchemyError as exc:
        log.info("chunk refused by the database (%s); retrying row by row", exc.__class__.__name__)
    applied: list[_Plan] = []
    for plan in plans:
        try:
            with session.begin_nested():
                new_ids = _apply(session, [plan])
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            report.errors.append(RowError(plan.row.line, plan.row.external_id,
                                          f"the database refused the row: {reason}"))
            continue
        report.new_image_ids.extend(new_ids)
        applied.append(plan)
    return applied


def _apply(session: Session, plans: list[_Plan]) -> list[int]:
    """Write the plans with bulk statements; returns the new or reactivated image ids."""
    now = utcnow()
    creates = [plan for plan in plans if plan.known is None]
    updates = [plan for plan in plans if plan.known is not None]
    item_ids: list[int] = []
    if creates:
        item_ids = list(session.scalars(
            insert(Item).returning(Item.id, sort_by_parameter_order=True),
            [{"external_id": p.row.external_id, **p.values, "created_at": now, "updated_at": now}
             for p in creates],
        ))
    if updates:
        session.execute(update(Item), [{"id": p.known.id, **p.values, "updated_at": now}  # type: ignore[union-attr]
                                       for p in updates])
    owners = [*zip(item_ids, creates), *((p.known.id, p) for p in updates)]  # type: ignore[union-attr]
    image_rows = [
        {"item_id": owner, "position": image.position, "source_uri": image.uri, "media_key": image.key,
         "width": image.width, "height": image.height, "status": ImageStatus.ACTIVE,
         "created_at": now, "updated_at": now}
        for owner, plan in owners for image in plan.inserts
    ]
    new_ids: list[int] = []
    if image_rows:
        new_ids = list(session.scalars(
            insert(ItemImage).returning(ItemImage.id, sort_by_parameter_order=True), image_rows))
    image_updates = [{**change, "updated_at": now} for plan in updates for change in plan.image_updates]
    if image_updates:
        session.execute(update(ItemImage), image_updates)
    return new_ids + [image_id for plan in updates for image_id in plan.reactivated]
