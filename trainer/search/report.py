"""The search's report: one JSONL record per candidate and evaluated epoch, and a PNG of the curves.

``search.jsonl`` holds ``{"candidate", "epoch", "map_at_r", ..., "winner"}`` rows;
``search.png`` draws every candidate's validation MAP@R by epoch, the rungs as dashed
lines, and the winner in bold with a star on its last point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.atomic_files import replacing
from trainer.runlog import write_jsonl

if TYPE_CHECKING:  # typing only: halving imports this module
    from trainer.search.halving import CandidateRun

REPORT_JSONL = "search.jsonl"
REPORT_PNG = "search.png"


def write_search_report(search_dir: Path, runs: Sequence[CandidateRun], winner: CandidateRun,
                        rungs: Sequence[int]) -> Path:
    search_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"candidate": run.candidate.name, "winner": run is winner, "stopped_at": run.stopped_at, **rec}
            for run in runs for rec in run.curve]
    write_jsonl(search_dir / REPORT_JSONL, rows)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for run in runs:
        xs = [int(r["epoch"]) for r in run.curve]
        ys = [float(r["map_at_r"]) for r in run.curve]
        if not xs:
            continue
        chosen = run is winner
        label = f"{run.candidate.name}{' (chosen)' if chosen else ''}"
        ax.plot(xs, ys, marker="o", linewidth=3 if chosen else 1, alpha=1 if chosen else 0.7, label=label)
        if chosen:
            ax.plot(xs[-1:], ys[-1:], marker="*", markersize=16, color="black", linestyle="none")
    for epoch in rungs:
        ax.axvline(epoch, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title("Recipe search: validation MAP@R (class-disjoint split of the training classes)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAP@R")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    FigureCanvasAgg(fig)
    with replacing(search_dir / REPORT_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return search_dir
