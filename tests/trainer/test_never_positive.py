"""Items marked dissimilar are never positives: every miner and both losses, against brute force."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tests.trainer.references import ref_valid_triplets
from trainer.distances import distance_matrix, squared_distance_matrix
from trainer.losses import ContrastiveLoss, TripletLoss
from trainer.losses.memory import MemoryLoss
from trainer.miner_modes import PairStrategy, SemiHardMode
from trainer.miners import BatchAllMiner, BatchHardMiner, HardPairMiner, SemiHardMiner

# Two classes of four; rows (0, 1) and (5, 7) are same-class pairs marked dissimilar.
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
MARKED = {(0, 1), (1, 0), (5, 7), (7, 5)}


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(len(LABELS), 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()


def mask() -> torch.Tensor:
    m = torch.zeros(len(LABELS), len(LABELS), dtype=torch.bool)
    for i, j in MARKED:
        m[i, j] = True
    return m


def allowed_triplets() -> list[tuple[int, int, int]]:
    return [t for t in ref_valid_triplets(LABELS) if (t[0], t[1]) not in MARKED]


@pytest.mark.parametrize("miner", [
    BatchAllMiner(0.2, only_active=False), BatchAllMiner(0.5), BatchHardMiner(0.2),
    SemiHardMiner(0.5), SemiHardMiner(0.5, mode=SemiHardMode.ALL),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_miners_never_take_a_marked_pair_as_anchor_positive(miner, seed: int) -> None:
    dist = distance_matrix(batch(seed).detach())
    selection, stats = miner.select(dist, LABELS, None, mask())
    selection = selection if not hasattr(selection, "mask") else selection.to_indices()
    chosen = set(zip(*(t.tolist() for t in selection), strict=True))
    assert chosen and not any((a, p) in MARKED for a, p, _ in chosen)
    assert stats.candidates == len(allowed_triplets())
    if isinstance(miner, BatchAllMiner) and not miner.only_active:
        assert chosen == set(allowed_triplets())
    if isinstance(miner, BatchHardMiner):  # brute force: hardest allowed positive, hardest negative
        expected = set()
        for a in range(len(LABELS)):
            pos = [p for p in range(len(LABELS)) if p != a and LABELS[p] == LABELS[a] and (a, p) not in MARKED]
            neg = [n for n in range(len(LABELS)) if LABELS[n] != LABELS[a]]
            p, n = max(pos, key=lambda j: dist[a, j]), min(neg, key=lambda j: dist[a, j])
            if dist[a, p] - dist[a, n] + 0.2 > 0:
                expected.add((a, p, n))
        assert chosen == expected


@pytest.mark.parametrize("strategy", [PairStrategy.ACTIVE, PairStrategy.HARDEST])
def test_the_pair_miner_never_takes_a_marked_pair_as_similar(strategy: PairStrategy) -> None:
    squared = squared_distance_matrix(batch().detach())
    pairs, _ = HardPairMiner(1.5, strategy=strategy).mine_squared(squared, LABELS, None, mask())
    similar = set(zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True))
    assert similar and not similar & MARKED
    negatives = set(zip(pairs.a2.tolist(), pairs.n.tolist(), strict=True))
    assert not negatives & MARKED  # same class: not a dissimilar pair of the class batch either


def test_losses_without_a_miner_score_exactly_the_allowed_tuples() -> None:
    x = batch()
    d = distance_matrix(x)
    hinge = [F.relu(d[a, p] - d[a, n] + 0.2) for a, p, n in allowed_triplets()]
    active = [h for h in hinge if h > 0]
    out = TripletLoss(0.2).forward(x, LABELS, not_positive=mask())
    assert out.total == len(hinge) and torch.allclose(out.loss, torch.stack(active).mean())

    n = len(LABELS)
    terms = [d[i, j] ** 2 if LABELS[i] == LABELS[j] else F.relu(1.0 - d[i, j]) ** 2
             for i in range(n) for j in range(i + 1, n) if (i, j) not in MARKED]
    out = ContrastiveLoss(1.0).forward(x, LABELS, not_positive=mask())
    nonzero = [t for t in terms if t > 0]
    assert out.total == len(terms) and torch.allclose(out.loss, torch.stack(nonzero).mean())


def test_a_bad_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="not_positive must be a boolean mask of shape"):
        TripletLoss(0.2).forward(batch(), LABELS, not_positive=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="not_positive must be a boolean mask"):
        ContrastiveLoss(1.0).forward(batch(), LABELS, not_positive=mask().long())


def _marked_positions(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Brute force: dataset positions p and q are never positives when (p % 8, q % 8) is marked."""
    return torch.tensor([[int(p) >= 0 and int(q) >= 0 and (int(p) % 8, int(q) % 8) in MARKED
                          for q in columns] for p in rows], dtype=torch.bool)


def test_with_a_cross_batch_memory_the_mask_covers_the_memory_columns_too() -> None:
    # The memory holds an earlier batch of the same eight images (positions 8..15 = rows 0..7 + 8)
    # and four rows enqueued without positions (-1: not masked).
    miner = BatchAllMiner(0.2, only_active=False)
    loss = MemoryLoss(TripletLoss(0.2, miner=miner), size=16, never_positive=_marked_positions)
    loss(batch(1).detach(), LABELS, positions=torch.arange(8, 16))
    loss(batch(3).detach()[:4], LABELS[:4])
    memory = loss.memory.contents()
    assert memory is not None and memory.positions.tolist() == list(range(8, 16)) + [-1] * 4
    x, positions = batch(2), torch.arange(8)
    out = loss(x, LABELS, not_positive=mask(), positions=positions)

    full = torch.cat([mask(), _marked_positions(positions, memory.positions)], dim=1)
    assert full[:, 8:].sum() == len(MARKED)  # each marked pair once more, against the memory
    expected = TripletLoss(0.2, miner=miner)(x, LABELS, memory=memory, not_positive=full)
    assert out.total == expected.total and torch.allclose(out.loss, expected.loss)
    batch_only = torch.cat([mask(), torch.zeros(len(LABELS), 12, dtype=torch.bool)], dim=1)
    unmasked = TripletLoss(0.2, miner=miner)(x, LABELS, memory=memory, not_positive=batch_only)
    assert out.total < unmasked.total  # the marked pairs are gone from the memory's columns as well
