"""Explicitly labelled pairs and triplets of catalog items (the Siamese set-up).

A CSV of the shop's external ids, with a header row:

- pairs: ``a,b,y`` with ``y = 0`` for a similar pair and ``y = 1`` for a dissimilar
  one (the label convention of the source notes);
- triplets: ``anchor,positive,negative``.

The loss is applied to exactly these tuples (no mining). Each time a tuple is
drawn, every item in it contributes one of its active photos, picked at random
(from torch's RNG, so a seeded run is reproducible), which turns an item with
several photos into several views of the same pair.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from trainer.augment import PixelSource
from trainer.config import DataSource
from trainer.data.images import ImageList

COLUMNS = {DataSource.PAIRS: ("a", "b", "y"), DataSource.TRIPLETS: ("anchor", "positive", "negative")}
MAX_REPORTED_ERRORS = 10


@dataclass(frozen=True)
class TupleRows:
    """Rows of external ids; ``y`` (pairs only) holds 0 / 1 per row."""

    kind: DataSource
    ids: list[tuple[str, ...]]
    y: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def keep(self, predicate: Callable[[tuple[str, ...]], bool]) -> TupleRows:
        pairs = [(ids, y) for ids, y in zip(self.ids, self.y or [0] * len(self.ids)) if predicate(ids)]
        return TupleRows(self.kind, [p[0] for p in pairs], [p[1] for p in pairs] if self.y else [])


def read_tuples_csv(path: Path, kind: DataSource) -> TupleRows:
    """Parse and validate the CSV; every bad row is reported with its line number."""
    if kind not in COLUMNS:
        raise ValueError(f"{kind.value} is not a tuple source")
    columns = COLUMNS[kind]
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"cannot read {kind.value} CSV {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if not set(columns) <= set(header):
        raise ValueError(f"{path}: the header must name the columns {','.join(columns)}; "
                         f"found {','.join(header) or 'nothing'}")
    reader.fieldnames = header
    ids: list[tuple[str, ...]] = []
    ys: list[int] = []
    errors: list[str] = []
    for line, row in enumerate(reader, start=2):
        values = tuple((row.get(c) or "").strip() for c in columns)
        id_values = values[:2] if kind is DataSource.PAIRS else values
        if any(not v for v in id_values):
            errors.append(f"line {line}: empty external id")
            continue
        if len(set(id_values)) != len(id_values):
            errors.append(f"line {line}: the same item appears twice in one {kind.value[:-1]}")
            continue
        if kind is DataSource.PAIRS:
            if values[2] not in ("0", "1"):
                errors.append(f"line {line}: y must be 0 (similar) or 1 (dissimilar), got {values[2]!r}")
                continue
            ys.append(int(values[2]))
        ids.append(id_values)
    _raise_if(errors, path)
    if not ids:
        raise ValueError(f"{path} holds no {kind.value}")
    return TupleRows(kind, ids, ys)


def check_known(rows: TupleRows, known: set[str], path: Path) -> None:
    """Every external id must be an active catalog item with at least one active image."""
    errors = [
        f"line {i + 2}: unknown external id {v!r} (no active item with an active image)"
        for i, ids in enumerate(rows.ids) for v in ids if v not in known
    ]
    _raise_if(errors, path)


class TupleDataset(Dataset[tuple[Tensor, ...]]):
    """Pairs -> ``(pixels_a, pixels_b, y)``; triplets -> ``(anchor, positive, negative)`` pixels."""

    def __init__(
        self,
        rows: TupleRows,
        images: ImageList,
        images_of: dict[str, Sequence[int]],
        transform: Callable[[PixelSource], Tensor],
    ):
        self.rows, self.images, self.images_of, self.transform = rows, images, images_of, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        views = tuple(self._view(external_id) for external_id in self.rows.ids[index])
        if self.rows.kind is DataSource.PAIRS:
            return (*views, torch.tensor(self.rows.y[index], dtype=torch.long))
        return views

    def _view(self, external_id: str) -> Tensor:
        return self.transform(self.images.load(pick_image(self.images_of[external_id])))


def index_by_item(external_ids: Sequence[str]) -> dict[str, list[int]]:
    """Positions of each item's images in a list of images given by their items' external ids."""
    images_of: dict[str, list[int]] = {}
    for i, external_id in enumerate(external_ids):
        images_of.setdefault(external_id, []).append(i)
    return images_of


def pick_image(choices: Sequence[int], generator: torch.Generator | None = None) -> int:
    """One of an item's image positions, uniformly (torch's RNG, or ``generator``): an item with
    several photos is several views of the same item across draws."""
    if len(choices) == 1:
        return choices[0]
    return choices[int(torch.randint(len(choices), (), generator=generator))]


def _raise_if(errors: list[str], path: Path) -> None:
    if errors:
        more = len(errors) - MAX_REPORTED_ERRORS
        listing = "; ".join(errors[:MAX_REPORTED_ERRORS]) + (f"; and {more} more" if more > 0 else "")
        raise ValueError(f"{path}: {len(errors)} bad row(s): {listing}")
