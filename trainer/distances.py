"""Euclidean distances for metric learning, safe at zero distance.

The derivative of ``sqrt`` at 0 is infinite, so a naive ``cdist``/``sqrt`` turns a
batch holding two identical embeddings (or an embedding compared with itself)
into NaN gradients.  Everything here returns exactly 0 with a zero gradient for
coincident points, and a finite gradient everywhere else.

The matrix form uses the Gram expansion ``|x|^2 + |y|^2 - 2 x.y`` (one matmul,
the fast path on every device).  That expansion cancels catastrophically for
nearly equal points, so squared distances below its rounding noise are snapped
to exactly 0: they carry no information in that dtype anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rounding noise of the Gram expansion, in units of machine epsilon times the
# summed squared norms; 8 covers the matmul's accumulation error in practice.
_GRAM_NOISE_FACTOR = 8.0


def _check_matrix(x: Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (batch, dim) tensor, got shape {tuple(x.shape)}"
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def safe_sqrt(squared: Tensor) -> Tensor:
    """``sqrt`` that is 0 with a zero gradient where its input is <= 0.

    ``sqrt`` is evaluated on 1.0 at those entries, so neither the forward nor the
    backward pass ever touches ``sqrt(0)``; the mask then zeroes value and gradient.
    """
    zero = squared <= 0
    return torch.where(zero, 0.0, torch.sqrt(torch.where(zero, 1.0, squared)))


def squared_distance_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(Bx, By) matrix of squared Euclidean distances between rows of x and y.

    With ``y`` omitted it is x against itself and the diagonal is exactly 0.
    Values are clamped at 0 and values inside the Gram rounding noise are 0.
    """
    _check_matrix(x, "x")
    self_distance = y is None
    if y is None:
        y = x
    else:
        _check_matrix(y, "y")
        if y.shape[1] != x.shape[1]:
            raise ValueError(
                f"x and y must have the same embedding size, got {x.shape[1]} and {y.shape[1]}"
            )
    x_norm = (x * x).sum(dim=1)
    y_norm = x_norm if self_distance else (y * y).sum(dim=1)
    norms = x_norm[:, None] + y_norm[None, :]
    squared = torch.addmm(norms, x, y.T, alpha=-2.0)  # |x|^2 + |y|^2 - 2 x.y in one pass
    noise = norms.detach() * (_GRAM_NOISE_FACTOR * torch.finfo(x.dtype).eps)
    squared = torch.where(squared <= noise, 0.0, squared)
    if self_distance:
        # In place on a fresh tensor: where's backward does not need its output.
        squared.diagonal().zero_()
    return squared


def distance_matrix(x: Tensor, y: Tensor | None = None, *, squared: bool = False) -> Tensor:
    """Euclidean (or, with ``squared``, squared Euclidean) distance matrix."""
    d2 = squared_distance_matrix(x, y)
    return d2 if squared else safe_sqrt(d2)


def paired_distances(x1: Tensor, x2: Tensor, *, squared: bool = False) -> Tensor:
    """Row-wise distances ``d(x1[i], x2[i])``, computed from the exact difference."""
    _check_matrix(x1, "x1")
    _check_matrix(x2, "x2")
    if x1.shape != x2.shape:
        raise ValueError(
            f"paired rows must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    diff = x1 - x2
    d2 = (diff * diff).sum(dim=1)
    return d2 if squared else safe_sqrt(d2)
