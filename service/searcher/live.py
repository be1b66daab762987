"""The live set: what changed in SQL since a version's metadata table was read, and how to tell it is current.

The metadata table (core/index/metadata_table.py) is the catalog as of
``table.as_of``; SQL stays the source of truth. Like the fresh set, one process keeps
a live set that its watcher brings up to date on every poll: the current metadata
(or "not servable": deleted, removed) of every image whose row or whose item's row
changed since then (``updated_at``), plus of every fresh image the table does not
hold. A result image is then read from the live set if it is there, else from the
table.

Between two polls SQL may change again. So every request served from the table
checks, in the same single query that looks up its item and its marks, four cheap
probes (index lookups, migration 0004): ``max(updated_at)`` of items and of images,
and how many rows of each changed since the set's window start ``since``. Equal to
what the watcher read when it last brought the set up to date, nothing changed that
the set lacks; different, the request takes the SQL path (and the next poll catches
up). A deletion or a new title therefore shows at once, as on the SQL path.

``since`` trails the newest change read by :data:`~core.embeddings_store.COMMIT_SLACK`,
as the fresh set's cursor does: ``updated_at`` is stamped when a row is written, not
when its transaction commits, so a change committed up to that much later than a
newer one is still counted. A change whose commit lags its own timestamp by more
than that is the one case the probes can miss until the next table; the fresh set
makes the same assumption. More than :data:`LIVE_LIMIT` changed images, and the set
gives up (``overflowed``): the SQL path serves until the next version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import Connection, Engine, Select, bindparam, func, select

from core.catalog.servable import BUILD_CHUNK, ImageMeta, servable_metadata
from core.db import Feedback, ImageStatus, Item, ItemImage, ItemStatus
from core.db.backend import Backend, backend_of
from core.embeddings_store import COMMIT_SLACK
from core.feedback import dissimilar_mark_clauses
from core.index import VectorIndex
from service.searcher.fresh import FreshSet
from service.searcher.metadata import QueryItem

log = logging.getLogger(__name__)

LIVE_LIMIT = 20_000
"""Changed images a live set holds at most; past it the table is not trusted (SQL serves)."""


class Probe(NamedTuple):
    """What the probes read: newest ``updated_at`` and rows changed after ``since``, items then images."""

    items_newest: dt.datetime | None
    items_since: int
    images_newest: dt.datetime | None
    images_since: int


@dataclass(frozen=True)
class LiveSet:
    """An immutable snapshot; a poll builds a new one and swaps it in with the state."""

    since: dt.datetime
    """Window start of the probes' counts."""
    probe: Probe
    """The probes as read just before the changes were (a request compares its own with them)."""
    overrides: dict[int, ImageMeta | None]
    """Image id -> its current metadata; None: not servable now."""
    overflowed: bool = False

    def current(self, probe: Probe) -> bool:
        """Whether a request's ``probe`` shows no change the set lacks (and the set is usable)."""
        return not self.overflowed and probe == self.probe


def _probe_columns() -> tuple[Any, ...]:
    """The four probes as uncorrelated scalar subqueries (bound value ``since``)."""
    since = bindparam("since", type_=Item.__table__.c.updated_at.type)
    return (
        select(func.max(Item.updated_at)).correlate(None).scalar_subquery(),
        select(func.count()).select_from(Item).where(Item.updated_at > since).correlate(None).scalar_subquery(),
        select(func.max(ItemImage.updated_at)).correlate(None).scalar_subquery(),
        select(func.count()).select_from(ItemImage).where(ItemImage.updated_at > since)
        .correlate(None).scalar_subquery(),
    )


_PROBE = select(*_probe_columns())


def read_probe(conn: Connection, since: dt.datetime) -> Probe:
    row = conn.execute(_PROBE, {"since": since}).one()
    return Probe(row[0], int(row[1]), row[2], int(row[3]))


class DriverQuery:
    """A statement compiled once per dialect and run on the DBAPI cursor directly.

    The per-request query runs on every similar-by-id request; SQLAlchemy's execution
    path around it (cache key, parameter and result processing) cost about four times
    the query itself on SQLite (measured: ~0.3 vs ~0.07 ms under the shared machine's
    load). Constant parameters (enum values in the marks and status conditions) are
    processed once; ``external_id`` needs none; ``since`` is processed with the column's
    own bind processor. Results come back as the driver returns them (timestamps as
    SQLite's text or PostgreSQL's datetimes): probes are only ever compared with probes
    read by this same class.
    """

    def __init__(self, build: Callable[[Backend], Select[Any]]) -> None:
        self._build = build
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any], dict[str, Any]]] = {}

    def _compile(self, conn: Connection) -> tuple[str, tuple[str, ...] | None, dict[str, Any], dict[str, Any]]:
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._build(backend_of(conn)).compile(dialect=dialect)
            processors = dict(compiled._bind_processors)
            base = {name: (processors[name](value) if name in processors and value is not None else value)
                    for name, value in compiled.construct_params({}, _check=False).items()}
            order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
            found = self._compiled[dialect.name] = (str(compiled), order, base, processors)
        return found

    def rows(self, conn: Connection, **values: Any) -> list[tuple[Any, ...]]:
        sql, order, base, processors = self._compile(conn)
        params = dict(base)
        for name, value in values.items():
            processor = processors.get(name)
            params[name] = processor(value) if processor is not None and value is not None else value
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, tuple(params[n] for n in order) if order is not None else params)
            return cursor.fetchall()
        finally:
            cursor.close()


