"""Batched embedding of PIL images with a loaded network (trainer eval, worker, service)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from core.config import DeviceChoice
from core.embedding.checkpoint import load_model, unwrap_model
from core.embedding.network import EmbeddingNet
from core.embedding.preprocess import images_to_batch
from core.embedding.spec import ModelSpec


class DeviceUnavailableError(RuntimeError):
    """The configured device cannot be used on this machine."""


def resolve_device(choice: DeviceChoice | str) -> torch.device:
    """AUTO -> CUDA if available, else CPU; CUDA without a GPU is an error, not a fallback."""
    try:
        choice = DeviceChoice(choice)
    except ValueError:
        raise ValueError(f"device must be one of {[c.value for c in DeviceChoice]}, got {choice!r}") from None
    if choice is DeviceChoice.CPU:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice is DeviceChoice.CUDA:
        raise DeviceUnavailableError(
            "device 'cuda' was requested (LOOKALIKE_DEVICE=cuda) but torch sees no CUDA GPU; "
            "use 'auto' or 'cpu', or install a CUDA build of torch on a machine with a GPU"
        )
    return torch.device("cpu")


PREFERRED_MEMORY_FORMAT = torch.channels_last
"""Measured faster than contiguous for every backbone on CPU (bench/bench_embed.py times
both layouts side by side, raw forward at batch 64; channels_last won 1.3x-2x for all
seven backbones on the 2-core x86 VM). On CUDA it is the layout cuDNN's tensor-core
convolutions want; that was not measured here (no GPU)."""


class Embedder:
    """Turns images into float32 unit vectors ``[n, dim]``, ``batch_size`` at a time.

    The embedder takes the model over: it moves it to ``device`` and converts its
    weights to the preferred memory layout. Each call runs in eval mode under
    ``torch.inference_mode()`` and restores the model's previous train/eval mode, so a
    trainer can evaluate the model it is still training. A torch.compile wrapper is
    unwrapped (inference batches vary in size, which would trigger recompiles).
    ``memory_format`` overrides the layout (``torch.contiguous_format`` opts out).
    """

    def __init__(
        self,
        model: EmbeddingNet,
        *,
        device: torch.device | None = None,
        batch_size: int = 64,
        memory_format: torch.memory_format | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else resolve_device(DeviceChoice.AUTO)
        self.memory_format = memory_format or PREFERRED_MEMORY_FORMAT
        self.model = unwrap_model(model).to(self.device, memory_format=self.memory_format)
        self.batch_size = batch_size
        self.spec: ModelSpec = self.model.spec
        self.dim: int = self.spec.embedding_dim

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        *,
        device: torch.device | None = None,
        batch_size: int = 64,
        expected_spec: ModelSpec | None = None,
    ) -> Embedder:
        """Load a checkpoint (optionally checking its spec) and wrap it."""
        model, _ = load_model(path, expected_spec=expected_spec)
        return cls(model, device=device, batch_size=batch_size)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images (any size and mode): float32 ``[len(images), dim]``."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with self._eval():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                batch = images_to_batch(chunk, self.spec, memory_format=self.memory_format)
                out[start : start + len(chunk)] = self._forward(batch)
        return out

    def embed_batch_tensor(self, x: Tensor) -> np.ndarray:
        """Embed an already preprocessed batch ``[n, 3, S, S]`` (e.g. from :func:`images_to_batch`)."""
        size = self.spec.input_size
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (size, size):
            raise ValueError(f"expected a batch [n, 3, {size}, {size}] for this model, got {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a normalised float batch, got {x.dtype} (use images_to_batch)")
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        with self._eval():
            for start in range(0, x.shape[0], self.batch_size):
                batch = x[start : start + self.batch_size].to(torch.float32)
                out[start : start + batch.shape[0]] = self._forward(batch)
        return out

    def _forward(self, batch: Tensor) -> np.ndarray:
        batch = batch.to(self.device, memory_format=self.memory_format, non_blocking=True)
        return self.model(batch).float().cpu().numpy()

    def _eval(self) -> AbstractContextManager[None]:
        return _eval_scope(self.model)

    def __repr__(self) -> str:
        return (f"Embedder({self.spec.backbone.value}, dim={self.dim}, device={self.device}, "
                f"batch_size={self.batch_size})")


@contextmanager
def _eval_scope(model: EmbeddingNet) -> Iterator[None]:
    """Eval mode + inference mode for the duration of one call; restores the old mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
