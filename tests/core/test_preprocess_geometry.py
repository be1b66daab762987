"""Input geometry (ModelSpec.resize): squash, centre crop, pad -- in serving and training alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.embedding import Embedder, ModelSpec, ResizeMode, build_model, load_model, save_checkpoint
from core.embedding.preprocess import prepare_image
from trainer.augment import eval_pipeline, to_square_uint8, train_pipeline
from trainer.config import AugmentPolicy, TrainConfig
from trainer.data.images import ArrayList, preload


def banded(width: int, height: int) -> Image.Image:
    """Red top quarter, green middle, blue bottom quarter: what a crop keeps is visible."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[: height // 4, :, 0] = 255
    a[height // 4: 3 * height // 4, :, 1] = 255
    a[3 * height // 4:, :, 2] = 255
    return Image.fromarray(a)


def test_squash_keeps_the_whole_photo_distorted() -> None:
    out = np.asarray(prepare_image(banded(100, 200), 32, ResizeMode.SQUASH))
    assert out.shape == (32, 32, 3)
    assert out[0, 16, 0] == 255 and out[-1, 16, 2] == 255  # top and bottom bands both kept


def test_center_crop_equals_short_side_resize_then_centre_crop() -> None:
    image = banded(100, 300)
    out = np.asarray(prepare_image(image, 60, ResizeMode.CENTER_CROP)).astype(int)
    # The reference recipe, step by step: shorter side to 60 (100x300 -> 60x180), crop the centre.
    reference = image.resize((60, 180), Image.Resampling.BILINEAR).crop((0, 60, 60, 120))
    assert np.abs(out - np.asarray(reference).astype(int)).max() <= 8  # one resample vs two
    # Only the middle third survives: the red top and blue bottom quarters are cut away.
    assert out[:, :, 0].max() == 0 and out[:, :, 2].max() == 0 and (out[:, :, 1] == 255).all()


def test_pad_keeps_everything_undistorted_on_white() -> None:
    out = np.asarray(prepare_image(banded(100, 200), 40, ResizeMode.PAD))
    assert out.shape == (40, 40, 3)
    assert (out[:, :9] == 255).all() and (out[:, -9:] == 255).all()  # 20 px wide photo, white either side
    assert out[1, 20, 0] == 255 and out[1, 20, 1] == 0  # red band at the very top: nothing cropped
    assert out[-2, 20, 2] == 255 and out[-2, 20, 0] == 0  # blue band at the very bottom
    landscape = np.asarray(prepare_image(banded(200, 100), 40, ResizeMode.PAD))
    assert (landscape[:9] == 255).all() and (landscape[-9:] == 255).all()


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_square_photos_are_only_resized(mode: ResizeMode) -> None:
    image = banded(64, 64)
    squash = np.asarray(prepare_image(image, 32, ResizeMode.SQUASH))
    assert np.array_equal(np.asarray(prepare_image(image, 32, mode)), squash)


def test_spec_round_trips_the_geometry_and_old_specs_mean_squash() -> None:
    spec = ModelSpec(resize=ResizeMode.PAD, input_size=32)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["resize"] == "pad"
    old = spec.to_dict()
    del old["resize"]  # a checkpoint from before the field existed
    assert ModelSpec.from_dict(old).resize is ResizeMode.SQUASH
    with pytest.raises(ValueError, match="resize must be one of"):
        ModelSpec(resize="stretch")


def test_checkpoint_carries_the_geometry_and_serving_applies_it(tmp_path) -> None:
    spec = ModelSpec(resize=ResizeMode.CENTER_CROP, input_size=32, embedding_dim=8)
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model(spec))
    model, _ = load_model(path)
    assert model.spec.resize is ResizeMode.CENTER_CROP
    photo = banded(60, 120)
    embedder = Embedder(model, device=torch.device("cpu"))
    served = embedder.embed([photo])
    # Serving crops: the same as feeding the centre-cropped square (an input-size square passes
    # through untouched), and not what the squashed photo gives.
    cropped = embedder.embed([prepare_image(photo, 32, ResizeMode.CENTER_CROP)])
    squashed = embedder.embed([prepare_image(photo, 32, ResizeMode.SQUASH)])
    assert np.allclose(served, cropped, atol=1e-6)
    assert not np.allclose(served, squashed, atol=1e-3)


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_training_pixels_follow_the_spec_geometry(mode: ResizeMode) -> None:
    spec = ModelSpec(resize=mode, input_size=32)
    photo = banded(50, 100)
    expected = torch.from_numpy(np.asarray(prepare_image(photo, 32, mode)).copy()).permute(2, 0, 1)
    assert torch.equal(eval_pipeline(spec)(photo), expected)
    assert torch.equal(train_pipeline(spec, AugmentPolicy.NONE)(photo), expected)
    assert torch.equal(to_square_uint8(photo, 32, mode), expected)
    stored = preload(ArrayList(np.asarray(photo)[None], ["a"]), 32, mode)
    assert np.array_equal(stored.pixels[0], expected.permute(1, 2, 0).numpy())


def test_crop_flip_policy_never_touches_colours() -> None:
    spec = ModelSpec(input_size=32)
    flat = Image.new("RGB", (32, 32), (200, 40, 90))
    pipeline = train_pipeline(spec, AugmentPolicy.CROP_FLIP)
    for seed in range(10):
        torch.manual_seed(seed)
        out = pipeline(flat)
        assert (out[0] == 200).all() and (out[1] == 40).all() and (out[2] == 90).all()
    jitter = train_pipeline(spec, AugmentPolicy.PRODUCT)
    torch.manual_seed(0)
    assert not all(bool((jitter(flat)[0] == 200).all()) for _ in range(10))


def test_config_carries_geometry_and_schedule_into_the_spec() -> None:
    cfg = TrainConfig.from_yaml(None, ["model.resize=pad", "optim.schedule=constant"])
    assert cfg.model.spec().resize is ResizeMode.PAD
    assert cfg.to_dict()["optim"]["schedule"] == "constant"
    with pytest.raises(ValueError, match="resize"):
        TrainConfig.from_yaml(None, ["model.resize=stretch"])
