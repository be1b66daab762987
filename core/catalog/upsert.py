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

Image files are read only from the source's import roots (the catalog's folder and
``LOOKALIKE_IMPORT_ROOTS``; docs/CONFIG.md, "Where an import may read images").

Image files written for a row that is then rejected stay in the media store: they
are content-addressed and harmless.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import StoreUnavailable
from core.catalog.plan import ItemPlan, KnownImage, KnownItem, Outcome, PlacedImage, item_values, plan_item
from core.catalog.queries import soft_delete_missing
from core.catalog.rows import CatalogRow, ImportReport, RowError
from core.db import ImageStatus, Item, ItemImage
from core.db.types import utcnow
from core.media import ImportRoots, MediaError, MediaStore, media_key

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 500
"""Rows per transaction; also keeps ``IN (...)`` lists well inside every backend's limits."""

DEFAULT_IMAGE_WORKERS = min(4, os.cpu_count() or 1)
"""Threads that read, validate and store images while the main thread talks to SQL.

File creation and image decoding release the GIL, so a few threads overlap them;
more than the cores only adds GIL hand-offs (measured in bench/bench_import.py)."""

Progress = Callable[[int], None]
"""Called with the number of rows just processed (``tqdm.update`` fits)."""

_Stored = list[PlacedImage] | str
"""A row's stored images, or the reason the row is rejected."""


@dataclass
class _Chunk:
    rows: list[CatalogRow]
    consumed: int
    """Source rows read to make this chunk, rejected and duplicate ones included (for progress)."""
    known: dict[str, KnownItem]
    stored: list[Future[list[_Stored]]]


