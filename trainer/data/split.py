"""Deterministic class-level holdout, and per-class caps.

Evaluation follows the standard retrieval protocol: the held-out *classes* never
appear in training, so the metrics measure how well the embedding generalises to
products it has not seen. Which classes are held out depends only on the class
name (a SHA-256 of it, compared with the fraction), not on a random seed or on
which other classes exist: a catalog that grows keeps its old holdout classes
held out, so models trained months apart are compared on the same classes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_SALT = b"lookalike-holdout-v1:"
_VALIDATION_SALT = b"lookalike-validation-v1:"


@dataclass(frozen=True)
class ClassSplit:
    train: frozenset[str]
    holdout: frozenset[str]


def class_hash(name: str, salt: bytes = _SALT) -> float:
    """A stable number in [0, 1) for a class name."""
    digest = hashlib.sha256(salt + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_classes(train_classes: Iterable[str], fraction: float) -> ClassSplit:
    """Split *training* classes into (train, validation) by a hash independent of the holdout's.

    At least two classes validate (one class alone makes every neighbour a match) and at least
    two remain for training, so a catalog of four classes is the smallest that can be searched.
    """
    names = sorted(set(train_classes), key=lambda c: class_hash(c, _VALIDATION_SALT))
    if len(names) < 4:
        raise ValueError(f"a validation split needs at least 4 training classes, found {len(names)}")
    wanted = sum(1 for c in names if class_hash(c, _VALIDATION_SALT) < fraction)
    count = min(max(wanted, 2), len(names) - 2)
    return ClassSplit(train=frozenset(names[count:]), holdout=frozenset(names[:count]))


def split_classes(classes: Iterable[str], *, fraction: float, explicit: Sequence[str] = ()) -> ClassSplit:
    """Hold out ``explicit`` classes, or else those whose hash falls below ``fraction``.

    With a positive fraction at least one class is held out (the one with the
    smallest hash), and at least two classes always remain for training.
    """
    names = sorted(set(classes))
    if explicit:
        unknown = sorted(set(explicit) - set(names))
        if unknown:
            shown = names[:20] + (["..."] if len(names) > 20 else [])
            raise ValueError(f"holdout classes {unknown} do not exist; classes are {shown}")
        holdout = set(explicit)
    elif fraction <= 0:
        holdout = set()
    else:
        holdout = {c for c in names if class_hash(c) < fraction}
        if not holdout and names:
            holdout = {min(names, key=class_hash)}
    train = set(names) - holdout
    if len(train) < 2:
        raise ValueError(
            f"only {len(train)} class(es) left for training after holding out {len(holdout)} of {len(names)}; "
            "lower data.holdout_fraction or add classes"
        )
    return ClassSplit(frozenset(train), frozenset(holdout))


def select(
    labels: Sequence[str], keep: frozenset[str] | set[str], *, max_per_class: int = 0, min_per_class: int = 1
) -> list[int]:
    """Indices of the images whose label is in ``keep``, in order.

    ``max_per_class`` keeps the first images of each class (0: all);
    classes with fewer than ``min_per_class`` images are dropped.
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        if label in keep:
            by_class[label].append(i)
    chosen: list[int] = []
    for members in by_class.values():
        if len(members) < min_per_class:
            continue
        chosen.extend(members[:max_per_class] if max_per_class > 0 else members)
    return sorted(chosen)
