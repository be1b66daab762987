"""Successive halving over candidate recipes, on a class-disjoint validation split.

All candidates start; after each rung (a fraction of the epochs, see
:class:`~trainer.search.space.SearchSpace`) they are ranked by validation MAP@R and the
better half continues. Each candidate trains in its own run directory with the schedule
of the whole run (``train(until_epoch=...)``), so a survivor continues exactly as an
uninterrupted run would, and a retried search resumes every candidate where it stopped.

The validation classes are a hash-chosen share of the *training* classes: the holdout
that the promotion gate scores on is never read here. The winner's recipe is returned
for the caller to train on all training classes.

The CPU budget counts this process's CPU time (all threads). Before each training
segment the cost is projected from the segments so far; a segment that would overrun
the budget is skipped, and the ranking uses what was measured.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.data import DataContext
from trainer.run_dir import RunPaths
from trainer.runlog import read_jsonl
from trainer.search.report import write_search_report
from trainer.search.space import Candidate, SearchSpace
from trainer.train import train

log = logging.getLogger(__name__)
METRIC = "map_at_r"


@dataclass
class CandidateRun:
    candidate: Candidate
    run_dir: Path
    curve: list[dict[str, Any]] = field(default_factory=list)
    """Validation records ``{"epoch", "map_at_r", ...}`` of the epochs trained so far."""
    stopped_at: int | None = None
    """Epoch after which it was dropped (None: still in, or the winner)."""
    note: str = ""

    @property
    def epochs_done(self) -> int:
        return max((int(r["epoch"]) for r in self.curve), default=0)

    def score_at(self, epoch: int) -> float | None:
        for r in self.curve:
            if int(r["epoch"]) == epoch and METRIC in r:
                return float(r[METRIC])
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "run_dir": str(self.run_dir), "stopped_at": self.stopped_at,
                "note": self.note, "curve": [{k: r[k] for k in ("epoch", METRIC, "precision_at_1") if k in r}
                                             for r in self.curve]}


@dataclass
class SearchResult:
    winner: Candidate
    recipe: TrainConfig
    """The winner's recipe on the caller's data (no validation split): train this."""
    runs: list[CandidateRun]
    rungs: list[int]
    cpu_seconds: float
    budget_exhausted: bool
    report_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner.name, "winner_overrides": list(self.winner.overrides),
                "rungs": self.rungs, "cpu_seconds": round(self.cpu_seconds, 1),
                "budget_exhausted": self.budget_exhausted, "metric": f"validation {METRIC}",
                "report_dir": str(self.report_dir), "candidates": [r.to_dict() for r in self.runs]}


class _Clock:
    """CPU seconds used by this search (this process, all threads), and the cost per epoch so far."""

    def __init__(self, budget_minutes: float):
        self.budget = budget_minutes * 60.0
        self.used = 0.0
        self.epochs = 0

    def allows(self, epochs: int) -> bool:
        if self.budget <= 0 or self.epochs == 0:
            return True  # no cap, or nothing measured yet: the first segment always runs
        return self.used + epochs * (self.used / self.epochs) <= self.budget

    def add(self, seconds: float, epochs: int) -> None:
        self.used += seconds
        self.epochs += epochs


def run_search(
    cfg: TrainConfig,
    space: SearchSpace,
    search_dir: Path,
    ctx: DataContext,
    *,
    on_epoch: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Successive halving of ``space``'s candidates on ``cfg``; ``on_epoch(done, planned)`` reports progress."""
    configs = space.candidate_configs(cfg)  # every candidate checked before anything trains
    rungs = space.rung_epochs(cfg.epochs)
    runs = [CandidateRun(c, Path(search_dir) / c.name) for c in space.candidates]
    planned = _planned_epochs(len(runs), rungs)
    clock = _Clock(space.cpu_budget_minutes)
    progress = _Progress(planned, on_epoch)
    alive = list(runs)
    exhausted = False
    for r, until in enumerate(rungs):
        for run in alive:
            segment = until - _saved_epoch(run.run_dir)
            if segment > 0 and not clock.allows(segment):
                exhausted = True
                run.note = f"budget: not trained to epoch {until}"
                continue
            t0 = time.process_time()
            result = train(configs[run.candidate.name], run.run_dir, ctx, until_epoch=until,
                           resume=RunPaths(run.run_dir).state.exists(), on_epoch_end=progress.epoch)
            clock.add(time.process_time() - t0, max(segment, 0))
            run.curve = [rec for rec in result.history if int(rec["epoch"]) > 0 and METRIC in rec]
        ranked = _ranked(alive, until)
        if not ranked:  # nothing reached this rung (budget): keep the previous ranking
            break
        keep = ranked if r == len(rungs) - 1 else ranked[: max(1, math.ceil(len(ranked) / 2))]
        for run in alive:
            if run not in keep and run.stopped_at is None:
                run.stopped_at = run.epochs_done
        alive = keep
        log.info("search rung %d (epoch %d): %s", r + 1, until,
                 ", ".join(f"{x.candidate.name} {x.score_at(until):.4f}" for x in ranked))
        if exhausted:
            break
    winner = alive[0]
    report_dir = write_search_report(Path(search_dir), runs, winner, rungs)
    return SearchResult(winner.candidate, space.recipe(cfg, winner.candidate), runs, rungs,
                        clock.used, exhausted, report_dir)


class _Progress:
    def __init__(self, planned: int, report: Callable[[int, int], None] | None):
        self.planned, self.done, self.report = planned, 0, report

    def epoch(self, _record: dict[str, Any]) -> None:
        self.done = min(self.done + 1, self.planned)
        if self.report is not None:
            self.report(self.done, self.planned)


def _ranked(runs: list[CandidateRun], epoch: int) -> list[CandidateRun]:
    """Runs scored at ``epoch``, best first (ties: the order the space lists them)."""
    scored = [(run.score_at(epoch), i, run) for i, run in enumerate(runs)]
    return [run for score, _, run in sorted((s for s in scored if s[0] is not None),
                                            key=lambda s: (-s[0], s[1]))]


def planned_epochs(space: SearchSpace, cfg: TrainConfig) -> int:
    """Candidate-epochs the search trains when nothing runs out of budget (for progress bars)."""
    return _planned_epochs(len(space.candidates), space.rung_epochs(cfg.epochs))


def _planned_epochs(n: int, rungs: list[int]) -> int:
    total, previous = 0, 0
    for until in rungs:
        total += n * (until - previous)
        previous, n = until, max(1, math.ceil(n / 2))
    return total


def _saved_epoch(run_dir: Path) -> int:
    """The last finished epoch saved in ``run_dir`` (0 if none), read without loading weights."""
    metrics = RunPaths(run_dir).metrics
    if not RunPaths(run_dir).state.exists() or not metrics.exists():
        return 0
    return max((int(r["epoch"]) for r in read_jsonl(metrics)), default=0)
