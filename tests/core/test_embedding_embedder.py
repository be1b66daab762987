"""Preprocessing and the batched Embedder, checked against plain per-image references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import DeviceChoice
from core.embedding import (
    DeviceUnavailableError,
    Embedder,
    ModelSpec,
    build_model,
    eval_transform,
    images_to_batch,
    resolve_device,
    save_checkpoint,
)

SPEC = ModelSpec(embedding_dim=32, input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), head_batchnorm=True)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    """Random photos of assorted sizes and modes, like a real catalog."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(img.convert("L") if i % 5 == 4 else img)
    return out


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model(SPEC)
    model.train()
    with torch.no_grad():  # move BatchNorm running stats away from their initial values
        model(torch.randn(16, 3, 32, 32))
    return model.eval()


def _reference(model: torch.nn.Module, images: list[Image.Image]) -> np.ndarray:
    """One image at a time through the per-image transform, contiguous layout."""
    transform = eval_transform(model.spec)
    with torch.no_grad():
        return np.stack([model(transform(img)[None]).numpy()[0] for img in images])


# ------------------------------------------------------------------ preprocessing
def test_normalisation_matches_the_formula() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch = images_to_batch([Image.fromarray(pixels)], SPEC)
    expected = (pixels / 255.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch[0].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_whole_image_is_kept_not_centre_cropped() -> None:
    """A green band on the top tenth of a tall photo survives (a centre crop would cut it)."""
    pixels = np.zeros((200, 100, 3), dtype=np.uint8)
    pixels[:20] = (0, 255, 0)
    plain = ModelSpec(input_size=40, mean=(0, 0, 0), std=(1, 1, 1))
    batch = images_to_batch([Image.fromarray(pixels)], plain)[0]
    assert batch.shape == (3, 40, 40)
    assert torch.all(batch[1, :3] > 0.99) and torch.all(batch[1, 5:] < 0.01)


def test_modes_are_converted_to_rgb() -> None:
    plain = ModelSpec(input_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    transparent = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    gray = Image.new("L", (16, 16), 51)
    batch = images_to_batch([transparent, gray], plain)
    assert torch.allclose(batch[0], torch.ones(3, 16, 16)), "transparent pixels become white"
    assert torch.allclose(batch[1], torch.full((3, 16, 16), 0.2))


def test_per_image_and_batched_preprocessing_agree_in_any_layout() -> None:
    images = _images(6)
    transform = eval_transform(SPEC)
    stacked = torch.stack([transform(img) for img in images])
    assert torch.equal(images_to_batch(images, SPEC), stacked)
    nhwc = images_to_batch(images, SPEC, memory_format=torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc, stacked)


def test_non_images_are_rejected() -> None:
    with pytest.raises(TypeError, match="expected a PIL image, got ndarray"):
        images_to_batch([np.zeros((4, 4, 3))], SPEC)  # type: ignore[list-item]


# ------------------------------------------------------------------ embedder
def test_embed_shape_dtype_norm_and_reference_values() -> None:
    model = _model()
    images = _images(7)
    expected = _reference(model, images)
    vectors = Embedder(model, device=torch.device("cpu"), batch_size=3).embed(images)
    assert vectors.shape == (7, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_alone_or_in_a_batch_gives_the_same_vector_and_is_deterministic() -> None:
    embedder = Embedder(_model(), device=torch.device("cpu"), batch_size=64)
    images = _images(10, seed=5)
    batch = embedder.embed(images)
    for i in (0, 4, 9):
        np.testing.assert_allclose(embedder.embed([images[i]])[0], batch[i], atol=1e-5)
    assert np.array_equal(embedder.embed(images), batch)


def test_embedding_uses_eval_mode_and_restores_training_mode() -> None:
    model = _model()
    images = _images(4)
    expected = _reference(model, images)
    model.train()  # a trainer evaluating mid-training
    vectors = Embedder(model, device=torch.device("cpu")).embed(images)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert model.training


def test_embed_batch_tensor_matches_embed() -> None:
    embedder = Embedder(_model(), device=torch.device("cpu"), batch_size=4)
    images = _images(6)
    from_tensor = embedder.embed_batch_tensor(images_to_batch(images, SPEC))
    np.testing.assert_allclose(from_tensor, embedder.embed(images), atol=1e-6)
    with pytest.raises(ValueError, match=r"expected a batch \[n, 3, 32, 32\]"):
        embedder.embed_batch_tensor(torch.zeros(2, 3, 64, 64))


def test_empty_input_gives_an_empty_matrix() -> None:
    assert Embedder(_model(), device=torch.device("cpu")).embed([]).shape == (0, 32)


def test_from_checkpoint(tmp_path: Path) -> None:
    model = _model()
    save_checkpoint(tmp_path / "m.pt", model)
    images = _images(3)
    embedder = Embedder.from_checkpoint(tmp_path / "m.pt", device=torch.device("cpu"), expected_spec=SPEC)
    assert (embedder.spec, embedder.dim) == (SPEC, 32)
    np.testing.assert_allclose(embedder.embed(images), _reference(model, images), atol=1e-5)


def test_resolve_device() -> None:
    assert resolve_device(DeviceChoice.CPU) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device(DeviceChoice.CUDA).type == "cuda"
    else:
        with pytest.raises(DeviceUnavailableError, match="torch sees no CUDA GPU"):
            resolve_device(DeviceChoice.CUDA)
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Embedder(_model(), device=torch.device("cpu"), batch_size=0)
