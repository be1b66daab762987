"""The model spec: everything needed to rebuild an embedding network and feed it.

A checkpoint stores its spec next to its weights, and a model loaded for serving is
checked against the spec the database recorded, so the spec round-trips through a
plain JSON-safe dict (enums as their values, tuples as lists).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, fields
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite builder feeds (x - 127) / 128 on 0..255 pixels; its
# converted weights are most at home with the same normalisation.
LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

MIN_INPUT_SIZE = 16
"""Below this every backbone's stride-32 trunk collapses to nothing useful."""


class Backbone(str, enum.Enum):
    SMALL_CNN = "small_cnn"
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    MOBILENET_V3_SMALL = "mobilenet_v3_small"
    MOBILENET_V3_LARGE = "mobilenet_v3_large"
    EFFICIENTNET_B0 = "efficientnet_b0"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    EFFICIENTNET_LITE1 = "efficientnet_lite1"
    EFFICIENTNET_LITE2 = "efficientnet_lite2"

    @property
    def is_lite(self) -> bool:
        """One of the EfficientNet-Lite family (its own loader and normalisation)."""
        return self in _LITE_INPUT_SIZES

    @property
    def natural_input_size(self) -> int:
        """The resolution the backbone was designed (and pretrained) for."""
        if self is Backbone.SMALL_CNN:
            return 64
        return _LITE_INPUT_SIZES.get(self, 224)


# The resolutions of efficientnet_lite_pytorch's params table (TF's Lite builder):
# lite0 224, lite1 240, lite2 260.
_LITE_INPUT_SIZES: dict[Backbone, int] = {
    Backbone.EFFICIENTNET_LITE0: 224,
    Backbone.EFFICIENTNET_LITE1: 240,
    Backbone.EFFICIENTNET_LITE2: 260,
}


class Distance(str, enum.Enum):
    EUCLIDEAN = "euclidean"
    COSINE = "cosine"

    @property
    def annoy_metric(self) -> str:
        """Annoy's name for the metric ("angular" is Annoy's cosine distance)."""
        return "euclidean" if self is Distance.EUCLIDEAN else "angular"


class Pretrained(str, enum.Enum):
    NONE = "none"
    IMAGENET = "imagenet"


class ResizeMode(str, enum.Enum):
    """How a photo of any aspect ratio becomes the network's ``input_size`` square.

    Part of the spec (and so of every checkpoint) because a network is only as good as
    the geometry it was trained with: serving must feed what training fed.
    """

    SQUASH = "squash"  # resize the whole photo to the square; aspect distorted, nothing lost
    CENTER_CROP = "center_crop"  # shorter side to the square's side, centre crop (ImageNet's recipe)
    PAD = "pad"  # longer side to the square's side, centred on white (product-photo background)


class SpecMismatchError(ValueError):
    """A model or checkpoint's spec differs from the one the caller expected.

    ``differences`` maps each differing field to ``(actual, expected)``.
    """

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        self.differences = differences or {}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, input geometry and normalisation of one embedding network.

    Enum fields also accept their string values (coerced on construction), so a spec
    can come straight from a config file.
    """

    backbone: Backbone = Backbone.SMALL_CNN
    embedding_dim: int = 128
    input_size: int = 64
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    distance: Distance = Distance.EUCLIDEAN
    pretrained: Pretrained = Pretrained.NONE
    head_batchnorm: bool = False
    """BatchNorm1d after the projection, before L2 normalisation (changes the weights' layout)."""
    resize: ResizeMode = ResizeMode.SQUASH
    """Input geometry; checkpoints written before it existed were squashed, hence the default."""

    def __post_init__(self) -> None:
        for name, enum_type in (("backbone", Backbone), ("distance", Distance), ("pretrained", Pretrained),
                                ("resize", ResizeMode)):
            object.__setattr__(self, name, _coerce_enum(name, getattr(self, name), enum_type))
        for name in ("embedding_dim", "input_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"ModelSpec.{name} must be an int, got {value!r}")
        if self.embedding_dim < 1:
            raise ValueError(f"ModelSpec.embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"ModelSpec.input_size must be >= {MIN_INPUT_SIZE}, got {self.input_size}")
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ModelSpec.std must be positive, got {self.std}")
        if not isinstance(self.head_batchnorm, bool):
            raise ValueError(f"ModelSpec.head_batchnorm must be a bool, got {self.head_batchnorm!r}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: enums as values, tuples as lists."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones fail."""
        if not isinstance(data, dict):
            raise ValueError(f"a model spec must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model spec field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def for_backbone(cls, backbone: Backbone | str, **overrides: Any) -> ModelSpec:
        """The spec a backbone is happiest with (its natural input size and normalisation)."""
        backbone = _coerce_enum("backbone", backbone, Backbone)
        defaults: dict[str, Any] = {"backbone": backbone, "input_size": backbone.natural_input_size}
        if backbone.is_lite:
            defaults.update(mean=LITE_MEAN, std=LITE_STD)
        defaults.update(overrides)
        return cls(**defaults)

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def differences(self, other: ModelSpec) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, as ``{name: (self's value, other's value)}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if not _same(mine[k], theirs[k])}

    def check_matches(self, expected: ModelSpec, *, what: str = "model") -> None:
        """Raise :class:`SpecMismatchError` naming every field that differs from ``expected``."""
        diffs = self.differences(expected)
        if diffs:
            listing = "; ".join(f"{k}: {what} has {a!r}, expected {b!r}" for k, (a, b) in diffs.items())
            raise SpecMismatchError(f"{what} spec does not match the expected spec ({listing})", diffs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(math.isclose(x, y, rel_tol=0, abs_tol=1e-9) for x, y in zip(a, b))
    return bool(a == b)


def _coerce_enum(name: str, value: Any, enum_type: type[enum.Enum]) -> Any:
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        allowed = [m.value for m in enum_type]
        raise ValueError(f"ModelSpec.{name} must be one of {allowed}, got {value!r}") from None


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"ModelSpec.{name} must be three numbers (R, G, B), got {value!r}") from None
    if len(items) != 3 or not all(math.isfinite(v) for v in items):
        raise ValueError(f"ModelSpec.{name} must be three finite numbers (R, G, B), got {value!r}")
    return items  # type: ignore[return-value]
