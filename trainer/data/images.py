"""Labelled image lists (files, media store, in-memory pixels) and the torch Dataset over them.

An :class:`ImageList` knows how to load image ``i`` and what its class label is
(a string: a folder name, an item's external id, a category...). Lists are plain,
picklable objects, so a DataLoader's worker processes can load in parallel.
:func:`preload` decodes a list once into an in-memory :class:`ArrayList` at the
model's input size, for small data sets that are read many times.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from core.embedding import ResizeMode
from core.media import MediaStore, decode_image
from trainer.augment import PixelSource, to_square_uint8


class ImageList(ABC):
    """Images with one string class label each."""

    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> PixelSource:
        """The pixels of image ``index`` (PIL image or uint8 array)."""

    @abstractmethod
    def subset(self, indices: Sequence[int]) -> ImageList:
        """The images at ``indices``, in that order."""

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages."""
        return f"image #{index}"


class FileList(ImageList):
    """Image files on disk, decoded with the project's safe decoder."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[str], *, max_pixels: int, max_bytes: int):
        _check_lengths(paths, labels)
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels)
        self.max_pixels, self.max_bytes = max_pixels, max_bytes

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            return decode_image(path.read_bytes(), max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load training image {path}: {exc}") from exc

    def subset(self, indices: Sequence[int]) -> FileList:
        return FileList([self.paths[i] for i in indices], [self.labels[i] for i in indices],
                        max_pixels=self.max_pixels, max_bytes=self.max_bytes)

    def describe(self, index: int) -> str:
        return str(self.paths[index])


class MediaList(ImageList):
    """Catalog images in the media store; ``image_ids`` are ``item_images.id``."""

    def __init__(self, store: MediaStore, keys: Sequence[str], labels: Sequence[str], image_ids: Sequence[int]):
        _check_lengths(keys, labels)
        _check_lengths(keys, image_ids)
        self.store = store
        self.keys, self.labels, self.image_ids = list(keys), list(labels), list(image_ids)

    def load(self, index: int) -> Image.Image:
        try:
            return self.store.open(self.keys[index])
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load catalog image id {self.image_ids[index]}: {exc}") from exc

    def subset(self, indices: Sequence[int]) -> MediaList:
        return MediaList(self.store, [self.keys[i] for i in indices], [self.labels[i] for i in indices],
                         [self.image_ids[i] for i in indices])

    def describe(self, index: int) -> str:
        return f"catalog image id {self.image_ids[index]}"


class ArrayList(ImageList):
    """Decoded uint8 pixels held in memory: ``[N, H, W]`` (grey) or ``[N, H, W, 3]``."""

    def __init__(self, pixels: np.ndarray, labels: Sequence[str]):
        if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[3] != 3):
            raise ValueError(f"pixels must be uint8 [N, H, W] or [N, H, W, 3], got {pixels.dtype} {pixels.shape}")
        _check_lengths(pixels, labels)
        self.pixels = pixels
        self.labels = list(labels)

    def load(self, index: int) -> np.ndarray:
        return self.pixels[index]

    def subset(self, indices: Sequence[int]) -> ArrayList:
        return ArrayList(self.pixels[np.asarray(indices, dtype=np.int64)], [self.labels[i] for i in indices])


def preload(images: ImageList, size: int, resize: ResizeMode = ResizeMode.SQUASH) -> ArrayList:
    """Decode every image once and keep its ``size x size`` square (``resize`` geometry) in memory."""
    if isinstance(images, ArrayList) and images.pixels.shape[1:3] == (size, size):
        return images
    pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i in range(len(images)):
        pixels[i] = to_square_uint8(images.load(i), size, resize).permute(1, 2, 0).numpy()
    return ArrayList(pixels, images.labels)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """``(uint8 [3, S, S] pixels, class index)`` pairs; ``classes[i]`` names class index ``i``."""

    def __init__(
        self, images: ImageList, transform: Callable[[PixelSource], Tensor], classes: Sequence[str] | None = None
    ):
        self.images = images
        self.transform = transform
        self.classes = sorted(set(images.labels)) if classes is None else list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        missing = sorted(set(images.labels) - set(index))
        if missing:
            raise ValueError(f"labels {missing[:5]} are not among the given classes")
        self.targets = np.fromiter((index[label] for label in images.labels), dtype=np.int64, count=len(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images.load(index)), int(self.targets[index])

    @property
    def labels(self) -> list[str]:
        return self.images.labels



def _check_lengths(a: Sequence[object] | np.ndarray, b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} images but {len(b)} labels")
