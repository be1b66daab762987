"""The config a retrain trains with: the active model's, with the request's overrides on top.

One function, :func:`retrain_config`, used twice for every retrain: by whoever queues it
(``POST /api/v1/retrain``, ``lookalike retrain``), to refuse a bad override before a job
exists, and by the worker (worker/flows/retrain.py), which resolves it again against
the model active when the job runs. The contract is in docs/CONFIG.md, "Training config
overrides". Like :mod:`trainer.config`, this module loads without torch (the API imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.config import DeviceChoice
from core.registry import active_model
from trainer.config import ConfigError, DataSource, LabelKind, TrainConfig
from trainer.config_tree import override_pairs, parse_override, set_overrides

CATALOG_SWITCH: tuple[tuple[str, Any], ...] = (
    ("data.path", ""), ("data.eval_path", ""), ("data.holdout_classes", []),
    ("data.label", LabelKind.CATEGORY.value),
)
"""Applied when the base config trained on files (idx, folder): the retrain trains on the
catalog instead, where every item has a category but often a single photo, and the
file source's holdout classes mean nothing. The request's overrides come after."""

FIXED: dict[str, tuple[str | bool, str]] = {
    "data.source": (DataSource.CATALOG.value, "a retrain always trains on the catalog"),
    "progress": (False, "a retrain reports its progress in its job, not on a terminal"),
}
"""Keys a retrain sets itself, with why: an override naming the same value is accepted (a full
config sent as overrides says ``data.source: catalog``), any other is refused rather than ignored."""


def _is_fixed_value(value: Any, fixed: str | bool) -> bool:
    if isinstance(fixed, bool):
        return value is fixed
    return isinstance(value, str) and value.lower() == fixed  # enums are read case-blind


def retrain_config(sessions: sessionmaker[Session], device: DeviceChoice,
                   config: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The active model's training config (the defaults without one), on ``device`` and on
    the catalog, with ``config`` (the API's JSON object, dotted or nested keys) and then
    ``overrides`` (the CLI's ``key=value`` strings) applied on top.

    Raises :class:`ConfigError` naming the offending key for an unknown key, a bad value,
    a combination the trainer refuses, or another value for a key in :data:`FIXED`.
    """
    text = [parse_override(item) for item in overrides]
    requested = [*override_pairs(config or {}), *(pair for key, value in text for pair in override_pairs({key: value}))]
    for key, value in requested:
        fixed = next((k for k in FIXED if key == k or key.startswith(k + ".")), None)
        if fixed is not None and not (key == fixed and _is_fixed_value(value, FIXED[fixed][0])):
            fixed_value, why = FIXED[fixed]
            raise ConfigError(f"{key} cannot be overridden: {why} ({fixed} is {str(fixed_value).lower()})")
    current = active_model(sessions)
    base: dict[str, Any] = dict(current.train_config) if current is not None and current.train_config else {}
    try:
        base_source = TrainConfig.from_dict(base).data.source
    except ConfigError as exc:
        version = current.version if current is not None else "?"
        raise ConfigError(f"the active model {version}'s training config no longer loads: {exc}") from exc
    own: list[tuple[str, Any]] = [("device", device.value)]
    if base_source is not DataSource.CATALOG:
        own += CATALOG_SWITCH
    own += [(key, value) for key, (value, _why) in FIXED.items()]
    return TrainConfig.from_dict(set_overrides(base, [*own, *requested]))
