"""Query-string parameters: typed, bounded, and refused with a 400 that names them."""

from __future__ import annotations

import re
from collections.abc import Iterable

from flask import request

from service.errors import bad_param
from service.filters import FILTER_KEYS, Filters, check_known_params, parse_query_filters

_INTEGER = re.compile(r"^-?[0-9]{1,18}$")
_DECIMAL = re.compile(r"^-?[0-9]{1,18}(\.[0-9]{0,18})?([eE][-+]?[0-9]{1,3})?$")
DB_INT_MAX = 2**63 - 1
"""The largest integer a database column (PostgreSQL BIGINT, SQLite INTEGER) holds: ids and
offsets past it must be refused before SQL, where they overflow the driver."""
DEFAULT_K = 10
DEFAULT_PAGE = 50
MAX_PAGE = 200


def check_params(allowed: Iterable[str]) -> None:
    check_known_params(request.args.keys(), allowed)


def int_param(name: str, default: int, *, minimum: int, maximum: int) -> int:
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise bad_param(name, "give it once")
    if not _INTEGER.match(values[0]):
        raise bad_param(name, f"must be an integer, got {values[0]!r}")
    value = int(values[0])
    if not minimum <= value <= maximum:
        raise bad_param(name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def float_param(name: str, *, minimum: float, maximum: float) -> float | None:
    """An optional decimal number in [minimum, maximum] (None when absent); no NaN or infinity."""
    values = request.args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_param(name, "give it once")
    if not _DECIMAL.match(values[0]):
        raise bad_param(name, f"must be a decimal number, got {values[0][:40]!r}")
    value = float(values[0])
    if not minimum <= value <= maximum:
        raise bad_param(name, f"must be between {minimum:g} and {maximum:g}, got {values[0][:40]}")
    return value


def int_value(name: str, raw: object, default: int, *, minimum: int, maximum: int,
              from_text: bool = False) -> int:
    """The same rules for a JSON value (a JSON integer) or a form field (``from_text``)."""
    if raw is None and from_text:
        return default
    if from_text and isinstance(raw, str) and _INTEGER.match(raw):
        value = int(raw)
    elif not from_text and isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif not from_text and isinstance(raw, float) and raw.is_integer():
        value = int(raw)  # JSON 5.0 is the integer 5 to JSON Schema too
    else:
        raise bad_param(name, f"must be an integer, got {raw!r}")
    if not minimum <= value <= maximum:
        raise bad_param(name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def bool_param(name: str, default: bool = False) -> bool:
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise bad_param(name, "give it once")
    if values[0] == "true":
        return True
    if values[0] == "false":
        return False
    raise bad_param(name, f"must be true or false, got {values[0]!r}")


def k_param(max_k: int) -> int:
    return int_param("k", DEFAULT_K, minimum=1, maximum=max_k)


def query_filters() -> Filters:
    return parse_query_filters({key: request.args.getlist(key) for key in FILTER_KEYS})


def page_params() -> tuple[int, int]:
    return (int_param("limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE),
            int_param("offset", 0, minimum=0, maximum=10**9))
