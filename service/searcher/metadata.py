"""The SQL side of a search: the query item, and the metadata of candidate images.

Candidates come from the index as image ids; one query per round maps them to
their items, keeping only servable ones (image and item active) that pass the
filters. That single query is how deletions take effect at once without a rebuild.

This runs on every request, so it is written for the CPU it costs (measured in
``bench/bench_api.py``):

* plain Core ``select``s on a pooled connection, built once per request shape
  (ORM objects would cost more than the index query itself);
* the candidate ids go in as *one* bound value — a JSON array read with
  ``json_each`` on SQLite, an array with ``= ANY`` on PostgreSQL — rather than an
  expanding ``IN (?, ?, ...)``, which SQLAlchemy re-renders into new SQL text on
  every execution. SQLite then walks the id list and finds each image through the
  (status, id) index; keeping status off that index (``+status``, as the fresh
  poll does) looks cheaper but makes it start from ``items`` instead, a scan of the
  whole catalog — ``tests/service/test_query_plans.py`` pins the plan;
* ``attributes`` is fetched as JSON text and decoded only for the images that end
  up in the answer (about a third of the candidates), see :attr:`ImageMeta.attributes`;
* rows become :class:`ImageMeta` named tuples, which cost a fraction of a frozen
  dataclass to build.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    String,
    all_,
    any_,
    bindparam,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY

from core.catalog.servable import META_COLUMNS, ImageMeta, meta_of_row, servable_clauses
from core.db import ImageStatus, Item, ItemImage, ItemStatus
from core.db.backend import Backend, backend_of
from service.filters import Filters

__all__ = ["Exclusions", "ImageMeta", "QueryItem", "fetch_metadata", "lookup_item", "matching_images"]

IN_CHUNK = 10_000
"""Ids per query: bounds the size of one bound value (and of an expanding ``IN`` on other databases)."""


@dataclass(frozen=True)
class QueryItem:
    item_id: int
    group_key: str | None
    image_ids: tuple[int, ...]
    """Active images, in display order."""


@dataclass(frozen=True)
class Exclusions:
    """Items never returned: the query item itself, optionally its whole group, and ``item_ids``.

    ``item_ids`` are the results a merchandiser marked dissimilar for the query item
    (:func:`core.feedback.dissimilar_results`; docs/ARCHITECTURE.md, "Feedback").
    """

    item_id: int | None = None
    group_key: str | None = None
    item_ids: tuple[int, ...] = ()


def _ids_clause(backend: Backend) -> ColumnElement[bool]:
    """``ItemImage.id`` among the bound value ``ids`` (see :func:`_ids_value` for its form)."""
    if backend is Backend.SQLITE:
        ids = func.json_each(bindparam("ids", type_=String)).table_valued("value")
        return ItemImage.id.in_(select(ids.c.value))
    return ItemImage.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))


def _ids_value(backend: Backend, ids: Sequence[int]) -> Any:
    return json.dumps(list(ids)) if backend is Backend.SQLITE else list(ids)


def _not_excluded_clause(backend: Backend) -> ColumnElement[bool]:
    """``Item.id`` not among the bound value ``exclude_item_ids`` (one value, as for ``ids``)."""
    if backend is Backend.SQLITE:
        ids = func.json_each(bindparam("exclude_item_ids", type_=String)).table_valued("value")
        return Item.id.not_in(select(ids.c.value))
    return Item.id != all_(bindparam("exclude_item_ids", type_=ARRAY(BigInteger)))


@functools.lru_cache(maxsize=512)
def _statement(backend: Backend, filters: Filters, exclude_item: bool, exclude_group: bool,
               by_ids: bool, exclude_items: bool = False) -> Select[Any]:
    """The metadata query for one shape of request, built once and reused.

    Building a ``select`` costs more than running it on an indexed table, so each
    shape (filters, which exclusions, by ids or not) is built once per process; the
    varying values are bound parameters: ``ids``, ``exclude_item_id``, ``exclude_group``,
    ``exclude_item_ids``.
    """
    query = (select(*META_COLUMNS).join(Item, Item.id == ItemImage.item_id)
             .where(*servable_clauses(), *filters.clauses(backend)))
    if exclude_item:
        query = query.where(Item.id != bindparam("exclude_item_id"))
    if exclude_group:
        query = query.where(or_(Item.group_key.is_(None), Item.group_key != bindparam("exclude_group")))
    if exclude_items:
        query = query.where(_not_excluded_clause(backend))
    if by_ids:
        query = query.where(_ids_clause(backend))
    return query


def _statement_for(backend: Backend, filters: Filters, exclusions: Exclusions, by_ids: bool) -> Select[Any]:
    return _statement(backend, filters, exclusions.item_id is not None, exclusions.group_key is not None,
                      by_ids, bool(exclusions.item_ids))


def _params(backend: Backend, exclusions: Exclusions) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if exclusions.item_id is not None:
        params["exclude_item_id"] = exclusions.item_id
    if exclusions.group_key is not None:
        params["exclude_group"] = exclusions.group_key
    if exclusions.item_ids:
        params["exclude_item_ids"] = _ids_value(backend, exclusions.item_ids)
    return params


def fetch_metadata(conn: Connection, image_ids: Sequence[int], *, filters: Filters,
                   exclusions: Exclusions) -> dict[int, ImageMeta]:
    """Metadata of the servable, matching images among ``image_ids`` (one query per 10k ids)."""
    backend = backend_of(conn)
    statement = _statement_for(backend, filters, exclusions, True)
    params = _params(backend, exclusions)
    out: dict[int, ImageMeta] = {}
    ids = [int(i) for i in image_ids]
    for start in range(0, len(ids), IN_CHUNK):
        params["ids"] = _ids_value(backend, ids[start:start + IN_CHUNK])
        for row in conn.execute(statement, params).all():
            out[row[6]] = meta_of_row(row)
    return out
def matching_images(conn: Connection, *, filters: Filters, exclusions: Exclusions,
                    limit: int) -> list[ImageMeta] | None:
    """Every servable image matching the filters, or None if there are more than ``limit``."""
    backend = backend_of(conn)
    statement = _statement_for(backend, filters, exclusions, False)
    rows = [meta_of_row(r) for r in conn.execute(statement.order_by(ItemImage.id).limit(limit + 1),
                                           _params(backend, exclusions))]
    return None if len(rows) > limit else rows


_LOOKUP = (
    select(Item.id, Item.group_key, ItemImage.id)
    .outerjoin(ItemImage, (ItemImage.item_id == Item.id) & (ItemImage.status == ImageStatus.ACTIVE))
    .where(Item.external_id == bindparam("external_id"), Item.status == ItemStatus.ACTIVE)
    .order_by(ItemImage.position, ItemImage.id)
)


def lookup_item(conn: Connection, external_id: str) -> QueryItem | None:
    """The active item with this external id and its active images; None if absent or deleted."""
    rows = conn.execute(_LOOKUP, {"external_id": external_id}).all()
    if not rows:
        return None
    return QueryItem(item_id=rows[0][0], group_key=rows[0][1],
                     image_ids=tuple(r[2] for r in rows if r[2] is not None))
