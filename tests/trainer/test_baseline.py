"""The frozen pretrained baseline: ImageNet trunk features under a PCA head fitted on training photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from core.config import Settings
from core.embedding import Embedder
from tests.trainer.test_data import make_folder
from trainer.augment import eval_pipeline, normalize_batch
from trainer.baseline import NoBaselineError, pca_projection, pretrained_baseline
from trainer.config import TrainConfig
from trainer.data import DataContext, ImageDataset, build_training_data


def test_pca_projection_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + 3.0
    weight, bias = pca_projection(x, 5)
    ours = x @ weight.T + bias
    theirs = PCA(n_components=5, svd_solver="full").fit_transform(x)
    for j in range(5):  # components are defined up to their sign
        assert np.allclose(ours[:, j], theirs[:, j], atol=1e-4) or np.allclose(ours[:, j], -theirs[:, j], atol=1e-4)
    assert np.allclose(weight @ weight.T, np.eye(5), atol=1e-5)  # orthonormal rows: distances kept


def test_pca_projection_with_fewer_photos_than_dimensions_pads_with_zero_rows() -> None:
    x = np.random.default_rng(1).normal(size=(4, 10))
    weight, _ = pca_projection(x, 8)
    assert np.allclose(weight[3:], 0) and np.allclose(np.linalg.norm(weight[:3], axis=1), 1, atol=1e-5)


def test_baseline_embeds_training_photos_as_their_normalised_principal_coordinates(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", n_classes=6, per_class=6)
    cfg = TrainConfig.from_yaml(None, [
        "data.source=folder", f"data.path={root}", "data.holdout_fraction=0.2", "model.backbone=efficientnet_lite0",
        "model.pretrained=imagenet", "model.input_size=32", "model.embedding_dim=8", "model.head_batchnorm=true",
        "device=cpu"])
    ctx = DataContext(Settings(home=tmp_path / "home"))
    model = pretrained_baseline(cfg, ctx)
    assert not model.spec.head_batchnorm  # a fitted projection needs no learned rescaling
    data = build_training_data(cfg.data, model.spec, ctx)
    train_photos = ImageDataset(data.train.images, eval_pipeline(model.spec))
    trunk = model.backbone.eval()
    with torch.inference_mode():
        pixels = torch.stack([train_photos[i][0] for i in range(len(train_photos))])
        features = trunk(normalize_batch(pixels, model.spec, device=torch.device("cpu"), channels_last=True)).numpy()
    weight, bias = pca_projection(features, 8)
    expected = features @ weight.T + bias
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = Embedder(model, device=torch.device("cpu")).embed([data.train.images.load(i)
                                                             for i in range(len(data.train))])
    assert np.abs(np.abs((got * expected).sum(axis=1)) - 1).max() < 1e-3  # same directions


def test_no_baseline_without_pretrained_weights(tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(None, ["data.source=folder", f"data.path={tmp_path}"])
    with pytest.raises(NoBaselineError, match="not pretrained"):
        pretrained_baseline(cfg, DataContext(Settings(home=tmp_path / "home")))
