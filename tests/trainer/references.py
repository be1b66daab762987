"""Plain brute-force references and test batches shared by the loss and miner tests."""

from __future__ import annotations

import torch

CASES = ["random", "single_class", "singletons", "duplicates"]
"""Random labels, one class, every sample its own class, and exact duplicates (zero distances)."""


def make_batch(case: str, seed: int = 0, batch: int = 10, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    labels = {
        "random": torch.randint(0, 3, (batch,), generator=g),
        "single_class": torch.zeros(batch, dtype=torch.long),
        "singletons": torch.arange(batch),
        "duplicates": torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])[:batch],
    }[case]
    if case == "duplicates":
        x[1] = x[0]  # a similar pair / positive at distance 0
        x[3] = x[0]  # a dissimilar pair / negative at distance 0 from samples 0 and 1
    return x.requires_grad_(), labels


def ref_valid_triplets(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    b = len(labels)
    return [
        (a, p, n)
        for a in range(b)
        for p in range(b)
        for n in range(b)
        if p != a and labels[p] == labels[a] and labels[n] != labels[a]
    ]
