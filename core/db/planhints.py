"""Steering SQLite's query planner where its guess, without statistics, is the slow plan.

SQLAlchemy renders no table hints (``INDEXED BY``, ``NOT INDEXED``) on SQLite, so a
hint given with ``Select.with_hint`` silently does nothing there. SQLite's own
documented way out is the unary ``+``: ``+column`` has the same value as
``column`` but a condition on it cannot use an index, which leaves the planner
the index we want it to take. Other databases get the plain column.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from core.db.backend import Backend

_UNARY_PLUS = custom_op("+")


def no_index(column: ColumnElement[Any], backend: Backend | None) -> ColumnElement[Any]:
    """``column``, made unusable as an index key on SQLite (its type, hence its bound values, kept);
    unchanged elsewhere and for ``None`` (no hint wanted)."""
    if backend is not Backend.SQLITE:
        return column
    return UnaryExpression(column, operator=_UNARY_PLUS, type_=column.type)