def import_rows(
    rows: Iterable[CatalogRow | RowError],
    *,
    sessions: sessionmaker[Session],
    store: MediaStore,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
    delete_missing: bool = False,
    image_workers: int = DEFAULT_IMAGE_WORKERS,
    roots: ImportRoots | None = None,
) -> ImportReport:
    """Upsert ``rows`` (as produced by a source reader) and report what happened.

    Image files are read only from inside ``roots`` (:meth:`CatalogSource.import_roots
    <core.catalog.rows.CatalogSource.import_roots>`); with None a row naming a local file is
    rejected: only rows that carry their bytes (API uploads, the sample) can be stored.

    Chunks are pipelined: while chunk *k* is written to SQL, the image threads
    already store chunk *k + 1* (their rows are disjoint: an external id is only
    ever in one chunk).
    """
    if chunk_size < 1 or image_workers < 1:
        raise ValueError(f"chunk_size and image_workers must be at least 1, got {chunk_size}, {image_workers}")
    started = time.perf_counter()
    report = ImportReport()
    claimed: dict[str, int] = {}
    roots = roots if roots is not None else ImportRoots(())
    with sessions() as session, ThreadPoolExecutor(image_workers, thread_name_prefix="catalog-images") as pool:
        pending: _Chunk | None = None
        for batch, consumed in _batches(rows, chunk_size, claimed, report):
            known = _load_known(session, [row.external_id for row in batch])
            # Contiguous blocks: few hand-offs per chunk. A chunk can hold no valid row at
            # all (the rejected rows after the last full chunk, a file of bad rows): it still
            # goes through _write_chunk, which writes the chunk before it and counts progress.
            step = max(1, -(-len(batch) // image_workers))
            futures = [pool.submit(_store_block, batch[i:i + step], known, store, roots)
                       for i in range(0, len(batch), step)]
            if pending is not None:
                _write_chunk(session, store, pending, report, progress)
            pending = _Chunk(batch, consumed, known, futures)
        if pending is not None:
            _write_chunk(session, store, pending, report, progress)
        if delete_missing:
            if any(error.external_id is None for error in report.errors):
                report.warnings.append("delete_missing skipped: some rejected rows had no readable external_id")
            else:
                report.deleted = soft_delete_missing(session, set(claimed))
                session.commit()
    report.errors.sort(key=lambda e: e.line)
    report.new_image_ids.sort()
    report.seconds = time.perf_counter() - started
    log.info("catalog import: %s", report.summary())
    return report


def _batches(rows: Iterable[CatalogRow | RowError], size: int, claimed: dict[str, int],
             report: ImportReport) -> Iterator[tuple[list[CatalogRow], int]]:
    """Valid, first-occurrence rows in chunks; rejected rows and duplicates go to the report."""
    batch: list[CatalogRow] = []
    consumed = 0
    for row in rows:
        consumed += 1
        if row.external_id is not None:
            first = claimed.setdefault(row.external_id, row.line)
            if first != row.line:
                report.errors.append(RowError(row.line, row.external_id,
                                              f"duplicate external_id: line {first} already has it; "
                                              "this row is skipped"))
                continue
        if isinstance(row, RowError):
            report.errors.append(row)
        else:
            batch.append(row)
        if len(batch) >= size:
            yield batch, consumed
            batch, consumed = [], 0
    if batch or consumed:
        yield batch, consumed


def _write_chunk(session: Session, store: MediaStore, chunk: _Chunk, report: ImportReport,
                 progress: Progress | None) -> None:
    stored = [images for future in chunk.stored for images in future.result()]
    plans: list[ItemPlan] = []
    for row, images in zip(chunk.rows, stored):
        if isinstance(images, str):
            report.errors.append(RowError(row.line, row.external_id, images))
        else:
            plans.append(plan_item(row, chunk.known.get(row.external_id), images))
    if not store.fsync and plans:
        store.sync()  # image files must be on disk before rows that point at them commit
    changed = [plan for plan in plans if plan.outcome is not Outcome.UNCHANGED]
    applied = _apply_isolated(session, changed, report)
    session.commit()
    report.unchanged += len(plans) - len(changed)
    report.created += sum(1 for plan in applied if plan.outcome is Outcome.CREATED)
    report.updated += sum(1 for plan in applied if plan.outcome is Outcome.UPDATED)
    if progress is not None and chunk.consumed:
        progress(chunk.consumed)


def _load_known(session: Session, external_ids: list[str]) -> dict[str, KnownItem]:
    """The stored state of these items and all their images, in two queries."""
    items: dict[str, KnownItem] = {}
    by_id: dict[int, KnownItem] = {}
    if not external_ids:
        return items
    query = select(Item.id, Item.external_id, Item.title, Item.category, Item.group_key,
                   Item.attributes, Item.status).where(Item.external_id.in_(external_ids))
    for r in session.execute(query):
        item = KnownItem(r.id, item_values(r.title, r.category, r.group_key, r.attributes, r.status))
        items[r.external_id] = by_id[r.id] = item
    if by_id:
        images = select(ItemImage.id, ItemImage.item_id, ItemImage.media_key, ItemImage.position,
                        ItemImage.source_uri, ItemImage.status, ItemImage.width, ItemImage.height
                        ).where(ItemImage.item_id.in_(list(by_id)))
        for r in session.execute(images):
            by_id[r.item_id].images[r.media_key] = KnownImage(
                r.id, r.position, r.source_uri, r.status, r.width, r.height)
    return items


def _store_block(rows: list[CatalogRow], known: dict[str, KnownItem], store: MediaStore,
                 roots: ImportRoots) -> list[_Stored]:
    return [_store_images(row, known.get(row.external_id), store, roots) for row in rows]


def _store_images(row: CatalogRow, item: KnownItem | None, store: MediaStore, roots: ImportRoots) -> _Stored:
    """Read, validate and store a row's images; a string is the reason the row is rejected.

    Reasons quote the reference as the row wrote it, never the resolved path or the store's
    files (docs/CONFIG.md, "Where an import may read images").
    """
    images: list[PlacedImage] = []
    seen: set[str] = set()
    for ref in row.images:
        try:
            data = ref.data if ref.data is not None else store.read_source(ref.path, roots)  # type: ignore[arg-type]
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
            return f"image {ref.uri!r}: {exc}"
        except StoreUnavailable:
            raise  # not this row's fault: the request answers 503, an import job fails and can be retried
        except OSError as exc:  # writing to the media store (a full disk)
            return f"image {ref.uri!r}: cannot be stored: {exc.strerror or type(exc).__name__}"
        images.append(PlacedImage(key, width, height, ref.uri, len(images)))
    return images


def _apply_isolated(session: Session, plans: list[ItemPlan], report: ImportReport) -> list[ItemPlan]:
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
    applied: list[ItemPlan] = []
    for plan in plans:
        try:
            with session.begin_nested():
                new_ids = _apply(session, [plan])
        except SQLAlchemyError as exc:
            # The driver's first line says what is wrong; some errors have no message at all.
            reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            report.errors.append(RowError(plan.row.line, plan.row.external_id,
                                          f"the database refused the row: {reason}"))
            continue
        report.new_image_ids.extend(new_ids)
        applied.append(plan)
    return applied


def _apply(session: Session, plans: list[ItemPlan]) -> list[int]:
    """Write the plans with bulk statements; returns the new or reactivated image ids.

    Inserts go out as plain executemany and the new ids are read back by their unique
    keys: ``RETURNING`` in parameter order makes SQLAlchemy send SQLite one statement
    per row, which was a third of the import time.
    """
    now = utcnow()
    creates = [plan for plan in plans if plan.known is None]
    updates = [plan for plan in plans if plan.known is not None]
    owners = [(p.known.id, p) for p in updates]  # type: ignore[union-attr]
    if creates:
        session.execute(insert(Item), [{"external_id": p.row.external_id, **p.values, "created_at": now,
                                        "updated_at": now} for p in creates])
        created = select(Item.external_id, Item.id).where(Item.external_id.in_([p.row.external_id for p in creates]))
        ids = {r.external_id: r.id for r in session.execute(created)}
        owners += [(ids[p.row.external_id], p) for p in creates]
    if updates:
        session.execute(update(Item), [{"id": p.known.id, **p.values, "updated_at": now}  # type: ignore[union-attr]
                                       for p in updates])
    image_rows = [
        {"item_id": owner, "position": image.position, "source_uri": image.uri, "media_key": image.key,
         "width": image.width, "height": image.height, "status": ImageStatus.ACTIVE,
         "created_at": now, "updated_at": now}
        for owner, plan in owners for image in plan.inserts
    ]
    new_ids: list[int] = []
    if image_rows:
        session.execute(insert(ItemImage), image_rows)
        inserted = {(row["item_id"], row["media_key"]) for row in image_rows}
        found = session.execute(select(ItemImage.id, ItemImage.item_id, ItemImage.media_key)
                                .where(ItemImage.item_id.in_({row["item_id"] for row in image_rows})))
        new_ids = [r.id for r in found if (r.item_id, r.media_key) in inserted]
    image_updates = [{**change, "updated_at": now} for plan in updates for change in plan.image_updates]
    if image_updates:
        session.execute(update(ItemImage), image_updates)
    return new_ids + [image_id for plan in updates for image_id in plan.reactivated]
