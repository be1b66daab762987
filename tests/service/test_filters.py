"""Filter parsing and the SQL it becomes, on SQLite and PostgreSQL, against a Python reference."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.db import Item, session_scope
from core.db.backend import backend_of
from service.errors import ApiError
from service.filters import Filters, parse_json_filters, parse_query_filters

ITEMS: list[dict[str, Any]] = [
    {"external_id": "a", "category": "shoes", "group_key": "g1",
     "attributes": {"color": "red", "size": 42, "sale": True}},
    {"external_id": "b", "category": "shoes", "group_key": "g1", "attributes": {"color": "blue", "size": 42.5}},
    {"external_id": "c", "category": "bags", "group_key": None, "attributes": {"color": "red", "sale": False}},
    {"external_id": "d", "category": None, "group_key": "g2", "attributes": {}},
    {"external_id": "e", "category": "bags", "group_key": "g2", "attributes": {"color": "Red", "size": "42"}},
]


def matches(filters: Filters, item: dict[str, Any]) -> bool:
    """The reference semantics, written plainly."""
    def text(v: Any) -> str | None:
        if v is None:
            return None
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    if filters.categories and item["category"] not in filters.categories:
        return False
    if filters.groups and item["group_key"] not in filters.groups:
        return False
    return all(text(item["attributes"].get(name)) in values for name, values in filters.attributes)


@pytest.fixture
def filled(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    with session_scope(sessions) as s:
        s.add_all(Item(**row) for row in ITEMS)
    return sessions


CASES = [
    {"category": ["shoes"]},
    {"category": ["shoes", "bags"], "attr": ["color:red"]},
    {"attr": ["size:42"]},
    {"attr": ["size:42.5"]},
    {"attr": ["sale:true"]},
    {"attr": ["sale:false", "sale:true"]},
    {"attr": ["color:red", "size:42"]},
    {"group": ["g2"], "attr": ["color:Red"]},
    {"attr": ["missing:x"]},
    {"category": ["nul\x00byte"]},
    {},
]


@pytest.mark.parametrize("args", CASES)
def test_sql_matches_the_reference(filled: sessionmaker[Session], args: dict[str, list[str]]) -> None:
    filters = parse_query_filters(args)
    with session_scope(filled) as s:
        got = set(s.scalars(select(Item.external_id).where(*filters.clauses(backend_of(s)))))
    assert got == {row["external_id"] for row in ITEMS if matches(filters, row)}


def test_json_filters_accept_typed_values(filled: sessionmaker[Session]) -> None:
    filters = parse_json_filters({"attributes": {"size": [42], "sale": [True]}})
    assert filters.attributes == (("sale", ("true",)), ("size", ("42",)))
    with session_scope(filled) as s:
        got = set(s.scalars(select(Item.external_id).where(*filters.clauses(backend_of(s)))))
    assert got == {"a"}


@pytest.mark.parametrize("args, message", [
    ({"attr": ["color"]}, "name:value"),
    ({"attr": ["bad name:x"]}, "not allowed"),
    ({"attr": ['x"y:1']}, "not allowed"),
    ({"category": ["x" * 256]}, "longer than"),
    ({"category": [str(i) for i in range(51)]}, "at most 50"),
    ({"category": ["same"] * 51}, "at most 50"),
])
def test_bad_query_filters(args: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ApiError, match=message) as info:
        parse_query_filters(args)
    assert info.value.status == 400


@pytest.mark.parametrize("body, message", [
    ([], "must be an object"),
    ({"colour": ["red"]}, "unknown filter key 'colour'"),
    ({"category": "shoes"}, "must be a list"),
    ({"category": [1]}, "must be strings"),
    ({"attributes": {"color": "red"}}, "must be a list"),
    ({"attributes": {"color": [{"nested": 1}]}}, "strings, numbers or booleans"),
    ({"attributes": {f"k{i}": ["v"] for i in range(11)}}, "at most 10"),
    ({"attributes": {"a b": ["v"]}}, "not allowed"),
])
def test_bad_json_filters(body: Any, message: str) -> None:
    with pytest.raises(ApiError, match=message):
        parse_json_filters(body)
