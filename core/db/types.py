"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, TypeDecorator
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
"""JSON everywhere, JSONB on PostgreSQL (indexable, compact)."""


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Time-zone-aware timestamps on every backend.

    PostgreSQL keeps the zone (``timestamptz``); SQLite stores naive text, so values
    are normalised to UTC on the way in and tagged as UTC on the way out. Naive
    datetimes are refused: they are always a bug somewhere upstream.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def enum_column(enum_cls: type[enum.Enum]) -> Any:
    """A VARCHAR enum storing the values (not names), identical on both backends."""
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )
