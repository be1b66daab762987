"""Self-describing checkpoints: spec + weights + metrics + extra, in one file.

A checkpoint is a ``torch.save`` of plain data only (dicts, lists, strings, numbers,
tensors), so it is read back with ``weights_only=True`` and loading one never runs
pickled code. It is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.atomic_files import replacing
from core.embedding.network import EmbeddingNet, build_model
from core.embedding.spec import ModelSpec

FORMAT = "lookalike.embedding"
FORMAT_VERSION = 1
COMPILED_PREFIX = "_orig_mod."
"""torch.compile's OptimizedModule stores the real module as ``_orig_mod``."""


class CheckpointError(ValueError):
    """A file is not a readable Lookalike embedding checkpoint; the message says why."""


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def unwrap_model(model: nn.Module) -> EmbeddingNet:
    """The EmbeddingNet inside a torch.compile wrapper (or the model itself)."""
    inner = getattr(model, "_orig_mod", model)
    if not isinstance(inner, EmbeddingNet):
        raise TypeError(f"expected an EmbeddingNet (optionally torch.compile'd), got {type(model).__name__}")
    return inner


def clean_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies, with every ``_orig_mod.`` (from compiled submodules) removed."""
    return {key.replace(COMPILED_PREFIX, ""): value.detach().cpu().clone() for key, value in state_dict.items()}


def save_checkpoint(
    path: Path, model: nn.Module, *, metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Write ``model`` (an EmbeddingNet or its torch.compile wrapper) to ``path`` atomically.

    ``metrics`` and ``extra`` must be JSON-serialisable, so that a checkpoint holds
    nothing but plain data.
    """
    net = unwrap_model(model)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": net.spec.to_dict(),
        "state_dict": clean_state_dict(net.state_dict()),
        "metrics": _json_safe("metrics", metrics),
        "extra": _json_safe("extra", extra),
    }
    with replacing(Path(path), fsync=True) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def read_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint file (tensors land on ``map_location``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a Lookalike embedding checkpoint (no {FORMAT!r} marker)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this code reads {FORMAT_VERSION}")
    missing = [k for k in ("spec", "state_dict", "metrics", "extra") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {missing}")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model spec: {exc}") from exc
    return Checkpoint(
        spec=spec,
        state_dict=dict(payload["state_dict"]),
        metrics=dict(payload["metrics"]),
        extra=dict(payload["extra"]),
        format_version=version,
    )


def load_model(
    path: Path, *, expected_spec: ModelSpec | None = None, map_location: str | torch.device = "cpu"
) -> tuple[EmbeddingNet, Checkpoint]:
    """Rebuild the network a checkpoint describes and load its weights (eval mode).

    Raises :class:`SpecMismatchError` listing every differing field when the
    checkpoint's spec is not ``expected_spec``. Pretrained weight files are not
    needed: the checkpoint carries all the weights.
    """
    ckpt = read_checkpoint(path, map_location="cpu")
    if expected_spec is not None:
        ckpt.spec.check_matches(expected_spec, what=f"checkpoint {path}")
    model = build_model(ckpt.spec, load_pretrained=False)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the network its spec describes: {exc}") from exc
    model.to(map_location)
    model.eval()
    return model, ckpt


def _json_safe(name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        # Round-tripping also turns tuples into lists, which weights_only loading accepts.
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be JSON-serialisable (plain numbers, strings, lists, dicts): {exc}") from exc
