"""Pixel pipelines for training and evaluation: image in, uint8 ``[3, S, S]`` tensor out.

Both pipelines start the way serving does (``core.embedding.preprocess``): the photo
becomes the ``S x S`` square by the spec's ``resize`` geometry (squash, centre crop or
pad; alpha on white). Augmentation then works on that square, so training sees the
same geometry as queries do.
Normalisation is *not* done here: batches travel as uint8 (4x less to copy to a GPU)
and :func:`normalize_batch` turns them into the model's input on the device.

Policies, for product photos: crops that keep most of the product (scale >= 0.5) and
horizontal flips (a mirrored shirt is the same shirt) -- ``crop_flip``; ``product``
adds mild brightness / contrast / saturation jitter for lighting differences between
shoots. No hue shift and no vertical flip in either: colour and orientation are part
of what makes two products look alike, and even the mild jitter can blur two products
that differ only by colour (docs/BENCHMARKS.md, "Recipe ablation").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from core.embedding import ModelSpec, ResizeMode
from core.embedding.preprocess import prepare_image
from trainer.config import AugmentPolicy

PixelSource = Image.Image | np.ndarray
"""A PIL image, or uint8 pixels ``[H, W]`` (grey) / ``[H, W, 3]`` (RGB)."""


def to_square_uint8(image: PixelSource, size: int, resize: ResizeMode = ResizeMode.SQUASH) -> Tensor:
    """``size x size`` RGB by the ``resize`` geometry exactly as serving does, as uint8 ``[3, S, S]``."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected uint8 pixels [H, W] or [H, W, 3], got {image.dtype} {image.shape}")
        if image.shape[:2] == (size, size):
            t = torch.from_numpy(np.ascontiguousarray(image))
            return t.unsqueeze(0).expand(3, -1, -1).contiguous() if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
        image = Image.fromarray(image)
    square = np.asarray(prepare_image(image, size, resize))
    return torch.from_numpy(square.copy()).permute(2, 0, 1).contiguous()


class PixelPipeline:
    """Square + optional augmentation; a class (not a closure) so worker processes can pickle it."""

    def __init__(self, size: int, augment: Callable[[Tensor], Tensor] | None = None,
                 resize: ResizeMode = ResizeMode.SQUASH):
        self.size = size
        self.augment = augment
        self.resize = resize

    def __call__(self, image: PixelSource) -> Tensor:
        pixels = to_square_uint8(image, self.size, self.resize)
        return self.augment(pixels) if self.augment is not None else pixels

    def __repr__(self) -> str:
        return f"PixelPipeline(size={self.size}, resize={self.resize.value}, augment={self.augment})"


def eval_pipeline(spec: ModelSpec) -> PixelPipeline:
    return PixelPipeline(spec.input_size, resize=spec.resize)


def train_pipeline(spec: ModelSpec, policy: AugmentPolicy) -> PixelPipeline:
    size = spec.input_size
    if policy is AugmentPolicy.NONE:
        return PixelPipeline(size, resize=spec.resize)
    if policy is AugmentPolicy.LIGHT:
        ops: list[Callable[[Tensor], Tensor]] = [
            v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        ops = [
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if policy is AugmentPolicy.PRODUCT:
            ops.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.0))
    return PixelPipeline(size, v2.Compose(ops), resize=spec.resize)


def normalize_batch(
    pixels: Tensor, spec: ModelSpec, *, device: torch.device, channels_last: bool = False
) -> Tensor:
    """uint8 ``[B, 3, S, S]`` -> normalised float32 on ``device``, the arithmetic of serving.

    Same ``p * 1/(255 std) - mean/std`` as ``core.embedding.preprocess.normalize_uint8``,
    so the trainer's evaluation embeds exactly what the service will.
    """
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected uint8 pixels [B, 3, H, W], got {pixels.dtype} {list(pixels.shape)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    batch = pixels.to(device, non_blocking=True).to(dtype=torch.float32, memory_format=fmt)
    return batch.mul_(1.0 / (255.0 * std)).sub_(mean / std)
