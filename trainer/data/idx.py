"""MNIST-format ("idx") files such as Fashion-MNIST, decoded once into memory.

The images file ``<prefix>-images-idx3-ubyte[.gz]`` comes with its labels file
``<prefix>-labels-idx1-ubyte[.gz]`` beside it. Labels become class names "0".."9",
so a config can hold out classes by number (``holdout_classes: [6, 7, 8, 9]``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from trainer.data.images import ArrayList

_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


def labels_file_for(images_path: Path) -> Path:
    name = images_path.name
    if "images-idx3" not in name:
        raise ValueError(f"{images_path} is not an idx images file (expected '...-images-idx3-ubyte[.gz]')")
    return images_path.with_name(name.replace("images-idx3", "labels-idx1"))


def read_idx(path: Path) -> np.ndarray:
    """The array in one idx file (gzip or raw): uint8 ``[N, H, W]`` or ``[N]``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read idx file {path}: {exc}") from exc
    if len(data) < 8:
        raise ValueError(f"{path} is too short to be an idx file")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (_IMAGES_MAGIC, _LABELS_MAGIC):
        raise ValueError(f"{path} is not an idx file of uint8 data (magic {magic:#010x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_idx_images(images_path: Path) -> ArrayList:
    """Images and labels of one idx split as an in-memory list (grey ``[N, H, W]`` pixels)."""
    images_path = Path(images_path)
    pixels = read_idx(images_path)
    labels = read_idx(labels_file_for(images_path))
    if pixels.ndim != 3 or labels.ndim != 1 or len(pixels) != len(labels):
        raise ValueError(f"{images_path}: {pixels.shape} images do not match {labels.shape} labels")
    return ArrayList(pixels, [str(int(v)) for v in labels])
