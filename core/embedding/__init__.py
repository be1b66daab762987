"""The embedding model: spec, backbones, network, preprocessing, checkpoints, batched embedding.

The spec (:mod:`core.embedding.spec`) is plain data and loads without torch; the names
from the other modules are imported on first use (PEP 562), so that code which only
needs the spec's enums, such as :mod:`trainer.config` when the API validates retrain
overrides (docs/CONFIG.md, "Training config overrides"), does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from core.embedding.spec import Backbone, Distance, ModelSpec, Pretrained, ResizeMode, SpecMismatchError

if TYPE_CHECKING:
    from core.embedding.checkpoint import (
        Checkpoint,
        CheckpointError,
        load_model,
        read_checkpoint,
        save_checkpoint,
    )
    from core.embedding.embedder import DeviceUnavailableError, Embedder, resolve_device
    from core.embedding.network import EmbeddingNet, build_model
    from core.embedding.preprocess import eval_transform, images_to_batch

_LAZY: dict[str, str] = {
    "Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "load_model": "checkpoint",
    "read_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "DeviceUnavailableError": "embedder", "Embedder": "embedder", "resolve_device": "embedder",
    "EmbeddingNet": "network", "build_model": "network",
    "eval_transform": "preprocess", "images_to_batch": "preprocess",
}
"""Name -> submodule of the torch-backed names, imported when first asked for."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Backbone",
    "Checkpoint",
    "CheckpointError",
    "DeviceUnavailableError",
    "Distance",
    "Embedder",
    "EmbeddingNet",
    "ModelSpec",
    "Pretrained",
    "ResizeMode",
    "SpecMismatchError",
    "build_model",
    "eval_transform",
    "images_to_batch",
    "load_model",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
