"""Building a dataclass tree from plain data: typed checks, enums by value, dotted overrides.

The generic half of :mod:`trainer.config`: ``build(cls, data)`` checks every key
against the dataclass fields (unknown keys and wrong types fail with the dotted key
named), and overrides are applied by one function, :func:`set_overrides`, whether they
come as the CLI's ``a.b.c=value`` strings (:func:`parse_override`, values parsed as YAML)
or as the API's JSON object (:func:`override_pairs`); see docs/CONFIG.md, "Training
config overrides".
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A training config key or value is invalid; the message names the key."""


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    return set_overrides(data, [parse_override(item) for item in overrides])


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b.c=value"`` as ``("a.b.c", value)``, the value parsed as YAML (the CLI's form)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc


MAX_KEY_DEPTH = 8
"""No training config key is more than two levels deep; deeper nesting is refused, not recursed into."""


def override_pairs(overrides: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A JSON object of overrides (the API's form) as ``(dotted key, value)`` pairs.

    Keys may be dotted or nested: ``{"loss.margin": 0.3}`` and ``{"loss": {"margin": 0.3}}``
    are the same override, and a nested object sets only the keys it names (the rest of
    the section is kept). An empty object names no key and is kept as a value, so that
    it fails where a section is not expected.
    """
    pairs: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            if dotted.count(".") >= MAX_KEY_DEPTH:
                raise ConfigError(f"unknown key {dotted[:200]!r}: no training config key is nested that deep")
            pairs.extend(override_pairs(value, dotted + "."))
        else:
            pairs.append((dotted, value))
    return pairs


def set_overrides(data: dict[str, Any], pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``data`` with each ``(dotted key, value)`` set; the one place overrides are applied.

    Intermediate sections are created where missing; a key below a value that is not a
    section fails with both named. The result is checked by :func:`build`, not here.
    """
    out = _deepcopy(data)
    for key, value in pairs:
        parts = key.split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"override key {key[:200]!r} has an empty part")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is not a section")
            node = child
        if isinstance(value, Mapping):  # a whole section: merged into what is there
            current = node.get(parts[-1])
            if not isinstance(current, dict):
                node[parts[-1]] = current = {}
            current.update(set_overrides(current, override_pairs(value)))
        else:
            node[parts[-1]] = value
    return out


def _deepcopy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in data.items()}


def build(cls: type, data: Any, prefix: str = "") -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; {where} has {sorted(known)}")
    values = {name: _coerce(prefix + name, value, hints[name]) for name, value in data.items()}
    return cls(**values)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check and convert one value to its declared type (enums from their values)."""
    origin = get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, key + ".")
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, options[0])
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        (item_type,) = get_args(annotation)
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(str(value).lower() if isinstance(value, str) else value)
        except ValueError:
            allowed = [m.value for m in annotation]
            raise ConfigError(f"{key} must be one of {allowed}, got {value!r}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def plain(value: Any) -> Any:
    """Enums to their values, tuples to lists, recursively: JSON- and YAML-safe."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
