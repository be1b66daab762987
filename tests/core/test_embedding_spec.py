"""ModelSpec: validation, JSON-safe round trip, natural defaults, mismatch reporting."""

from __future__ import annotations

import json

import pytest

from core.embedding import Backbone, Distance, ModelSpec, Pretrained, SpecMismatchError
from core.embedding.spec import IMAGENET_MEAN, IMAGENET_STD


def test_defaults_follow_the_contract() -> None:
    spec = ModelSpec()
    assert spec.backbone is Backbone.SMALL_CNN
    assert (spec.embedding_dim, spec.input_size) == (128, 64)
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert spec.distance is Distance.EUCLIDEAN and spec.pretrained is Pretrained.NONE


@pytest.mark.parametrize("backbone", list(Backbone))
def test_dict_round_trip_is_json_safe(backbone: Backbone) -> None:
    spec = ModelSpec.for_backbone(backbone, embedding_dim=64, distance=Distance.COSINE, head_batchnorm=True)
    as_dict = spec.to_dict()
    # Through real JSON text: enums must be plain values, tuples plain lists.
    restored = ModelSpec.from_dict(json.loads(json.dumps(as_dict)))
    assert restored == spec
    assert as_dict["backbone"] == backbone.value and as_dict["distance"] == "cosine"
    assert isinstance(as_dict["mean"], list) and isinstance(restored.mean, tuple)


def test_strings_are_coerced_to_enums() -> None:
    spec = ModelSpec(backbone="resnet18", distance="cosine", pretrained="imagenet")  # type: ignore[arg-type]
    assert spec.backbone is Backbone.RESNET18
    assert spec.distance is Distance.COSINE and spec.pretrained is Pretrained.IMAGENET


def test_partial_dict_takes_defaults() -> None:
    assert ModelSpec.from_dict({"embedding_dim": 32}) == ModelSpec(embedding_dim=32)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"backbone": "vgg16"}, "backbone must be one of"),
        ({"embedding_dim": 0}, "embedding_dim must be >= 1"),
        ({"embedding_dim": 12.5}, "embedding_dim must be an int"),
        ({"input_size": 8}, "input_size must be >= 16"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
        ({"mean": [0.5, 0.5]}, "mean must be three finite numbers"),
        ({"distance": "manhattan"}, "distance must be one of"),
        ({"colour": "red"}, "unknown model spec field(s) ['colour']"),
    ],
)
def test_bad_values_are_rejected_clearly(data: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ModelSpec.from_dict(data)
    assert fragment in str(info.value)


LITE_SIZES = {Backbone.EFFICIENTNET_LITE0: 224, Backbone.EFFICIENTNET_LITE1: 240, Backbone.EFFICIENTNET_LITE2: 260}


def test_for_backbone_uses_natural_input_sizes() -> None:
    assert ModelSpec.for_backbone(Backbone.SMALL_CNN).input_size == 64
    for backbone in set(Backbone) - {Backbone.SMALL_CNN} - set(LITE_SIZES):
        assert ModelSpec.for_backbone(backbone).input_size == 224
        assert not backbone.is_lite
        spec = ModelSpec.for_backbone(backbone)
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert ModelSpec.for_backbone("resnet18", input_size=96).input_size == 96


@pytest.mark.parametrize(("backbone", "size"), list(LITE_SIZES.items()))
def test_lite_backbones_have_their_own_size_and_the_lite_normalisation(backbone: Backbone, size: int) -> None:
    assert backbone.is_lite and backbone.natural_input_size == size
    lite = ModelSpec.for_backbone(backbone)
    assert lite.input_size == size
    assert lite.mean == pytest.approx((127 / 255,) * 3) and lite.std == pytest.approx((128 / 255,) * 3)
    assert ModelSpec.for_backbone(backbone.value, input_size=64).input_size == 64
    assert ModelSpec.from_dict(lite.to_dict()) == lite


def test_annoy_metric_names() -> None:
    assert Distance.EUCLIDEAN.annoy_metric == "euclidean"
    assert Distance.COSINE.annoy_metric == "angular"


def test_check_matches_lists_every_differing_field() -> None:
    actual = ModelSpec(embedding_dim=64, input_size=32)
    expected = ModelSpec(embedding_dim=128, input_size=32, distance=Distance.COSINE)
    with pytest.raises(SpecMismatchError) as info:
        actual.check_matches(expected, what="checkpoint x.pt")
    message = str(info.value)
    assert "embedding_dim: checkpoint x.pt has 64, expected 128" in message
    assert "distance: checkpoint x.pt has 'euclidean', expected 'cosine'" in message
    assert "input_size" not in message
    assert set(info.value.differences) == {"embedding_dim", "distance"}
    actual.check_matches(ModelSpec(embedding_dim=64, input_size=32))  # equal: no error
