"""PKBatchSampler: P distinct classes x K items per batch, deterministic, small classes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.samplers import PKBatchSampler


def make_labels(seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(5, 30, size=12)] + [3, 2, 1]  # 3 small classes
    return [c for c, n in enumerate(sizes) for _ in range(n)]


def test_every_batch_has_p_distinct_classes_with_k_items_each() -> None:
    labels = make_labels()
    sampler = PKBatchSampler(labels, p=5, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (len(labels) - 1) // 20  # the singleton class is not eligible
    for batch in batches:
        assert len(batch) == 20
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 5 and set(counts.values()) == {4}
        for c in counts:
            indices = [i for i in batch if labels[i] == c]
            if labels.count(c) >= 4:
                assert len(set(indices)) == 4, "large classes give K distinct items"


def test_same_seed_and_epoch_give_the_same_batches() -> None:
    labels = make_labels()
    a = PKBatchSampler(labels, p=4, k=3, seed=7)
    b = PKBatchSampler(labels, p=4, k=3, seed=7)
    first = list(a)
    assert first == list(b)
    second = list(a)  # the epoch advances by itself after a full pass
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKBatchSampler(labels, p=4, k=3, seed=8)) != first


def test_small_classes_are_padded_with_repeats_and_singletons_are_never_drawn() -> None:
    labels = [0] * 2 + [1] * 3 + [2] * 1 + [3] * 10
    sampler = PKBatchSampler(labels, p=3, k=5, seed=0)
    seen = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            counts = Counter(labels[i] for i in batch)
            assert set(counts.values()) == {5} and len(counts) == 3
            assert 2 not in counts
            for c in (0, 1):
                if c in counts:
                    members = {i for i, lab in enumerate(labels) if lab == c}
                    assert {i for i in batch if labels[i] == c} == members, "all images of a small class, then repeats"
            seen.update(counts)
    assert set(seen) == {0, 1, 3}


def test_an_epoch_visits_classes_evenly() -> None:
    labels = [c for c in range(10) for _ in range(8)]
    sampler = PKBatchSampler(labels, p=5, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == 4
    classes = Counter(labels[i] for b in batches for i in b)
    assert set(classes.values()) == {8}  # round-robin: every class twice (x K=4 items)
    items = Counter(i for b in batches for i in b)
    assert set(items.values()) == {1}  # and each item once: the epoch covers the data


def test_works_as_a_dataloader_batch_sampler() -> None:
    labels = make_labels(1)
    data = TensorDataset(torch.arange(len(labels)), torch.tensor(labels))
    loader = DataLoader(data, batch_sampler=PKBatchSampler(labels, p=3, k=2, seed=0))
    n = 0
    for index, label in loader:
        assert index.shape == (6,)
        assert torch.equal(label, torch.tensor(labels)[index])
        assert len(set(label.tolist())) == 3
        n += 1
    assert n == len(loader.batch_sampler)


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="k \\(images per class\\) must be >= 2"):
        PKBatchSampler([0, 0, 1, 1], p=2, k=1)
    with pytest.raises(ValueError, match="need at least p=3 classes with >= 2 images, found 2"):
        PKBatchSampler([0, 0, 1, 1, 2], p=3, k=2)
    with pytest.raises(TypeError, match="integer class ids"):
        PKBatchSampler([0.5, 1.5], p=1, k=2)
    with pytest.raises(ValueError, match="1-D"):
        PKBatchSampler([[0, 1]], p=1, k=2)
