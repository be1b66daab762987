"""Cross-batch memory against brute-force references and against pytorch-metric-learning.

The reference: the batch's anchors against the columns ``cat(batch, memory)``, the
memory a constant, every loss term written out with explicit loops.  Column ``a`` is
the anchor itself and never its own positive; every other column of its class is.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from tests.trainer.test_losses_contrastive import ref_mean_active
from tests.trainer.test_losses_triplet import ref_loss
from trainer.components import build_loss, with_memory
from trainer.config import ConfigError, LossConfig, MemoryConfig, TrainConfig
from trainer.losses import ContrastiveLoss, TripletLoss
from trainer.losses.memory import CrossBatchMemory, MemoryContents, MemoryLoss
from trainer.miners import BatchAllMiner, BatchHardMiner, HardPairMiner, PairStrategy, SemiHardMiner

BATCH, MEMORY, DIM = 8, 12, 4


def batch_and_memory(seed: int, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, MemoryContents]:
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=1)  # noqa: E731
    x = unit(BATCH).requires_grad_()
    labels = torch.randint(0, classes, (BATCH,), generator=g)
    memory = MemoryContents(unit(MEMORY), torch.randint(0, classes, (MEMORY,), generator=g))
    return x, labels, memory


def columns(x: torch.Tensor, labels: torch.Tensor, memory: MemoryContents) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x, memory.embeddings]), torch.cat([labels, memory.labels])


def valid_triplets(labels: torch.Tensor, all_labels: torch.Tensor) -> list[tuple[int, int, int]]:
    n = len(all_labels)
    return [(a, p, q) for a in range(len(labels)) for p in range(n) for q in range(n)
            if p != a and all_labels[p] == labels[a] and all_labels[q] != labels[a]]


def assert_same_gradient(loss: torch.Tensor, expected: torch.Tensor, x: torch.Tensor) -> None:
    """The loss's gradient on the batch equals the reference's, taken through ``cat(x, memory)``
    (the memory rows are constants there, as in the loss)."""
    loss.backward()
    grad = x.grad.clone()
    x.grad = None
    expected.backward()
    assert torch.allclose(grad, x.grad, atol=1e-12)


def d(z: torch.Tensor, i: int, j: int, squared: bool = False) -> torch.Tensor:
    v = torch.linalg.vector_norm(z[i] - z[j])
    return v * v if squared else v


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("miner", [None, "batch_all"])
def test_all_triplets_with_memory_match_brute_force(seed: int, squared: bool, miner: str | None) -> None:
    x, labels, memory = batch_and_memory(seed)
    margin = 0.3
    mined = BatchAllMiner(margin, squared=squared) if miner else None
    out = TripletLoss(margin, squared=squared, miner=mined)(x, labels, memory=memory)
    z, all_labels = columns(x, labels, memory)
    triplets = valid_triplets(labels, all_labels)
    expected, active = ref_loss(z, triplets, margin, squared, soft=False)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert out.active == active
    assert out.violating_fraction == pytest.approx(active / len(triplets))
    assert_same_gradient(out.loss, expected, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_with_memory_matches_brute_force(seed: int) -> None:
    x, labels, memory = batch_and_memory(seed)
    margin = 0.3
    out = TripletLoss(margin, miner=BatchHardMiner(margin))(x, labels, memory=memory)
    z, all_labels = columns(x, labels, memory)
    terms = []
    for a in range(BATCH):
        pos = [d(z, a, p) for p in range(len(z)) if p != a and all_labels[p] == labels[a]]
        neg = [d(z, a, q) for q in range(len(z)) if all_labels[q] != labels[a]]
        if pos and neg:
            terms.append(torch.clamp(max(pos) - min(neg) + margin, min=0))
    expected, active = ref_mean_active(terms, x)
    assert out.total == len(terms) and out.active == active
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert_same_gradient(out.loss, expected, x)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sorted_path", [False, True])
def test_semi_hard_with_memory_matches_brute_force(seed: int, sorted_path: bool, monkeypatch) -> None:
    if sorted_path:  # the binary-search path, which large memories take
        monkeypatch.setattr(SemiHardMiner, "DENSE_MAX_POSITIVES_PER_ANCHOR", 0)
    x, labels, memory = batch_and_memory(seed)
    margin = 0.5
    out = TripletLoss(margin, miner=SemiHardMiner(margin))(x, labels, memory=memory)
    z, all_labels = columns(x, labels, memory)
    best: dict[tuple[int, int], float] = {}
    for a, p, q in valid_triplets(labels, all_labels):
        dp, dn = d(z, a, p).item(), d(z, a, q).item()
        if dp < dn < dp + margin:
            best[(a, p)] = min(best.get((a, p), math.inf), dn - dp)
    terms = [margin - gap for gap in best.values()]
    assert out.total == len(terms) > 0
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("strategy", [None, PairStrategy.ACTIVE, PairStrategy.HARDEST])
def test_contrastive_with_memory_matches_brute_force(seed: int, strategy: PairStrategy | None) -> None:
    x, labels, memory = batch_and_memory(seed)
    margin = 0.9
    miner = HardPairMiner(margin, strategy=strategy) if strategy else None
    out = ContrastiveLoss(margin, miner=miner)(x, labels, memory=memory)
    z, all_labels = columns(x, labels, memory)

    def term(i: int, j: int) -> torch.Tensor:
        dist = d(z, i, j)
        return dist**2 if all_labels[i] == all_labels[j] else torch.clamp(margin - dist, min=0) ** 2

    if strategy is PairStrategy.HARDEST:  # per anchor its farthest positive and closest negative
        terms = []
        for a in range(BATCH):
            pos = [j for j in range(len(z)) if j != a and all_labels[j] == labels[a]]
            neg = [j for j in range(len(z)) if all_labels[j] != labels[a]]
            terms += [term(a, max(pos, key=lambda j: d(z, a, j).item()))] if pos else []
            terms += [term(a, min(neg, key=lambda j: d(z, a, j).item()))] if neg else []
    else:  # every unordered pair once: within the batch i < j, and every batch-memory pair
        terms = [term(i, j) for i in range(BATCH) for j in range(i + 1, len(z))]
    expected, active = ref_mean_active(terms, x)
    assert out.active == active
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert_same_gradient(out.loss, expected, x)


def test_an_empty_memory_is_the_plain_loss_and_tuples_cannot_be_combined() -> None:
    x, labels, _ = batch_and_memory(0)
    loss = TripletLoss(0.2, miner=BatchHardMiner(0.2))
    empty = MemoryContents(torch.zeros(0, DIM, dtype=x.dtype), torch.zeros(0, dtype=torch.long))
    assert loss(x, labels, memory=empty).loss.item() == loss(x, labels).loss.item()
    with pytest.raises(ValueError, match="cannot be combined with a memory"):
        TripletLoss(0.2)(x, labels, triplets=(torch.tensor([0]),) * 3, memory=empty)


def test_the_ring_buffer_keeps_the_newest_rows_in_order_of_arrival() -> None:
    memory = CrossBatchMemory(5)
    assert memory.contents() is None and len(memory) == 0
    rows = torch.arange(14, dtype=torch.float32)[:, None].repeat(1, 2)
    for start in (0, 3, 6):  # three batches of 3: 9 rows through 5 slots
        memory.enqueue(rows[start:start + 3], torch.arange(start, start + 3))
    kept = memory.contents()
    assert len(memory) == 5 and sorted(kept.labels.tolist()) == [4, 5, 6, 7, 8]
    assert torch.equal(kept.embeddings[:, 0].long(), kept.labels)  # each row stayed with its label
    memory.enqueue(rows[:7], torch.arange(7))  # a batch larger than the memory: its last 5 rows
    assert sorted(memory.contents().labels.tolist()) == [2, 3, 4, 5, 6]
    x = torch.ones(2, 2, requires_grad=True)
    memory.enqueue(x * 2, torch.tensor([0, 1]))
    assert not memory.contents().embeddings.requires_grad  # stored detached
    with pytest.raises(ValueError, match="memory size must be >= 1"):
        CrossBatchMemory(0)
    with pytest.raises(ValueError, match=r"\(B, D\) embeddings and B labels"):
        memory.enqueue(torch.ones(3, 2), torch.tensor([0, 1]))


def test_memory_loss_fills_during_the_warm_up_and_uses_the_memory_after_it() -> None:
    loss = MemoryLoss(TripletLoss(0.2, miner=BatchHardMiner(0.2)), size=2 * BATCH, warmup_steps=2)
    plain = TripletLoss(0.2, miner=BatchHardMiner(0.2))
    batches = [batch_and_memory(seed)[:2] for seed in range(4)]
    for step, (x, labels) in enumerate(batches):
        out = loss(x, labels)
        if step < 2:  # warm-up: exactly the plain loss, while the memory fills
            assert out.loss.item() == plain(x, labels).loss.item()
        else:  # the two previous batches are the memory
            prev = torch.cat([b[0] for b in batches[step - 2:step]]).detach()
            prev_labels = torch.cat([b[1] for b in batches[step - 2:step]])
            assert out.loss.item() == pytest.approx(
                plain(x, labels, memory=MemoryContents(prev, prev_labels)).loss.item(), abs=1e-12)
    assert loss.step == 4 and len(loss.memory) == 2 * BATCH


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda m: BatchHardMiner(m), lambda: pml_miners.BatchHardMiner(distance=lp())),
    (lambda m: BatchAllMiner(m), lambda: pml_miners.TripletMarginMiner(0.2, "all", distance=lp())),
])
def test_memory_loss_equals_pml_cross_batch_memory(ours, theirs) -> None:
    """PML's ``CrossBatchMemory`` enqueues the batch first and scores it against the whole
    queue, itself included (self-comparisons removed); ours scores it against itself and the
    memory of earlier batches.  With PML's queue one batch larger the candidate sets are the
    same, so the loss values agree at every step (the gradients differ: PML's queue copy of
    the batch is detached)."""
    margin, size = 0.2, 3 * BATCH
    mine = MemoryLoss(TripletLoss(margin, miner=ours(margin)), size=size)
    pml = pml_losses.CrossBatchMemory(pml_losses.TripletMarginLoss(margin, distance=lp()), DIM,
                                      memory_size=size + BATCH, miner=theirs())
    for seed in range(6):
        x, labels, _ = batch_and_memory(seed)
        assert mine(x, labels).loss.item() == pytest.approx(pml(x, labels).item(), abs=1e-9), seed


def lp() -> pml_distances.LpDistance:
    return pml_distances.LpDistance(normalize_embeddings=False)


def test_memory_from_the_config() -> None:
    loss = with_memory(build_loss(LossConfig()), MemoryConfig(size=256, warmup_steps=10))
    assert isinstance(loss, MemoryLoss) and loss.memory.size == 256 and loss.warmup_steps == 10
    assert isinstance(with_memory(build_loss(LossConfig()), MemoryConfig()), TripletLoss)
    cfg = TrainConfig.from_yaml(None, ["memory.size=1024", "memory.warmup_steps=50"])
    assert cfg.memory == MemoryConfig(1024, 50)
    with pytest.raises(ConfigError, match="memory.size must be >= 0"):
        TrainConfig.from_yaml(None, ["memory.size=-1"])
    with pytest.raises(ConfigError, match="memory.size needs class-labelled data"):
        TrainConfig.from_yaml(None, ["data.source=triplets", "memory.size=64"])


def test_the_memory_a_step_used_survives_the_enqueue_before_its_backward() -> None:
    """The loop calls the loss (which enqueues the batch) and only then back-propagates."""
    loss = MemoryLoss(TripletLoss(0.2, miner=BatchAllMiner(0.2)), size=BATCH)
    for seed in range(3):
        x, labels, _ = batch_and_memory(seed)
        out = loss(x, labels)
        out.loss.backward()
        assert torch.isfinite(x.grad).all()
