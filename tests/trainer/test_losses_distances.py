"""The distance helpers the losses stand on: correct values, finite gradients at 0."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.distances import distance_matrix, paired_distances, safe_sqrt, squared_distance_matrix


def test_distance_matrix_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(4, 5, generator=g, dtype=torch.float64)
    d = distance_matrix(x, y)
    d2 = distance_matrix(x, y, squared=True)
    for i in range(7):
        for j in range(4):
            expected = math.dist(x[i].tolist(), y[j].tolist())
            assert d[i, j].item() == pytest.approx(expected, rel=1e-12)
            assert d2[i, j].item() == pytest.approx(expected**2, rel=1e-12)
    self_d = distance_matrix(x)
    assert torch.equal(self_d.diagonal(), torch.zeros(7, dtype=torch.float64))
    assert torch.allclose(self_d, torch.cdist(x, x), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("squared", [False, True])
def test_duplicate_embeddings_give_zero_distance_and_finite_gradients(dtype: torch.dtype, squared: bool) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1).to(dtype)
    x = torch.cat([base, base[:3]]).requires_grad_()  # rows 6..8 duplicate rows 0..2
    d = distance_matrix(x, squared=squared)
    assert d[0, 6].item() == 0.0 and d[2, 8].item() == 0.0
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_plain_cdist_gives_nan_where_we_do_not() -> None:
    # The failure mode this module exists for: sqrt's derivative at 0.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    torch.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).sum().backward()
    assert torch.isnan(x.grad).any()
    x.grad = None
    distance_matrix(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_safe_sqrt_is_zero_with_zero_gradient_at_zero() -> None:
    v = torch.tensor([0.0, 4.0, -1e-9], requires_grad=True)
    out = safe_sqrt(v)
    assert out.tolist() == [0.0, 2.0, 0.0]
    out.sum().backward()
    assert v.grad.tolist() == [0.0, 0.25, 0.0]


def test_paired_distances_match_brute_force_and_handle_identical_rows() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b[1] = a[1]
    a.requires_grad_()
    d = paired_distances(a, b)
    for i in range(5):
        assert d[i].item() == pytest.approx(math.dist(a[i].tolist(), b[i].tolist()), rel=1e-12)
    assert d[1].item() == 0.0
    d.sum().backward()
    assert torch.isfinite(a.grad).all()
    assert torch.allclose(paired_distances(a, b, squared=True), d**2)


def test_bad_shapes_are_reported() -> None:
    with pytest.raises(ValueError, match=r"2-D \(batch, dim\)"):
        squared_distance_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match="same embedding size"):
        squared_distance_matrix(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        distance_matrix(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        paired_distances(torch.zeros(3, 2), torch.zeros(2, 2))
