"""Metadata filters: parsed from a request, validated against the allowed keys, turned into SQL.

Filters are an AND over keys and an OR over the values of one key:

* ``category`` — item category;
* ``group`` — item group (product family);
* ``attr`` — ``name:value`` pairs on the item's JSON attributes.

In a query string they are repeated parameters (``?category=shoes&category=boots
&attr=color:red``); in a JSON body an object (``{"category": [...], "attributes":
{"color": ["red"]}}``). Anything else is refused with a 400 that names the bad key.
Values never reach SQL text: they are bound parameters, and attribute names are
restricted to a safe alphabet because they end up inside a JSON path.

Attribute values are compared as the text of the JSON value: strings as
themselves, numbers as written (``42``, ``4.5``), booleans as ``true``/``false``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, case, cast, false, func
from sqlalchemy.sql.elements import ColumnElement

from core.db import Item
from core.db.backend import Backend
from service.errors import ApiError, ErrorCode

FILTER_KEYS = ("category", "group", "attr")
"""Query-string filter parameters; ``attributes`` is the JSON-body name of ``attr``."""
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_VALUES_PER_KEY = 50
MAX_ATTRIBUTE_KEYS = 10
MAX_VALUE_LENGTH = 255
MAX_ATTR_PARAM_LENGTH = 320
"""A query-string ``attr`` (``name:value``) is at most this long as a whole."""


def _invalid(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_FILTER, message)


@dataclass(frozen=True)
class Filters:
    """A validated filter: empty tuples mean "no constraint"."""

    categories: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.categories or self.groups or self.attributes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form echoed in responses."""
        out: dict[str, Any] = {}
        if self.categories:
            out["category"] = list(self.categories)
        if self.groups:
            out["group"] = list(self.groups)
        if self.attributes:
            out["attributes"] = {name: list(values) for name, values in self.attributes}
        return out

    def clauses(self, backend: Backend) -> list[ColumnElement[bool]]:
        """SQL conditions on :class:`Item` columns for ``backend``."""
        out: list[ColumnElement[bool]] = []
        if self.categories:
            out.append(_in(Item.category, self.categories))
        if self.groups:
            out.append(_in(Item.group_key, self.groups))
        for name, values in self.attributes:
            out.append(_in(attribute_text(name, backend), values))
        return out


def _storable(value: str) -> bool:
    """Text a database can hold: no NUL (PostgreSQL refuses it) and valid UTF-8."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _in(column: ColumnElement[Any], values: tuple[str, ...]) -> ColumnElement[bool]:
    """``column IN values``; values no stored text can equal are left out (never sent to SQL)."""
    usable = [v for v in values if _storable(v)]
    return column.in_(usable) if usable else false()


def attribute_text(name: str, backend: Backend) -> ColumnElement[str]:
    """The text of attribute ``name`` (NULL if absent), the same on SQLite and PostgreSQL."""
    if backend is Backend.SQLITE:
        path = f'$."{name}"'  # safe: ATTRIBUTE_NAME has no quotes or backslashes
        kind = func.json_type(Item.attributes, path)
        return case(
            (kind == "true", "true"), (kind == "false", "false"),
            else_=cast(func.json_extract(Item.attributes, path), String),
        )
    return Item.attributes[name].as_string()  # PostgreSQL ->> already yields JSON text


def _value_text(key: str, value: Any, max_length: int = MAX_VALUE_LENGTH, *, strings_only: bool = False) -> str:
    if strings_only and not isinstance(value, str):
        raise _invalid(f"{key}: values must be strings, got {type(value).__name__}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
        return str(value)
    if isinstance(value, str):
        if len(value) > max_length:
            raise _invalid(f"{key}: a value is longer than {max_length} characters")
        return value
    raise _invalid(f"{key}: values must be strings, numbers or booleans, got {type(value).__name__}")


def _values(key: str, raw: Iterable[Any], *, max_length: int = MAX_VALUE_LENGTH,
            strings_only: bool = False) -> tuple[str, ...]:
    texts = [_value_text(key, v, max_length, strings_only=strings_only) for v in raw]
    if len(texts) > MAX_VALUES_PER_KEY:
        raise _invalid(f"{key}: at most {MAX_VALUES_PER_KEY} values")
    return tuple(dict.fromkeys(texts))


def _check_attribute_name(name: str) -> str:
    if not ATTRIBUTE_NAME.match(name):
        raise _invalid(f"attribute name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
                       "(at most 64 characters)")
    return name


def _attributes(pairs: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if len(pairs) > MAX_ATTRIBUTE_KEYS:
        raise _invalid(f"at most {MAX_ATTRIBUTE_KEYS} attribute names per filter")
    return tuple(sorted(pairs.items()))


def parse_query_filters(args: Mapping[str, list[str]]) -> Filters:
    """Filters from query parameters (a multi-dict as lists); other keys are the caller's."""
    categories = _values("category", args.get("category", []))
    groups = _values("group", args.get("group", []))
    attrs: dict[str, tuple[str, ...]] = {}
    raw_attrs = args.get("attr", [])
    if len(raw_attrs) > MAX_VALUES_PER_KEY:
        raise _invalid(f"attr: at most {MAX_VALUES_PER_KEY} values")
    for raw in raw_attrs:
        name, sep, value = raw.partition(":")
        if not sep:
            raise _invalid(f"attr={raw!r}: expected name:value, e.g. attr=color:red")
        if len(raw) > MAX_ATTR_PARAM_LENGTH:
            raise _invalid(f"attr: a value is longer than {MAX_ATTR_PARAM_LENGTH} characters")
        _check_attribute_name(name)
        attrs[name] = (*attrs.get(name, ()), value)
    attrs = {name: tuple(dict.fromkeys(values)) for name, values in attrs.items()}
    # at most 50 attr parameters in all (checked above), so no separate cap on names
    return Filters(categories=categories, groups=groups, attributes=tuple(sorted(attrs.items())))


def parse_json_filters(body: Any) -> Filters:
    """Filters from a JSON object ``{"category", "group", "attributes"}``; None means none."""
    if body is None:
        return Filters()
    if not isinstance(body, dict):
        raise _invalid("filters must be an object with keys category, group, attributes")
    unknown = sorted(set(body) - {"category", "group", "attributes"})
    if unknown:
        raise _invalid(f"unknown filter key {unknown[0]!r}: allowed keys are category, group, attributes")

    def listed(key: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _invalid(f"filters.{key} must be a list of values")
        return value

    attrs_raw = body.get("attributes", {})
    if not isinstance(attrs_raw, dict):
        raise _invalid("filters.attributes must be an object of name -> list of values")
    if len(attrs_raw) > MAX_ATTRIBUTE_KEYS:
        raise _invalid(f"at most {MAX_ATTRIBUTE_KEYS} attribute names per filter")
    attrs = {_check_attribute_name(name): _values(f"attributes.{name}", listed(name, values))
             for name, values in attrs_raw.items()}
    return Filters(
        categories=_values("category", listed("category", body.get("category", [])), strings_only=True),
        groups=_values("group", listed("group", body.get("group", [])), strings_only=True),
        attributes=_attributes({k: v for k, v in attrs.items() if v}),
    )


def check_known_params(args: Iterable[str], allowed: Iterable[str]) -> None:
    """400 for a query parameter the endpoint does not take (a typo must not be ignored)."""
    allowed_set = set(allowed)
    for name in args:
        if name not in allowed_set:
            raise ApiError(400, ErrorCode.INVALID_FILTER,
                           f"unknown parameter {name!r}: allowed are {', '.join(sorted(allowed_set))}",
                           details={"parameter": name})
