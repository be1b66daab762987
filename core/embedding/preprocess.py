"""Evaluation preprocessing derived from a :class:`ModelSpec`.

Geometry is the spec's ``resize`` (:class:`ResizeMode`), so a checkpoint serves with
the geometry it was trained with:

- ``squash`` (the default, and what older checkpoints used): the whole photo is
  resized to ``input_size`` x ``input_size``; nothing is cropped, the aspect ratio is
  distorted identically at training and query time.
- ``center_crop``: the shorter side becomes ``input_size`` and the centre square is
  kept -- ImageNet's recipe, which pretrained trunks are used to (no distortion), at
  the price of the top and bottom of a tall photo.
- ``pad``: the longer side becomes ``input_size`` and the photo is centred on white,
  the usual product-photo background: no distortion and nothing lost.

docs/BENCHMARKS.md ("Recipe ablation") measures the three. Images with an alpha
channel are composited onto white instead of exposing whatever colour hides under
transparent pixels.

Per-image and batched paths share one implementation, so an image gives the same
tensor alone or inside a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from core.embedding.spec import ModelSpec, ResizeMode

RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 3.0
"""PIL first box-reduces by an integer factor, then resamples the last <= 3x: several
times faster on large photos and visually indistinguishable from a full resample."""


PAD_FILL = (255, 255, 255)


def prepare_image(image: Image.Image, size: int, resize: ResizeMode = ResizeMode.SQUASH) -> Image.Image:
    """RGB, ``size`` x ``size`` by the ``resize`` geometry: the geometric half of preprocessing."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = _to_rgb(image)
    if image.size == (size, size):
        return image
    w, h = image.size
    if resize is ResizeMode.SQUASH:
        return image.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    if resize is ResizeMode.CENTER_CROP:
        # Resizing the central square in one call (PIL's box) equals "shorter side to
        # size, then centre crop", without resampling the pixels that are cut away.
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        return image.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side),
                            reducing_gap=REDUCING_GAP)
    if resize is ResizeMode.PAD:
        scale = size / max(w, h)
        inner = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = Image.new("RGB", (size, size), PAD_FILL)
        canvas.paste(image.resize(inner, RESAMPLE, reducing_gap=REDUCING_GAP),
                     ((size - inner[0]) // 2, (size - inner[1]) // 2))
        return canvas
    raise ValueError(f"unknown resize mode {resize!r}")


def images_to_batch(
    images: Sequence[Image.Image],
    spec: ModelSpec,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """Many PIL images -> one normalised float32 batch ``[N, 3, S, S]``.

    Pixels are resized with PIL and stacked into one uint8 array; the conversion to
    float and the normalisation then happen once for the whole batch.
    """
    size = spec.input_size
    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        pixels[i] = np.asarray(prepare_image(image, size, spec.resize))
    return normalize_uint8(torch.from_numpy(pixels), spec, memory_format=memory_format)


def normalize_uint8(
    pixels: Tensor, spec: ModelSpec, *, memory_format: torch.memory_format = torch.contiguous_format
) -> Tensor:
    """uint8 ``[N, S, S, 3]`` (HWC, as PIL/numpy hold images) -> normalised float ``[N, 3, S, S]``."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels [N, H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
    # (p / 255 - mean) / std == p * scale - shift, computed by one fused addcmul that
    # reads the uint8 pixels once and writes the float batch once. The NHWC -> NCHW
    # permute is only a view (with channels_last strides).
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    neg_shift = -mean / std
    n, h, w, _ = pixels.shape
    out = torch.empty((n, 3, h, w), dtype=torch.float32, memory_format=memory_format)
    return torch.addcmul(neg_shift, pixels.permute(0, 3, 1, 2), scale, out=out)


class EvalTransform:
    """Per-image transform for datasets (a class, so DataLoader workers can pickle it)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self, image: Image.Image) -> Tensor:
        return images_to_batch([image], self.spec)[0]

    def __repr__(self) -> str:
        s = self.spec
        return f"EvalTransform({s.resize.value} to {s.input_size}px, mean={s.mean}, std={s.std})"


def eval_transform(spec: ModelSpec) -> EvalTransform:
    """PIL image -> normalised float tensor ``[3, S, S]``, exactly as :func:`images_to_batch`."""
    return EvalTransform(spec)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
