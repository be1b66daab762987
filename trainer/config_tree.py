"""Building a dataclass tree from plain data: typed checks, enums by value, dotted overrides.

The generic half of :mod:`trainer.config`: ``build(cls, data)`` checks every key
against the dataclass fields (unknown keys and wrong types fail with the dotted key
named), and ``apply_overrides`` sets ``a.b.c=value`` pairs parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from dataclasses import fields
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A training config key or value is invalid; the message names the key."""


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    out = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is not a section")
            node = child
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
