"""Embed an evaluation set with a network and score retrieval on it.

Two protocols (metrics defined in :mod:`trainer.retrieval_metrics`):

- **leave-one-out** on the holdout: every image queries all other holdout images;
- **query vs. reference**: e.g. shop-floor photos (queries) against catalog photos
  (references), labels compared across the two sets.

Evaluation embeds through the same uint8 pipeline and normalisation as serving,
so the numbers describe what the service will return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.embedding.checkpoint import unwrap_model
from core.rerank import Rerank
from trainer.augment import normalize_batch
from trainer.data.images import ImageDataset
from trainer.retrieval_metrics import DEFAULT_KS, RetrievalMetrics, retrieval_metrics


def embed_dataset(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Embeddings ``[len(dataset), dim]`` (float32), in dataset order; restores the train/eval mode.

    channels_last by default: the layout ``core.embedding.Embedder`` serves with, so
    the trainer's numbers and the service's vectors agree to the last bit.
    """
    spec = unwrap_model(model).spec
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    chunks: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for pixels, _ in loader:
                x = normalize_batch(pixels, spec, device=device, channels_last=channels_last)
                autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                            else contextlib.nullcontext())
                with autocast:
                    chunks.append(model(x).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("the evaluation set is empty")
    return np.concatenate(chunks)


def evaluate_holdout(
    model: nn.Module, dataset: ImageDataset, *, device: torch.device, ks: Sequence[int] = DEFAULT_KS,
    **embed_kwargs: object,
) -> RetrievalMetrics:
    """Leave-one-out retrieval metrics on ``dataset``."""
    embeddings = embed_dataset(model, dataset, device=device, **embed_kwargs)  # type: ignore[arg-type]
    return retrieval_metrics(embeddings, dataset.labels, ks=ks)


def evaluate_query_reference(
    model: nn.Module,
    queries: ImageDataset,
    references: ImageDataset,
    *,
    device: torch.device,
    ks: Sequence[int] = DEFAULT_KS,
    rerank: Rerank | None = None,
    **embed_kwargs: object,
) -> RetrievalMetrics:
    """Each query ranks the reference set; a reference is relevant if it has the query's label.

    ``rerank`` (DBA on the references, then alpha query expansion; core/rerank.py) scores the
    ranking a re-ranking service would return; the references never see the queries.
    """
    q = embed_dataset(model, queries, device=device, **embed_kwargs)  # type: ignore[arg-type]
    r = embed_dataset(model, references, device=device, **embed_kwargs)  # type: ignore[arg-type]
    if rerank is not None:
        q, r = rerank.apply(q, r)
    return retrieval_metrics(q, queries.labels, r, references.labels, ks=ks)

