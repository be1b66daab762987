"""A recipe search space: the candidate recipes, the rungs, the validation share and the budget.

Read from YAML (``trainer/search/default.yaml`` is the default)::

    validation_fraction: 0.2      # class-disjoint validation share of the training classes
    validation_max_per_class: 300 # validation images scored per class at each rung (0: all)
    rungs: [0.25, 0.5]            # compare after 25 % and 50 % of the epochs; the better half goes on
    cpu_budget_minutes: 60        # 0: no cap
    base: [data.augment=crop_flip]  # overrides every candidate shares
    candidates:                   # explicit recipes (config overrides) ...
      - {name: semi_hard, overrides: [loss.miner=semi_hard]}
    grid:                         # ... and/or every combination of these values
      loss.miner: [semi_hard, batch_hard]
      model.resize: [squash, center_crop]

Every candidate is checked against the config it will train with when the space is
applied (:meth:`SearchSpace.candidate_configs`), so a typo fails before any training.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import ConfigError, TrainConfig

DEFAULT_SEARCH_SPACE = Path(__file__).resolve().parent / "default.yaml"
MAX_CANDIDATES = 16
"""A search this wide would not fit any CPU budget worth having; a typo'd grid is caught here."""
_KEYS = {"validation_fraction", "validation_max_per_class", "rungs", "cpu_budget_minutes", "base", "candidates",
         "grid"}


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": list(self.overrides)}


@dataclass(frozen=True)
class SearchSpace:
    candidates: tuple[Candidate, ...]
    rungs: tuple[float, ...] = (0.25, 0.5)
    """Fractions of ``epochs`` after which the candidates are ranked and the better half continues."""
    validation_fraction: float = 0.2
    cpu_budget_minutes: float = 0.0
    base: tuple[str, ...] = field(default_factory=tuple)
    validation_max_per_class: int = 300
    """Validation images scored per class at each rung (0: all). Ranking needs classes more than
    images: on Fashion-MNIST scoring all 6,000 per class made evaluation most of the search's cost."""

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ConfigError("search: no candidates (give `candidates` or `grid`)")
        if len(self.candidates) > MAX_CANDIDATES:
            raise ConfigError(f"search: {len(self.candidates)} candidates; at most {MAX_CANDIDATES}")
        names = [c.name for c in self.candidates]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"search: candidate names must be unique, repeated: {duplicates}")
        if not self.rungs or any(not 0 < r <= 1 for r in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise ConfigError(f"search.rungs must be increasing fractions in (0, 1], got {list(self.rungs)}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"search.validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.cpu_budget_minutes < 0:
            raise ConfigError("search.cpu_budget_minutes must be >= 0 (0: no cap)")
        if self.validation_max_per_class < 0:
            raise ConfigError("search.validation_max_per_class must be >= 0 (0: every image)")

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        if not isinstance(data, dict):
            raise ConfigError(f"a search space must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ConfigError(f"search: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
        candidates = [_candidate(i, c) for i, c in enumerate(data.get("candidates") or [])]
        candidates += _grid(data.get("grid") or {})
        try:
            return cls(
                candidates=tuple(candidates),
                rungs=tuple(float(r) for r in data.get("rungs", cls.rungs)),
                validation_fraction=float(data.get("validation_fraction", cls.validation_fraction)),
                cpu_budget_minutes=float(data.get("cpu_budget_minutes", cls.cpu_budget_minutes)),
                base=tuple(_overrides("search.base", data.get("base") or [])),
                validation_max_per_class=int(data.get("validation_max_per_class", cls.validation_max_per_class)),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"search: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: Path) -> SearchSpace:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read search space {path}: {exc}") from exc
        return cls.from_dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [c.to_dict() for c in self.candidates], "rungs": list(self.rungs),
                "validation_fraction": self.validation_fraction, "cpu_budget_minutes": self.cpu_budget_minutes,
                "base": list(self.base), "validation_max_per_class": self.validation_max_per_class}

    # ------------------------------------------------------------------ applying
    def rung_epochs(self, epochs: int) -> list[int]:
        """The epochs after which candidates are ranked (distinct, at least 1)."""
        return sorted({max(1, min(epochs, math.ceil(r * epochs))) for r in self.rungs})

    def recipe(self, cfg: TrainConfig, candidate: Candidate) -> TrainConfig:
        """``cfg`` with the shared and the candidate's overrides: what the winner trains as."""
        try:
            return cfg.with_overrides([*self.base, *candidate.overrides])
        except ConfigError as exc:
            raise ConfigError(f"search candidate {candidate.name!r}: {exc}") from exc

    def candidate_configs(self, cfg: TrainConfig) -> dict[str, TrainConfig]:
        """Each candidate as it trains during the search: its recipe on the validation split."""
        out = {}
        for c in self.candidates:
            recipe = self.recipe(cfg, c)
            cap = recipe.data.eval_max_per_class
            if self.validation_max_per_class:
                cap = min(cap or self.validation_max_per_class, self.validation_max_per_class)
            out[c.name] = recipe.with_overrides([f"data.validation_fraction={self.validation_fraction}",
                                                 f"data.eval_max_per_class={cap}",
                                                 "progress=false", f"eval_every={max(recipe.eval_every, 1)}"])
        return out


def load_search_space(path: Path | str | None) -> SearchSpace:
    """``path``'s space, or the default one for ``None`` / ``"default"``."""
    if path is None or str(path) == "default":
        return SearchSpace.from_yaml(DEFAULT_SEARCH_SPACE)
    return SearchSpace.from_yaml(Path(path))


def _candidate(i: int, raw: Any) -> Candidate:
    if not isinstance(raw, dict) or set(raw) - {"name", "overrides"} or "overrides" not in raw:
        raise ConfigError(f"search.candidates[{i}] must be {{name: ..., overrides: [key=value, ...]}}, got {raw!r}")
    overrides = _overrides(f"search.candidates[{i}].overrides", raw["overrides"])
    name = str(raw.get("name") or ",".join(overrides) or f"candidate-{i}")
    return Candidate(_safe_name(name), tuple(overrides))


def _grid(grid: Any) -> list[Candidate]:
    if grid == {}:
        return []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"search.grid must map config keys to non-empty lists of values, got {grid!r}")
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = tuple(f"{k}={_yaml_value(v)}" for k, v in zip(keys, values))
        name = ",".join(f"{k.rsplit('.', 1)[-1]}={_yaml_value(v)}" for k, v in zip(keys, values))
        out.append(Candidate(_safe_name(name), overrides))
    return out


def _overrides(where: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(o, str) and "=" in o for o in raw):
        raise ConfigError(f"{where} must be a list of key=value strings, got {raw!r}")
    return list(raw)


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _safe_name(name: str) -> str:
    """Candidate names become run-directory names: keep them to a safe alphabet."""
    return "".join(ch if ch.isalnum() or ch in "-_=.,+" else "_" for ch in name)[:120]