_RAW_PROBE = DriverQuery(lambda backend: select(*_probe_columns()))


def read_raw_probe(conn: Connection, since: dt.datetime) -> Probe:
    """The probes as the driver returns them (what :func:`lookup_with_probe` compares)."""
    row = _RAW_PROBE.rows(conn, since=since)[0]
    return Probe(row[0], int(row[1]), row[2], int(row[3]))


def _lookup_statement(backend: Backend) -> Select[Any]:
    """The item (id, group, active images in display order), its marks and the probes, in one query."""
    aggregate = func.json_group_array if backend is Backend.SQLITE else func.array_agg
    marks = (select(aggregate(Feedback.result_item_id))
             .where(Feedback.query_item_id == Item.id, *dissimilar_mark_clauses())
             .correlate(Item).scalar_subquery())
    return (select(Item.id, Item.group_key, ItemImage.id, marks, *_probe_columns())
            .outerjoin(ItemImage, (ItemImage.item_id == Item.id) & (ItemImage.status == ImageStatus.ACTIVE))
            .where(Item.external_id == bindparam("external_id"), Item.status == ItemStatus.ACTIVE)
            .order_by(ItemImage.position, ItemImage.id))


_LOOKUP = DriverQuery(_lookup_statement)


def lookup_with_probe(conn: Connection, external_id: str,
                      since: dt.datetime) -> tuple[QueryItem, tuple[int, ...], Probe] | None:
    """The active item, the items marked dissimilar to it, and the probes; None if there is no such item.

    The item part is :func:`~service.searcher.metadata.lookup_item`'s answer, the marks
    :func:`core.feedback.dissimilar_results`' (the same condition), read in one round trip.
    """
    rows = _LOOKUP.rows(conn, external_id=external_id, since=since)
    if not rows:
        return None
    first = rows[0]
    marks = first[3]
    if isinstance(marks, str):  # SQLite's json_group_array
        marks = json.loads(marks)
    item = QueryItem(item_id=first[0], group_key=first[1], image_ids=tuple(r[2] for r in rows if r[2] is not None))
    return item, tuple(sorted(int(m) for m in marks or ())), Probe(first[4], int(first[5]), first[6], int(first[7]))


def _newest(probe: Probe, floor: dt.datetime) -> dt.datetime:
    return max([t for t in (probe.items_newest, probe.images_newest) if t is not None] + [floor])


def follow_live(engine: Engine, as_of: dt.datetime, index: VectorIndex, fresh: FreshSet,
                previous: LiveSet | None = None) -> LiveSet:
    """The live set after ``as_of`` (a table's), read whole or updated from ``previous``.

    The probes are read first, the changes after them: a change committed in between
    is read but makes the recorded probes stale, so requests use SQL until the next
    poll — never the other way round. Returns ``previous`` itself when nothing changed.
    """
    if previous is not None and previous.overflowed:
        return previous
    cursor = previous.since + COMMIT_SLACK if previous is not None else as_of
    read_from = cursor - COMMIT_SLACK
    with engine.connect() as conn:
        newest = _newest(read_probe(conn, read_from), cursor)
        since = newest - COMMIT_SLACK
        probe = read_raw_probe(conn, since)
        known = previous.overrides if previous is not None else {}
        unheld = fresh.image_ids[index.rows_of(fresh.image_ids) < 0] if len(fresh) else np.empty(0, np.int64)
        new_fresh = [int(i) for i in unheld.tolist() if int(i) not in known]
        if previous is not None and since == previous.since and probe == previous.probe and not new_fresh:
            return previous
        # two indexed reads (updated_at, then item_id), not one OR that would scan item_images
        # (each bounded by the limit: a bulk import gives up after reading LIVE_LIMIT + 1 ids)
        items = conn.execute(select(Item.id).where(Item.updated_at > read_from).limit(LIVE_LIMIT + 1)).scalars().all()
        changed = set(conn.execute(select(ItemImage.id).where(ItemImage.updated_at > read_from)
                                   .limit(LIVE_LIMIT + 1)).scalars())
        for start in range(0, len(items) if len(items) <= LIVE_LIMIT else 0, BUILD_CHUNK):
            changed.update(conn.execute(select(ItemImage.id).where(
                ItemImage.item_id.in_(items[start:start + BUILD_CHUNK]))).scalars())
        wanted = sorted(changed | set(new_fresh))
        if len(items) > LIVE_LIMIT or len(known.keys() | set(wanted)) > LIVE_LIMIT:
            log.warning("live set overflowed: more than %d images changed since the metadata table was "
                        "read; result metadata comes from SQL until the next index version", LIVE_LIMIT)
            return LiveSet(since=since, probe=probe, overrides={}, overflowed=True)
        overrides: dict[int, ImageMeta | None] = dict(known)
        overrides.update(dict.fromkeys(wanted))
        overrides.update((m.image_id, m) for m in servable_metadata(conn, wanted))
    return LiveSet(since=since, probe=probe, overrides=overrides)
