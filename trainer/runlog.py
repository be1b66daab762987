"""The per-epoch metrics log (JSONL) and the short text report of a run.

The log is rewritten whole from the run's history after every epoch (temp file +
rename), never appended in place, so a crash cannot leave a torn last line and a
resumed run's log always agrees with its training state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.atomic_files import replacing

METRIC_KEYS = ("precision_at_1", "r_precision", "map_at_r")


def write_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_report(
    *, name: str, config: dict[str, Any], summary: dict[str, Any], history: Sequence[dict[str, Any]],
    seconds: float, device: str,
) -> str:
    """A short plain-text report: what was trained, on what, and how it went."""
    model, loss, optim = config["model"], config["loss"], config["optim"]
    memory = config.get("memory", {})
    lines = [
        f"Lookalike training run {name}",
        "",
        f"model     {model['backbone']} -> {model['embedding_dim']}-d, input {model['input_size'] or 'natural'} px, "
        f"pretrained={model['pretrained']}, frozen prefixes={len(model['freeze'])}",
        f"loss      {loss['kind']} (miner {loss['miner']}, margin {loss['margin']}, squared={loss['squared']})"
        + (f"; cross-batch memory {memory['size']} (from step {memory['warmup_steps']})" if memory.get("size") else ""),
        f"optimiser AdamW lr {optim['lr']} (backbone {optim['backbone_lr'] or optim['lr']}), "
        f"wd {optim['weight_decay']}, warm-up {optim['warmup_epochs']} epochs then {optim['schedule']}, "
        f"clip {optim['grad_clip']}",
        f"data      {config['data']['source']}: "
        + ", ".join(f"{k}={v}" for k, v in summary.items() if k != "holdout_classes"),
        f"device    {device}; {len(history) and history[-1].get('epoch', 0)} epochs in {seconds:.1f} s",
        "",
        "violating: share of the batch's valid tuples over the margin before mining; active: of those mined",
        "epoch      loss violating  active      P@1   R-Prec    MAP@R  img/s",
    ]
    for r in history:
        lines.append(
            f"{r['epoch']:>5} {_fmt(r.get('loss')):>9} {_fmt(r.get('violating_fraction')):>9} "
            f"{_fmt(r.get('active_fraction')):>7} "
            + " ".join(f"{_fmt(r.get(k)):>8}" for k in METRIC_KEYS)
            + f" {_fmt(round(r['images_per_second'])) if r.get('images_per_second') else '-':>6}"
        )
    evaluated = [r for r in history if r.get("map_at_r") is not None]
    if evaluated:
        first, last = evaluated[0], evaluated[-1]
        lines += ["", f"holdout MAP@R {_fmt(first['map_at_r'])} (epoch {first['epoch']}) -> "
                      f"{_fmt(last['map_at_r'])} (epoch {last['epoch']})"]
    return "\n".join(lines) + "\n"
