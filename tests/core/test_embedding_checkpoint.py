"""Checkpoints: round trip, atomic writes, spec validation, torch.compile prefixes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from core.embedding import (
    Backbone,
    CheckpointError,
    ModelSpec,
    Pretrained,
    SpecMismatchError,
    build_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from core.embedding.backbones import torchvision_weight_files

SPEC = ModelSpec(embedding_dim=16, input_size=32, head_batchnorm=True)


def _trained_looking_model(spec: ModelSpec = SPEC) -> torch.nn.Module:
    """A model whose BatchNorm running stats are no longer the initial ones."""
    torch.manual_seed(7)
    model = build_model(spec)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, spec.input_size, spec.input_size))
    return model.eval()


def _embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    model = _trained_looking_model()
    x = torch.randn(5, 3, 32, 32)
    path = tmp_path / "models" / "m1.pt"
    save_checkpoint(path, model, metrics={"map_at_r": 0.42, "per_class": [0.1, 0.2]}, extra={"epochs": 3})

    loaded, ckpt = load_model(path, expected_spec=SPEC)
    assert not loaded.training
    assert ckpt.spec == SPEC == loaded.spec
    assert ckpt.metrics == {"map_at_r": 0.42, "per_class": [0.1, 0.2]} and ckpt.extra == {"epochs": 3}
    assert torch.equal(_embed(loaded, x), _embed(model, x))
    assert [p.name for p in path.parent.iterdir()] == ["m1.pt"], "no temporary files left behind"


def test_saving_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _trained_looking_model(), metrics={"v": 1})
    save_checkpoint(path, _trained_looking_model(), metrics={"v": 2})
    assert read_checkpoint(path).metrics == {"v": 2}


def test_unserialisable_metrics_fail_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    with pytest.raises(TypeError, match="metrics must be JSON-serialisable"):
        save_checkpoint(path, _trained_looking_model(), metrics={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_spec_mismatch_names_the_differing_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _trained_looking_model())
    expected = SPEC.replace(embedding_dim=32, input_size=64)
    with pytest.raises(SpecMismatchError) as info:
        load_model(path, expected_spec=expected)
    message = str(info.value)
    assert str(path) in message
    assert "embedding_dim: " in message and "has 16, expected 32" in message
    assert "input_size: " in message and "has 32, expected 64" in message
    assert set(info.value.differences) == {"embedding_dim", "input_size"}


def test_compiled_model_is_saved_without_the_wrapper_prefix(tmp_path: Path) -> None:
    model = _trained_looking_model()
    x = torch.randn(3, 3, 32, 32)
    reference = _embed(model, x)
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_checkpoint(tmp_path / "whole.pt", compiled)
    # A trainer may also compile only the trunk.
    model.backbone = torch.compile(model.backbone)
    save_checkpoint(tmp_path / "trunk.pt", model)

    for name in ("whole.pt", "trunk.pt"):
        ckpt = read_checkpoint(tmp_path / name)
        assert not any("_orig_mod" in k for k in ckpt.state_dict), name
        loaded, _ = load_model(tmp_path / name)
        assert torch.equal(_embed(loaded, x), reference), name


def test_save_refuses_other_modules(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="expected an EmbeddingNet"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))


def test_loading_needs_no_pretrained_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of an ImageNet-initialised model carries its weights; the hub cache is irrelevant."""
    weights_dir = tmp_path / "hub"
    weights_dir.mkdir()
    torch.save(tvm.resnet18(weights=None).state_dict(), weights_dir / torchvision_weight_files(Backbone.RESNET18)[0])
    spec = ModelSpec.for_backbone(Backbone.RESNET18, embedding_dim=8, input_size=32, pretrained=Pretrained.IMAGENET)
    model = build_model(spec, weights_dir=weights_dir).eval()
    save_checkpoint(tmp_path / "r18.pt", model)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    loaded, ckpt = load_model(tmp_path / "r18.pt", expected_spec=spec)
    assert ckpt.spec.pretrained is Pretrained.IMAGENET
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_embed(loaded, x), _embed(model, x))


def test_bad_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a Lookalike embedding checkpoint"):
        read_checkpoint(foreign)


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _trained_looking_model())
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(path)


def test_weights_that_do_not_fit_the_spec_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _trained_looking_model())
    payload = torch.load(path, weights_only=True)
    payload["spec"]["embedding_dim"] = 8  # spec edited, weights not
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(path)


def test_checkpoint_is_readable_by_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(ModelSpec(input_size=28)))
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044
