"""The embedding model: spec, backbones, network, preprocessing, checkpoints, batched embedding."""

from core.embedding.checkpoint import Checkpoint, CheckpointError, load_model, read_checkpoint, save_checkpoint
from core.embedding.embedder import DeviceUnavailableError, Embedder, resolve_device
from core.embedding.network import EmbeddingNet, build_model
from core.embedding.preprocess import eval_transform, images_to_batch
from core.embedding.spec import Backbone, Distance, ModelSpec, Pretrained, ResizeMode, SpecMismatchError

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
