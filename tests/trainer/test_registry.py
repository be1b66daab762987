"""Registering trained and untrained models, scoring and comparing them; the CLI on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from cli.main import lookalike
from core.config import Settings
from core.db import ModelStatus, make_session_factory
from core.embedding import Backbone, ModelSpec, Pretrained, load_model
from core.embedding.backbones import lite_weights_file
from core.registry import get_model, list_models
from tests.trainer.test_data import make_folder
from tests.trainer.test_train import fmnist_config, one_torch_thread  # noqa: F401 - autouse fixture
from trainer.data import DataContext
from trainer.register import (
    NoHoldoutError,
    compare_versions,
    evaluate_version,
    register_trained,
    register_untrained,
    untrained_spec,
)
from trainer.train import train

SHORT = ("epochs=1", "steps_per_epoch=20", "classes_per_batch=6", "images_per_class=16", "optim.lr=3e-3",
         "optim.warmup_epochs=0.2", "data.eval_max_per_class=60", "data.max_per_class=2000")


@pytest.fixture
def trained(tmp_path: Path, fashion_mnist_dir: Path):
    cfg = fmnist_config(fashion_mnist_dir, *SHORT)
    return train(cfg, tmp_path / "run", DataContext(Settings()))


def test_register_evaluate_compare(
    trained, any_db_settings: Settings, sessions: sessionmaker[Session]
):
    settings = any_db_settings
    version = register_trained(sessions, settings, trained, version="m-trained")
    record = get_model(sessions, version)
    assert record.status is ModelStatus.CANDIDATE
    assert Path(record.checkpoint_path) == settings.models_dir / "m-trained.pt"
    assert Path(record.checkpoint_path).is_file()
    assert record.train_config == trained.config.to_dict() and record.spec == trained.spec.to_dict()
    assert record.metrics["map_at_r"] == trained.final_metrics["map_at_r"]
    assert record.metrics["holdout"]["eval_images"] == 240

    # scoring the registered version again on its own holdout reproduces the training-time numbers
    again = evaluate_version(sessions, settings, version)
    assert again.map_at_r == pytest.approx(trained.final_metrics["map_at_r"], abs=1e-6)

    untrained = register_untrained(sessions, settings, ModelSpec(input_size=28), version="m-random")
    with pytest.raises(NoHoldoutError, match="was not trained here"):
        evaluate_version(sessions, settings, untrained)
    comparison = compare_versions(sessions, settings, untrained, version)  # on the trained one's holdout
    assert comparison.metrics[untrained]["n_queries"] == comparison.metrics[version]["n_queries"] == 240
    assert comparison.metrics[untrained]["map_at_r"] == pytest.approx(trained.history[0]["map_at_r"], abs=0.05)
    assert comparison.delta() > 0.05  # training helped, measured on the same images
    assert [m.version for m in list_models(sessions)] == [untrained, version]


def test_untrained_pretrained_model_is_the_frozen_imagenet_features(settings: Settings, sqlite_engine):
    sessions = make_session_factory(sqlite_engine)
    spec = untrained_spec(Backbone.EFFICIENTNET_LITE0, pretrained=True, input_size=64)
    assert spec.embedding_dim == 1280 and spec.pretrained is Pretrained.IMAGENET
    version = register_untrained(sessions, settings, spec)
    model, ckpt = load_model(Path(get_model(sessions, version).checkpoint_path))
    assert ckpt.spec == spec and ckpt.extra == {"untrained": True}
    assert "imagenet features" in get_model(sessions, version).notes
    shipped = torch.load(lite_weights_file(Backbone.EFFICIENTNET_LITE0), map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.body._blocks[5]._project_conv.weight, shipped["_blocks.5._project_conv.weight"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the embedding is exactly the normalised trunk feature vector
        assert torch.allclose(model(x), torch.nn.functional.normalize(model.backbone(x), dim=1), atol=1e-6)

    narrow = register_untrained(sessions, settings, untrained_spec("resnet18", pretrained=False, embedding_dim=64))
    head = load_model(Path(get_model(sessions, narrow).checkpoint_path))[0].head[0].weight
    assert head.shape == (64, 512) and torch.allclose(head @ head.T, torch.eye(64), atol=1e-5)  # orthogonal rows


def test_cli_models_train_evaluate(tmp_path: Path, fashion_mnist_dir: Path):
    env = {"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_TORCH_THREADS": "1"}
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(lookalike, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    out = run("models", "list")
    assert "no models yet" in out
    out = run("models", "init", "--backbone", "small_cnn", "--input-size", "28", "--version", "m-init")
    assert "registered untrained model m-init" in out and "activated m-init" in out  # first model: active

    config = tmp_path / "fm.yaml"
    config.write_text(yaml.safe_dump(fmnist_config(fashion_mnist_dir, *SHORT).to_dict()))
    out = run("train", "--config", str(config), "epochs=1", "steps_per_epoch=5", "--version", "m-cli")
    assert "registered model m-cli (candidate)" in out and "map_at_r=" in out
    run_dir = tmp_path / "home" / "artifacts" / "models" / "runs" / "m-cli"
    assert (run_dir / "report.txt").is_file() and (run_dir / "retrieval.png").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps_per_epoch"] == 5

    listing = json.loads(run("models", "list", "--json"))
    assert [(m["version"], m["status"]) for m in listing] == [("m-cli", "candidate"), ("m-init", "active")]
    run("models", "activate", "m-cli")
    assert json.loads(run("models", "list", "--json"))[0]["status"] == "active"

    metrics = json.loads(run("evaluate", "--model", "active", "--json"))
    assert metrics["n_queries"] == 240 and metrics["map_at_r"] == pytest.approx(listing[0]["map_at_r"], abs=1e-6)
    # shop photos against catalog photos: queries rank the reference folder
    queries, references = make_folder(tmp_path / "shop", 3, 2), make_folder(tmp_path / "catalog", 4, 3)
    metrics = json.loads(run("evaluate", "--model", "m-cli", "--queries", str(queries),
                             "--references", str(references), "--json"))
    assert metrics["n_queries"] == 6 and metrics["n_lone"] == 0 and 0 <= metrics["map_at_r"] <= 1
    compared = json.loads(run("models", "compare", "m-init", "m-cli", "--json"))
    assert set(compared["metrics"]) == {"m-init", "m-cli"}

    bad = runner.invoke(lookalike, ["train", "--config", str(config), "optim.lr=fast"], env=env)
    assert bad.exit_code != 0 and "optim.lr must be a number" in bad.output
    bad = runner.invoke(lookalike, ["models", "activate", "nope"], env=env)
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_cli_train_search_trains_and_registers_the_winner(tmp_path: Path, fashion_mnist_dir: Path):
    """`lookalike train --search FILE`: successive halving first, then the winner on all classes."""
    env = {"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_TORCH_THREADS": "1"}
    config = tmp_path / "fm.yaml"
    config.write_text(yaml.safe_dump(fmnist_config(
        fashion_mnist_dir, "epochs=2", "steps_per_epoch=3", "classes_per_batch=3", "images_per_class=4",
        "data.max_per_class=30", "data.eval_max_per_class=20", "model.embedding_dim=16").to_dict()))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"rungs": [0.5], "validation_fraction": 0.34, "candidates": [
        {"name": "stuck", "overrides": ["optim.lr=1e-12"]},  # cannot learn: must lose
        {"name": "learns", "overrides": ["loss.miner=batch_all", "loss.margin=0.3"]},
    ]}))
    runner = CliRunner()
    result = runner.invoke(lookalike, ["train", "--config", str(config), "--search", str(space),
                                       "--version", "m-searched"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "recipe search: learns wins (validation MAP@R: stuck " in result.output
    assert "registered model m-searched (candidate)" in result.output
    run_dir = tmp_path / "home" / "artifacts" / "models" / "runs" / "m-searched"
    trained = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert trained["loss"]["miner"] == "batch_all" and trained["loss"]["margin"] == 0.3
    assert trained["data"]["validation_fraction"] == 0.0
    assert {r["candidate"] for r in [json.loads(line) for line in
                                     (run_dir / "search" / "search.jsonl").read_text().splitlines()]} == {
        "stuck", "learns"}

    bad = runner.invoke(lookalike, ["train", "--config", str(config), "--search", str(tmp_path / "none.yaml")],
                        env=env)
    assert bad.exit_code != 0 and "none.yaml" in bad.output
    bad = runner.invoke(lookalike, ["train", "--resume", str(run_dir), "--search", "default"], env=env)
    assert bad.exit_code != 0 and "--resume takes the config" in bad.output
