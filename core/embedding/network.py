"""The embedding network: backbone trunk -> linear projection -> L2 normalisation."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from core.embedding.backbones import build_trunk
from core.embedding.spec import ModelSpec, Pretrained

NORM_EPS = 1e-12
"""F.normalize divides by max(norm, eps): an all-zero projection stays zero instead of NaN."""


class EmbeddingNet(nn.Module):
    """Maps a normalised image batch ``[B, 3, H, W]`` to unit-length embeddings ``[B, D]``.

    The network always L2-normalises, whatever ``spec.distance`` says: on unit vectors
    Euclidean and cosine distance rank identically, and the losses assume unit norm.
    """

    def __init__(self, spec: ModelSpec, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.spec = spec
        self.feature_dim = feature_dim
        self.backbone = backbone
        layers: list[nn.Module] = [nn.Linear(feature_dim, spec.embedding_dim)]
        if spec.head_batchnorm:
            layers.append(nn.BatchNorm1d(spec.embedding_dim))
        self.head = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), p=2.0, dim=1, eps=NORM_EPS)

    def extra_repr(self) -> str:
        return f"spec={self.spec}"


def build_model(spec: ModelSpec, *, weights_dir: Path | None = None, load_pretrained: bool = True) -> EmbeddingNet:
    """A fresh network for ``spec``; the trunk gets ImageNet weights if the spec asks.

    ``weights_dir`` overrides where torchvision weight files are looked up. With
    ``load_pretrained=False`` the pretrained files are not read even if the spec names
    them (used when the weights come from a checkpoint anyway). The projection head is
    always freshly initialised.
    """
    pretrained = spec.pretrained if load_pretrained else Pretrained.NONE
    trunk, feature_dim = build_trunk(spec.backbone, pretrained=pretrained, weights_dir=weights_dir)
    return EmbeddingNet(spec, trunk, feature_dim)
