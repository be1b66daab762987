"""TrainConfig: YAML, dotted overrides, typed checks, the shipped examples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import DeviceChoice
from core.embedding import Backbone, Pretrained
from trainer.components import build_network, build_optimizer
from trainer.config import ConfigError, DataSource, LossKind, MinerKind, TrainConfig

CONFIGS = sorted((Path(__file__).parents[2] / "trainer" / "configs").glob("*.yaml"))


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\noptim:\n  lr: 0.01\nmodel:\n  backbone: resnet18\n")
    cfg = TrainConfig.from_yaml(path, ["optim.lr=3e-4", "data.holdout_classes=[6, 7]", "loss.miner=SEMI_HARD",
                                       "model.freeze=backbone.layer1", "device=cpu", "amp=false"])
    assert cfg.epochs == 3 and cfg.optim.lr == 3e-4 and cfg.optim.weight_decay == 1e-4  # default kept
    assert cfg.data.holdout_classes == ["6", "7"] and cfg.model.freeze == ["backbone.layer1"]
    assert cfg.loss.miner is MinerKind.SEMI_HARD and cfg.device is DeviceChoice.CPU and cfg.amp is False
    assert cfg.model.spec().backbone is Backbone.RESNET18 and cfg.model.spec().input_size == 224
    # the resolved config round-trips through YAML
    cfg.save_yaml(tmp_path / "resolved.yaml")
    assert TrainConfig.from_yaml(tmp_path / "resolved.yaml") == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_a_section_override_merges_into_the_section(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  miner: batch_all\n  margin: 0.5\n")
    cfg = TrainConfig.from_yaml(path, ["loss={margin: 0.3, squared: true}"])
    assert cfg.loss.margin == 0.3 and cfg.loss.squared is True and cfg.loss.miner is MinerKind.BATCH_ALL


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], r"unknown key\(s\) \['optim.lrr'\]"),
        (["epochs=1.5"], "epochs must be an integer"),
        (["epochs=0"], "epochs must be >= 1"),
        (["amp=maybe"], "amp must be true or false"),
        (["model.backbone=vgg"], "model.backbone must be one of"),
        (["epochs"], "not of the form key=value"),
        (["epochs.x=1"], "epochs must be an integer"),
        (["optim=1", "optim.lr=2"], "'optim' is not a section"),
        (["loss.miner=hard_pairs"], "does not go with loss.kind 'triplet'"),
        (["data.source=pairs"], "set loss.kind=contrastive"),
        (["images_per_class=1"], "images_per_class must be >= 2"),
        (["data.holdout_fraction=1"], r"holdout_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_values_are_named(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_yaml(None, overrides)


def test_bad_yaml_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_examples_are_valid(path: Path):
    cfg = TrainConfig.from_yaml(path)
    assert cfg.to_dict()["data"]["source"] in {s.value for s in DataSource}
    if cfg.data.source is DataSource.PAIRS:
        assert cfg.loss.kind is LossKind.CONTRASTIVE
    if cfg.model.freeze:
        # the freeze prefixes name real parameters and leave the rest trainable
        # (random weights here: only the names and the optimizer groups matter)
        model = build_network(dataclasses.replace(cfg.model, pretrained=Pretrained.NONE))
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert any(n.startswith("backbone.body._blocks.2.") for n in frozen)
        assert not any(n.startswith(("backbone.body._blocks.3.", "backbone.body._blocks.10.")) for n in frozen)
        assert build_optimizer(model, cfg.optim).param_groups
    assert len(CONFIGS) >= 3
