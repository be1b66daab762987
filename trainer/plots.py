"""PNG plots of a run's history: loss, mining statistics and retrieval metrics per epoch, mining per step.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, so no
global figure state and no display needed) and saved via a temp file + rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.atomic_files import replacing

RETRIEVAL_SERIES = ("recall@1", "recall@5", "recall@10", "map_at_r", "r_precision")


MINING_SERIES = ("violating_fraction", "selected_fraction", "active_fraction")


def _series(history: Sequence[dict[str, Any]], key: str, x: str = "epoch") -> tuple[list[int], list[float]]:
    points = [(r[x], r[key]) for r in history if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _plot(
    path: Path, title: str, ylabel: str, history: Sequence[dict[str, Any]], keys: Sequence[str], x: str = "epoch"
) -> Path | None:
    curves = [(k, *_series(history, k, x)) for k in keys]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for key, xs, ys in curves:
        ax.plot(xs, ys, marker="o" if len(xs) <= 50 else None, label=key)
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    _save(fig, path)
    return path


def write_plots(
    run_dir: Path, history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    """loss.png, active_fraction.png, retrieval.png (per epoch) and mining.png (per step),
    those with data; returns the files written.

    ``violating_fraction`` is the share of all valid tuples of a batch that violate the
    margin before mining, ``selected_fraction`` the share the miner kept, and
    ``active_fraction`` the share of the kept ones with a non-zero loss.
    """
    written = [
        _plot(run_dir / "loss.png", "Training loss", "mean loss over active tuples", history, ["loss"]),
        _plot(run_dir / "active_fraction.png", "Mining per epoch", "fraction of tuples", history, MINING_SERIES),
        _plot(run_dir / "retrieval.png", "Holdout retrieval", "score", history, RETRIEVAL_SERIES),
        _plot(run_dir / "mining.png", "Mining per step", "fraction of tuples", steps, MINING_SERIES, x="step"),
    ]
    return [p for p in written if p is not None]
