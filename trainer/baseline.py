"""The frozen pretrained baseline: the backbone's ImageNet features under a PCA head, never trained.

A trained model earns its place only if it beats what its backbone gives for free, so
every retrain also builds this model and the promotion gate compares against it; when
nothing trained beats it, it is what gets served.

Why a PCA head rather than the raw trunk vector: the raw vector is 1280-d for Lite0 (ten
times the index and the query cost of the 128-d embeddings), and a random projection to
128-d loses about 0.07 MAP@R on clothing-small (trainer/register.py). The principal
directions of the catalog's own training photos keep the neighbourhoods of the full
vector at the embedding's size (docs/BENCHMARKS.md, "Recipe ablation"). The PCA is fitted
on training-class photos only, so the holdout stays unseen.
"""

from __future__ import annotations

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker
from torch.utils.data import DataLoader

from core.config import Settings
from core.embedding import EmbeddingNet, Pretrained, build_model, save_checkpoint
from core.registry import register_model, share_checkpoint
from trainer.augment import eval_pipeline, normalize_batch
from trainer.config import TrainConfig
from trainer.data import DataContext, ImageDataset, build_training_data
from trainer.register import model_checkpoint_path

MAX_FIT_IMAGES = 4096
"""Enough photos for a stable 128-d PCA of a 1280-d feature; more only costs embedding time."""


class NoBaselineError(ValueError):
    """The config's backbone has no pretrained features to compare with (the message says why)."""


def pretrained_baseline(cfg: TrainConfig, ctx: DataContext, *, device: torch.device | None = None,
                        max_images: int = MAX_FIT_IMAGES) -> EmbeddingNet:
    """``cfg``'s network, ImageNet trunk untouched, head = the top principal directions of its
    training photos' trunk features (centred; no whitening)."""
    if cfg.model.pretrained is Pretrained.NONE:
        raise NoBaselineError(f"{cfg.model.backbone.value} is not pretrained here: no frozen features to compare")
    device = device or torch.device("cpu")
    spec = cfg.model.spec().replace(head_batchnorm=False)
    data = build_training_data(cfg.data, spec, ctx)
    if not isinstance(data.train, ImageDataset):
        raise NoBaselineError(f"data.source {cfg.data.source.value!r} trains on tuples; fit the baseline "
                              "on class-labelled photos (catalog, folder or idx)")
    model = build_model(spec).to(device)
    features = _trunk_features(model, ImageDataset(data.train.images, eval_pipeline(spec)), device,
                               max_images=max_images, batch_size=cfg.eval_batch_size)
    weight, bias = pca_projection(features, spec.embedding_dim)
    linear = model.head[0]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return model.cpu()


def pca_projection(features: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W [dim, F], b [dim])`` with ``W x + b`` = the first ``dim`` principal coordinates of ``x``.

    Rows past the data's rank (fewer photos than ``dim``) are zero: they add nothing to any
    distance, so the projection is as good as the photos allow.
    """
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vh = np.linalg.svd(x - mean, full_matrices=False)
    rank = min(dim, vh.shape[0], max(len(x) - 1, 0))
    weight = np.zeros((dim, x.shape[1]))
    weight[:rank] = vh[:rank]
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32)


def register_pretrained_baseline(sessions: sessionmaker[Session], settings: Settings, model: EmbeddingNet,
                                 cfg: TrainConfig, *, version: str, notes: str = "") -> str:
    """Save the baseline where the registry keeps checkpoints and record it as a candidate.

    Its train config is ``cfg``: a later retrain that starts from it trains that recipe.
    """
    destination = model_checkpoint_path(settings, version)
    save_checkpoint(destination, model, extra={"untrained": True, "head": "pca"})
    share_checkpoint(settings, version, destination)
    return register_model(sessions, checkpoint_path=destination, spec=model.spec.to_dict(),
                          train_config=cfg.to_dict(), metrics={}, version=version,
                          notes=notes or f"frozen {model.spec.backbone.value} ImageNet features, PCA head")


def _trunk_features(model: EmbeddingNet, dataset: ImageDataset, device: torch.device, *,
                    max_images: int, batch_size: int) -> np.ndarray:
    step = max(1, len(dataset) // max_images)
    subset = torch.utils.data.Subset(dataset, list(range(0, len(dataset), step))[:max_images])
    trunk = model.backbone.eval()
    chunks = []
    with torch.inference_mode():
        for pixels, _ in DataLoader(subset, batch_size=batch_size):
            x = normalize_batch(pixels, model.spec, device=device, channels_last=True)
            chunks.append(trunk(x).float().cpu().numpy())
    return np.concatenate(chunks)
