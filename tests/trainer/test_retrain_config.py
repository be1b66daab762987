"""The retrain's config: the active model's, the request's overrides on top, refused with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import DeviceChoice
from core.db import make_session_factory
from core.registry import activate_model, register_model
from trainer.config import ConfigError, DataSource, LabelKind, MinerKind, TrainConfig
from trainer.retrain_config import retrain_config

REPO = Path(__file__).resolve().parents[2]

ACTIVE_CONFIG: dict[str, Any] = {
    "epochs": 4, "loss": {"margin": 0.5, "miner": "batch_all"}, "optim": {"lr": 0.002},
    "data": {"source": "catalog", "label": "group", "holdout_classes": ["g1"]},
}
"""What the active model was trained with: every value differs from the default."""


@pytest.fixture
def db(sqlite_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(sqlite_engine)


def _activate(sessions: sessionmaker[Session], train_config: dict[str, Any], version: str = "m-active") -> None:
    register_model(sessions, checkpoint_path=Path("/nonexistent.pt"), spec={}, train_config=train_config,
                   version=version)
    activate_model(sessions, version)


def test_the_config_code_the_api_uses_loads_without_torch() -> None:
    """POST /api/v1/retrain validates with trainer.retrain_config; loading it must not load torch."""
    code = ("import sys, trainer.retrain_config, trainer.config; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_overrides_go_on_top_of_the_active_models_config(db: sessionmaker[Session]) -> None:
    _activate(db, ACTIVE_CONFIG)
    cfg = retrain_config(db, DeviceChoice.CPU, {"loss.margin": 0.3, "optim": {"weight_decay": 0.0}},
                         ["epochs=2"])
    assert cfg.loss.margin == 0.3 and cfg.optim.weight_decay == 0.0 and cfg.epochs == 2  # overridden
    assert cfg.loss.miner is MinerKind.BATCH_ALL and cfg.optim.lr == 0.002  # kept from the active model
    assert cfg.data.label is LabelKind.GROUP and cfg.data.holdout_classes == ["g1"]  # a catalog config stays
    assert cfg.data.source is DataSource.CATALOG and cfg.device is DeviceChoice.CPU and cfg.progress is False


def test_the_cli_form_comes_after_the_json_form_and_both_mean_the_same(db: sessionmaker[Session]) -> None:
    _activate(db, ACTIVE_CONFIG)
    assert retrain_config(db, DeviceChoice.CPU, {"epochs": 3}, ["epochs=5"]).epochs == 5
    dotted = retrain_config(db, DeviceChoice.CPU, {"loss.margin": 0.25, "loss.squared": True})
    nested = retrain_config(db, DeviceChoice.CPU, {"loss": {"margin": 0.25, "squared": True}})
    text = retrain_config(db, DeviceChoice.CPU, overrides=["loss={margin: 0.25, squared: true}"])
    assert dotted == nested == text
    assert dotted.loss.miner is MinerKind.BATCH_ALL  # a section override merges, it does not reset


def test_a_config_trained_on_files_is_switched_to_the_catalog_before_the_overrides(
        db: sessionmaker[Session]) -> None:
    _activate(db, {"data": {"source": "folder", "path": "/data/photos", "label": "item",
                            "holdout_classes": ["boots"]}, "optim": {"lr": 0.002}})
    cfg = retrain_config(db, DeviceChoice.AUTO, {"data.holdout_classes": ["hats"]})
    assert cfg.data.source is DataSource.CATALOG and cfg.data.path == "" and cfg.data.label is LabelKind.CATEGORY
    assert cfg.data.holdout_classes == ["hats"] and cfg.optim.lr == 0.002


def test_a_fixed_key_may_name_the_value_the_retrain_sets(db: sessionmaker[Session]) -> None:
    """A complete config sent as overrides says where it trains; only another value is refused."""
    cfg = retrain_config(db, DeviceChoice.CPU, {"data": {"source": "Catalog", "label": "item"}, "progress": False})
    assert cfg.data.source is DataSource.CATALOG and cfg.data.label is LabelKind.ITEM and cfg.progress is False


def test_without_an_active_model_the_defaults_are_the_base(db: sessionmaker[Session]) -> None:
    cfg = retrain_config(db, DeviceChoice.CPU, {"loss.margin": 0.3})
    expected = TrainConfig.from_dict({"loss": {"margin": 0.3}, "device": "cpu", "progress": False,
                                      "data": {"source": "catalog", "label": "category"}})
    assert cfg == expected


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ({"loss.marign": 0.3}, [], r"unknown key\(s\) \['loss.marign'\]"),
        ({"loss": {"marign": 0.3}}, [], r"unknown key\(s\) \['loss.marign'\]"),
        ({"loss.margin": "wide"}, [], "loss.margin must be a number, got 'wide'"),
        ({"loss.margin": -1}, [], "loss.margin must be >= 0"),
        ({"epochs": "3"}, [], "epochs must be an integer, got '3'"),
        ({"epochs": {}}, [], r"epochs must be an integer, got \{\}"),
        ({"loss.miner": "hard_pairs"}, [], "loss.miner 'hard_pairs' does not go with loss.kind 'triplet'"),
        ({"data.source": "folder"}, [], "data.source cannot be overridden: a retrain always trains on the catalog"),
        ({"data": {"source": "pairs"}}, [], r"data.source cannot be overridden: .* \(data.source is catalog\)"),
        ({"progress": True}, [], r"progress cannot be overridden: .* \(progress is false\)"),
        ({"progress.x": False}, [], "progress.x cannot be overridden"),
        ({"loss..margin": 0.3}, [], "has an empty part"),
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": 1}}}}}}}}}}, [], "nested that deep"),
        ({}, ["optim.lrr=1"], r"unknown key\(s\) \['optim.lrr'\]"),
        ({}, ["epochs"], "not of the form key=value"),
    ],
)
def test_a_bad_override_is_refused_with_the_key_named(db: sessionmaker[Session], config: dict, overrides: list[str],
                                                      message: str) -> None:
    _activate(db, ACTIVE_CONFIG)
    with pytest.raises(ConfigError, match=message):
        retrain_config(db, DeviceChoice.CPU, config, overrides)


def test_an_active_config_that_no_longer_loads_is_named_as_such(db: sessionmaker[Session]) -> None:
    _activate(db, {"loss": {"kind": "arcface"}}, version="m-old")
    with pytest.raises(ConfigError, match="the active model m-old's training config no longer loads: loss.kind"):
        retrain_config(db, DeviceChoice.CPU, {"epochs": 2})
